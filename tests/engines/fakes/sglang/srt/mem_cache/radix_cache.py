"""Fake ``sglang.srt.mem_cache.radix_cache``: a page-granular prefix cache that records KV events.

What the fake scheduler needs of SGLang's radix tree, and the events SGLang 0.5.23 records from it
(``sglang/srt/mem_cache/events.py``): one ``BlockStored`` per inserted page, chained by
``parent_block_hash`` and coalesced with the queue's tail when it continues the same chain; a
``BlockRemoved`` per evicted page (least recently used leaves first, when the cache holds more than
``max_total_num_tokens``), coalesced likewise; ``AllBlocksCleared`` on ``reset``. A page's hash is
SGLang's: a SHA-256 chain (the parent page's digest, then each token as 4 little-endian bytes), sent
as the signed int64 of its first 8 bytes (``hash_str_to_int64``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools

from sglang.srt.disaggregation.kv_events import AllBlocksCleared, BlockRemoved, BlockStored


def page_digest(tokens: list[int], parent: bytes | None) -> bytes:
    h = hashlib.sha256()
    if parent is not None:
        h.update(parent)
    for t in tokens:
        h.update(int(t).to_bytes(4, "little", signed=False))
    return h.digest()


def hash_str_to_int64(hash_str: str) -> int:
    value = int(hash_str[:16], 16)
    return value - 2**64 if value >= 2**63 else value


@dataclasses.dataclass
class Page:
    parent: bytes | None
    tokens: list[int]
    event_hash: int
    children: int = 0
    last_access: int = 0


class RadixCache:
    def __init__(self, page_size: int, max_pages: int, enable_kv_cache_events: bool = False) -> None:
        self.page_size = page_size
        self.max_pages = max(1, max_pages)
        self.enable_kv_cache_events = enable_kv_cache_events
        self.pages: dict[bytes, Page] = {}
        self.kv_event_queue: list = []
        self._clock = itertools.count(1)

    def _chain(self, ids: list[int]) -> list[tuple[bytes, bytes | None, list[int]]]:
        """(digest, parent digest, tokens) of each full page of ``ids``."""
        out, parent, p = [], None, self.page_size
        for start in range(0, len(ids) - len(ids) % p, p):
            tokens = list(ids[start : start + p])
            digest = page_digest(tokens, parent)
            out.append((digest, parent, tokens))
            parent = digest
        return out

    def match_prefix(self, ids: list[int]) -> int:
        """Tokens of ``ids`` already cached (whole pages; the last token is always recomputed)."""
        cached, now = 0, next(self._clock)
        for digest, _, tokens in self._chain(ids):
            page = self.pages.get(digest)
            if page is None or cached + len(tokens) > len(ids) - 1:
                break
            page.last_access = now
            cached += len(tokens)
        return cached

    def insert(self, ids: list[int]) -> None:
        now = next(self._clock)
        for digest, parent, tokens in self._chain(ids):
            page = self.pages.get(digest)
            if page is not None:
                page.last_access = now
                continue
            parent_page = self.pages.get(parent) if parent is not None else None
            if parent is not None and parent_page is None:
                return  # the parent was evicted meanwhile: nothing below it is cached
            if parent_page is not None:
                parent_page.children += 1
            event_hash = hash_str_to_int64(digest.hex())
            self.pages[digest] = Page(parent, tokens, event_hash, last_access=now)
            parent_hash = parent_page.event_hash if parent_page is not None else None
            stored = BlockStored(block_hashes=[event_hash], parent_block_hash=parent_hash, token_ids=tokens,
                                 block_size=len(tokens), lora_id=None, medium="GPU")  # fmt: skip
            self._record(stored)
        self.evict()

    def evict(self) -> None:
        while len(self.pages) > self.max_pages:
            digest, page = min(((d, p) for d, p in self.pages.items() if p.children == 0),
                               key=lambda item: item[1].last_access)  # fmt: skip
            del self.pages[digest]
            if page.parent is not None and page.parent in self.pages:
                self.pages[page.parent].children -= 1
            self._record(BlockRemoved(block_hashes=[page.event_hash], medium="GPU"))

    def reset(self) -> None:
        self.pages.clear()
        self._record(AllBlocksCleared())

    def _record(self, event: object) -> None:
        if not self.enable_kv_cache_events:
            return
        tail = self.kv_event_queue[-1] if self.kv_event_queue else None
        if isinstance(tail, BlockRemoved) and isinstance(event, BlockRemoved):
            tail.block_hashes.extend(event.block_hashes)
            return
        if (
            isinstance(tail, BlockStored)
            and isinstance(event, BlockStored)
            and tail.block_size == event.block_size
            and event.parent_block_hash == tail.block_hashes[-1]
        ):
            tail.block_hashes.extend(event.block_hashes)
            tail.token_ids.extend(event.token_ids)
            return
        self.kv_event_queue.append(event)

    def take_events(self) -> list:
        events, self.kv_event_queue = self.kv_event_queue, []
        return events
