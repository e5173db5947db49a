"""The mocker's KV cache: a paged block manager with prefix caching, like vLLM's.

``num_blocks`` blocks of ``block_size`` tokens. A block is *free* (no content), *active* (held by
one or more sequences) or *cached but idle* (no holder, content kept for reuse, evictable in LRU
order). A sequence holds its blocks through a ``BlockTable``; full blocks whose tokens are
computed are registered under a chained hash of their content, so a later request with the same
prefix reuses them instead of recomputing. Only registering a new block emits ``STORED``;
reusing one emits nothing; evicting one emits ``REMOVED``. Without prefix caching nothing is
shared and no events are emitted.

Block ids are the mocker's own (Python's hash of parent id and tokens): routers must not read
content into them, and this keeps us honest about that.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

from dynamo.plugin.capabilities import KvEvent, KvEventKind, KvEventSink

_MASK = (1 << 64) - 1


def block_id(parent: int | None, tokens: Sequence[int]) -> int:
    """The mocker's id of a full block: depends on the whole prefix, like a sequence hash."""
    return hash((parent, tuple(tokens))) & _MASK


@dataclass(slots=True)
class BlockTable:
    """The blocks one sequence holds, in order: a cached block's id, or ``None`` for a private one."""

    blocks: list[int | None] = field(default_factory=list)
    #: ids of the sequence's full blocks, computed as its tokens become known
    ids: list[int] = field(default_factory=list)
    #: leading blocks already registered in (or found in) the prefix cache
    committed: int = 0

    def block_ids(self, tokens: Sequence[int], count: int, block_size: int) -> list[int]:
        """Ids of the first ``count`` full blocks of ``tokens`` (extending the chain as needed)."""
        ids = self.ids
        while len(ids) < count:
            i = len(ids)
            ids.append(block_id(ids[-1] if ids else None, tokens[i * block_size : (i + 1) * block_size]))
        return ids[:count]


@dataclass(slots=True)
class _Cached:
    parent: int | None
    tokens: list[int]
    depth: int
    refs: int = 0


class KvManager:
    def __init__(self, num_blocks: int, block_size: int, prefix_caching: bool = True) -> None:
        if num_blocks <= 0 or block_size <= 0:
            raise ValueError("the KV cache needs a positive number of blocks and block size")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.sink: KvEventSink | None = None
        self.free_blocks = num_blocks
        self._cached: dict[int, _Cached] = {}
        #: cached blocks nobody holds, least recently released first
        self._idle: OrderedDict[int, None] = OrderedDict()

    # -- accounting -----------------------------------------------------------------------------------
    @property
    def active_blocks(self) -> int:
        return self.num_blocks - self.free_blocks - len(self._idle)

    @property
    def cached_blocks(self) -> int:
        return len(self._cached)

    def available(self) -> int:
        """Blocks an allocation can get: free ones plus idle cached ones (evicted on demand)."""
        return self.free_blocks + len(self._idle)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # -- operations -----------------------------------------------------------------------------------
    def match_prefix(self, table: BlockTable, tokens: Sequence[int]) -> int:
        """Take the longest cached prefix of ``tokens`` into an empty ``table``; return its length in tokens.

        At least one token is always left to compute (the engine needs its logits), as in vLLM.
        """
        if not self.prefix_caching or table.blocks:
            return 0
        limit = (len(tokens) - 1) // self.block_size
        cached, idle = self._cached, self._idle
        for bid in table.block_ids(tokens, limit, self.block_size):
            block = cached.get(bid)
            if block is None:
                break
            if block.refs == 0:
                del idle[bid]
            block.refs += 1
            table.blocks.append(bid)
        table.committed = len(table.blocks)
        return table.committed * self.block_size

    def allocate(self, table: BlockTable, num_tokens: int, reserve: int = 0) -> bool:
        """Grow ``table`` to hold ``num_tokens`` tokens; ``False`` (and no change) if memory is short.

        ``reserve`` blocks must stay available afterwards (vLLM's watermark for new requests).
        """
        need = self.blocks_for(num_tokens) - len(table.blocks)
        if need <= 0:
            return True
        if need + reserve > self.available():
            return False
        take = min(need, self.free_blocks)
        self.free_blocks -= take
        if need > take:
            self._evict(need - take)
        table.blocks.extend([None] * need)
        return True

    def _evict(self, count: int) -> None:
        removed: list[int] = []
        for _ in range(count):
            bid, _ = self._idle.popitem(last=False)
            del self._cached[bid]
            removed.append(bid)
        self._emit(KvEvent(kind=KvEventKind.REMOVED, block_hashes=removed))

    def commit(self, table: BlockTable, tokens: Sequence[int], num_computed: int) -> None:
        """Register the blocks of ``table`` that became full with computed tokens in the prefix cache."""
        full = min(num_computed // self.block_size, len(table.blocks))
        if full <= table.committed:
            return
        if not self.prefix_caching:
            table.committed = full
            return
        bs = self.block_size
        ids = table.block_ids(tokens, full, bs)
        run_parent: int | None = None
        run: list[int] = []
        for i in range(table.committed, full):
            bid = ids[i]
            block = self._cached.get(bid)
            if block is not None:  # computed concurrently by another sequence: share it, drop ours
                if block.refs == 0:
                    del self._idle[bid]
                block.refs += 1
                if table.blocks[i] is None:
                    self.free_blocks += 1
                table.blocks[i] = bid
                self._store(run_parent, run)
                run = []
                continue
            parent = ids[i - 1] if i else None
            self._cached[bid] = _Cached(parent, list(tokens[i * bs : (i + 1) * bs]), i, refs=1)
            table.blocks[i] = bid
            if not run:
                run_parent = parent
            run.append(bid)
        self._store(run_parent, run)
        table.committed = full

    def _store(self, parent: int | None, run: list[int]) -> None:
        if not run:
            return
        tokens = [t for bid in run for t in self._cached[bid].tokens]
        self._emit(KvEvent(kind=KvEventKind.STORED, block_hashes=list(run), parent_hash=parent,
                           token_ids=tokens, block_size=self.block_size))

    def free(self, table: BlockTable) -> None:
        """Release every block of ``table``; cached ones stay reusable (tail blocks evicted first)."""
        cached, idle = self._cached, self._idle
        for bid in reversed(table.blocks):
            if bid is None:
                self.free_blocks += 1
                continue
            block = cached[bid]
            block.refs -= 1
            if block.refs == 0:
                idle[bid] = None
        table.blocks = []
        table.committed = 0

    # -- events ---------------------------------------------------------------------------------------
    def _emit(self, event: KvEvent) -> None:
        if self.sink is not None:
            self.sink(event)

    def snapshot(self) -> list[KvEvent]:
        """One ``STORED`` event per cached block, parents before children."""
        blocks = sorted(self._cached.items(), key=lambda item: item[1].depth)
        return [
            KvEvent(
                kind=KvEventKind.STORED,
                block_hashes=[bid],
                parent_hash=b.parent,
                token_ids=list(b.tokens),
                block_size=self.block_size,
            )
            for bid, b in blocks
        ]
