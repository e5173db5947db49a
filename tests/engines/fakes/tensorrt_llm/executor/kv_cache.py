"""The fake executor's reusable KV blocks and the KV cache events TensorRT-LLM reports for them.

Events follow ``KVCacheEventSerializer`` (``tensorrt_llm/_utils.py``) as ``shared/reference/
engine-apis.md`` section 3.5 gives it, one JSON string per event in the ``IterationResult`` that
``get_kv_cache_events_async`` returns: ``{"event_id", "data", "window_size"}`` with ``data["type"]``
``"created"`` (``num_blocks_per_cache_level``, once, at start-up), ``"stored"`` (``parent_hash`` and
``blocks`` of ``{"type": "stored_block", "block_hash", "tokens": [{"type": "unique_token",
"token_id", "token_extra_id"}], "cache_level", "priority"}``) or ``"removed"`` (``block_hashes``).
``event_id`` counts from 0; when more than ``event_buffer_max_size`` events wait unread, the oldest
are dropped (a gap in ``event_id``).

Blocks are stored when a request's context is computed (its full prompt blocks) and when it
finishes (the rest of its computed tokens, prompt and output less the last token, including a
partial last block: partial reuse is on by default). Full cache: least recently used leaves are
evicted. Hashes are unsigned 64-bit and chained through the parent's (0 for the first block); the
mixing function is a stand-in, not TensorRT-LLM's ``BlockKeyHasher``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json

from tensorrt_llm.executor.result import IterationResult

PRIORITY_DEFAULT = 35  # KvCacheRetentionConfig's default priority


def block_hash(tokens: list[int], parent: int) -> int:
    h = hashlib.blake2b(digest_size=8)
    h.update((len(tokens) ^ parent).to_bytes(8, "little"))
    for t in tokens:
        h.update(int(t).to_bytes(4, "little"))
    return int.from_bytes(h.digest(), "little")


@dataclasses.dataclass
class Block:
    parent: int  # 0: the first block of a sequence
    tokens: list[int]
    children: int = 0
    last_access: int = 0


class BlockPool:
    def __init__(self, tokens_per_block: int, max_blocks: int, window_size: int, buffer_size: int) -> None:
        self.tokens_per_block = tokens_per_block
        self.max_blocks = max_blocks
        self.window_size = window_size
        self.buffer_size = buffer_size
        self.blocks: dict[int, Block] = {}
        self.events = IterationResult()
        self._event_ids = itertools.count()
        self._clock = itertools.count(1)
        self._emit({"type": "created", "num_blocks_per_cache_level": [max_blocks, 0]})

    def store(self, ids: list[int], *, partial: bool) -> None:
        """Make the blocks of ``ids`` reusable: full blocks, and the last partial one if ``partial``."""
        now, parent, new, new_parent = next(self._clock), 0, [], None
        p = self.tokens_per_block
        for start in range(0, len(ids), p):
            tokens = list(ids[start : start + p])
            if len(tokens) < p and not partial:
                break
            h = block_hash(tokens, parent)
            block = self.blocks.get(h)
            if block is None:
                if new_parent is None:
                    new_parent = parent
                self.blocks[h] = block = Block(parent, tokens)
                if parent in self.blocks:
                    self.blocks[parent].children += 1
                new.append((h, tokens))
            block.last_access = now
            parent = h
        if new:
            self._emit({"type": "stored", "parent_hash": new_parent or None, "blocks": [
                {"type": "stored_block", "block_hash": h, "tokens": [
                    {"type": "unique_token", "token_id": t, "token_extra_id": 0} for t in tokens],
                 "cache_level": 0, "priority": PRIORITY_DEFAULT}
                for h, tokens in new]})  # fmt: skip
        self.evict()

    def evict(self) -> None:
        removed = []
        while len(self.blocks) > self.max_blocks:
            h, block = min(((h, b) for h, b in self.blocks.items() if b.children == 0),
                           key=lambda item: item[1].last_access)  # fmt: skip
            del self.blocks[h]
            if block.parent in self.blocks:
                self.blocks[block.parent].children -= 1
            removed.append(h)
        if removed:
            self._emit({"type": "removed", "block_hashes": removed})

    def _emit(self, data: dict) -> None:
        event = {"event_id": next(self._event_ids), "data": data, "window_size": self.window_size}
        queue = self.events.aqueue
        while queue.qsize() >= self.buffer_size:  # the event buffer is full: the oldest go
            queue.get_nowait()
        queue.put_nowait(json.dumps(event))
        self.events.mark_undone()
