"""TensorRT-LLM's KV cache events, from ``get_kv_cache_events_async`` to Dynamo's ``KvEvent``.

TensorRT-LLM reports them when ``kv_cache_config`` has ``event_buffer_max_size > 0`` and block reuse
on; ``TrtllmEngine`` polls ``llm.get_kv_cache_events_async(timeout)`` (an async iterable of dicts, one
per event) and hands each to ``KvEventTranslator``. The dicts are ``KVCacheEventSerializer``'s:

    {"event_id": 7, "window_size": 4096, "attention_dp_rank": 0,    # the last only with attention DP
     "data": {"type": "stored", "parent_hash": 123 | None,
              "blocks": [{"type": "stored_block", "block_hash": 456, "cache_level": 0, "priority": 35,
                          "tokens": [{"type": "unique_token", "token_id": 1, "token_extra_id": 0}]}]}}
    {"event_id": 8, "data": {"type": "removed", "block_hashes": [456]}, ...}
    {"event_id": 0, "data": {"type": "created", "num_blocks_per_cache_level": [4096, 0]}, ...}
    {"event_id": 9, "data": {"type": "updated", "block_hash": 456, "priority": {...}}, ...}

``event_id`` is consecutive per rank: a gap (the engine's event buffer overflowed) means what we know
of the cache is stale, so the mirror is cleared. Block hashes are unsigned 64-bit, chained through
the parent. Partial blocks (fewer tokens than ``tokens_per_block``, stored with partial reuse) cannot
be matched by a router, so they are dropped, with every block after them in the same event, and
their later removals are not reported. ``created`` and ``updated`` (priority, host offload) change
nothing a router sees. Nothing here imports tensorrt_llm.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from dynamo.plugin import KvEvent, KvEventKind, KvEventSink

log = logging.getLogger(__name__)

__all__ = ["KvCacheMirror", "KvEventTranslator"]

_U64 = (1 << 64) - 1


class KvEventTranslator:
    """Applies TensorRT-LLM's event dicts, in order, to a ``KvCacheMirror``."""

    def __init__(self, mirror: KvCacheMirror, block_size: int) -> None:
        self.mirror = mirror
        self.block_size = block_size
        self.next_event_id: int | None = None  # unknown until the first event
        self.gaps = 0
        #: partial blocks dropped: their removals are dropped too
        self.dropped: set[int] = set()

    def handle(self, event: Mapping[str, Any]) -> None:
        event_id = event.get("event_id")
        if isinstance(event_id, int):
            if self.next_event_id is not None and event_id > self.next_event_id:
                self.gaps += 1
                log.warning("TensorRT-LLM KV events %d..%d were lost (buffer full?); clearing its blocks",
                            self.next_event_id, event_id - 1)  # fmt: skip
                self.mirror.on_cleared()
                self.dropped.clear()
            self.next_event_id = event_id + 1
        data = event.get("data") or {}
        kind = data.get("type")
        if kind == "stored":
            self._stored(data)
        elif kind == "removed":
            hashes = [h & _U64 for h in data.get("block_hashes") or []]
            kept = [h for h in hashes if h not in self.dropped]
            self.dropped.difference_update(hashes)
            self.mirror.on_removed(kept)
        elif kind not in ("created", "updated"):
            log.debug("ignoring TensorRT-LLM KV event of type %r", kind)

    def _stored(self, data: Mapping[str, Any]) -> None:
        parent = data.get("parent_hash")
        hashes: list[int] = []
        tokens: list[int] = []
        blocks = list(data.get("blocks") or [])
        for i, block in enumerate(blocks):
            ids = [int(t["token_id"]) for t in block.get("tokens") or []]
            if len(ids) != self.block_size:  # partial: it and everything after it are unmatchable
                self.dropped.update(int(b["block_hash"]) & _U64 for b in blocks[i:])
                break
            hashes.append(int(block["block_hash"]) & _U64)
            tokens.extend(ids)
        if hashes:
            parent_id = None if parent is None else int(parent) & _U64
            self.mirror.on_stored(hashes, parent_id, tokens, self.block_size)


class KvCacheMirror:
    """The blocks TensorRT-LLM's cache holds, forwarded as ``KvEvent``s to the worker's sink.

    Forwarding and bookkeeping happen in the same call, on the event loop, so ``snapshot`` always
    reflects exactly the events the sink has seen.
    """

    def __init__(self) -> None:
        #: block id -> (parent id, its tokens, block size), in the order the engine stored them
        self.blocks: dict[int, tuple[int | None, list[int], int]] = {}
        self.sink: KvEventSink | None = None

    def _emit(self, event: KvEvent) -> None:
        if self.sink is None:
            return
        try:
            self.sink(event)
        except Exception:  # the publisher's trouble must not break the mirror
            log.exception("the KV event sink failed")

    def on_stored(
        self, block_hashes: list[int], parent_hash: int | None, token_ids: list[int], block_size: int
    ) -> None:
        parent = parent_hash
        for i, h in enumerate(block_hashes):
            self.blocks.pop(h, None)  # stored again: move it after its (new) parent
            self.blocks[h] = (parent, token_ids[i * block_size : (i + 1) * block_size], block_size)
            parent = h
        self._emit(KvEvent(kind=KvEventKind.STORED, block_hashes=list(block_hashes), parent_hash=parent_hash,
                           token_ids=list(token_ids), block_size=block_size))  # fmt: skip

    def on_removed(self, block_hashes: list[int]) -> None:
        for h in block_hashes:
            self.blocks.pop(h, None)
        if block_hashes:
            self._emit(KvEvent(kind=KvEventKind.REMOVED, block_hashes=list(block_hashes)))

    def on_cleared(self) -> None:
        self.blocks.clear()
        self._emit(KvEvent(kind=KvEventKind.CLEARED))

    def snapshot(self) -> list[KvEvent]:
        """``STORED`` events that rebuild the cache as it is now, each parent before its children."""
        out: list[KvEvent] = []
        done: set[int] = set()
        for h in self.blocks:
            chain: list[int] = []  # h and its ancestors not emitted yet, child first
            seen: set[int] = set()
            cur: int | None = h
            while cur is not None and cur in self.blocks and cur not in done and cur not in seen:
                chain.append(cur)
                seen.add(cur)
                cur = self.blocks[cur][0]
            for b in reversed(chain):
                parent, tokens, size = self.blocks[b]
                done.add(b)
                out.append(KvEvent(kind=KvEventKind.STORED, block_hashes=[b], parent_hash=parent,
                                   token_ids=list(tokens), block_size=size))  # fmt: skip
        return out
