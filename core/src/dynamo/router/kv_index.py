"""The router's KV index: which workers hold which prefix blocks.

Blocks are named by their chained sequence hash (``hashing.py``), and a sequence hash names a whole
prefix, so a flat map ``sequence hash -> workers`` is a prefix tree flattened: walking a prompt's
hashes from the first block and stopping at the first block a worker lacks gives that worker's
overlap, exactly as walking a radix tree would.

Two ways to fill it:

- from the engines' KV events (``apply``): engines name blocks with their own ids, so the index
  keeps, per worker, the engine id -> sequence hash map needed to apply a later ``REMOVED``;
- from the router's own decisions (``RoutedBlocks``, approximate mode, for engines without
  events): a block is assumed cached on the worker a request went to, for a TTL, within a size
  bound.

It never blocks and never does I/O; one instance belongs to one router (one model).
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

from dynamo.plugin.capabilities import KvEvent, KvEventKind
from dynamo.router.hashing import sequence_hashes

log = logging.getLogger(__name__)

__all__ = ["KvIndex", "KvEventError", "RoutedBlocks"]


class KvEventError(ValueError):
    """An event the index cannot apply (unknown parent block, tokens that do not fill the blocks)."""


class KvIndex:
    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        #: sequence hash -> workers holding it
        self._holders: dict[int, set[int]] = {}
        #: worker -> sequence hash -> how many of the worker's blocks have it (engines may duplicate)
        self._refs: dict[int, dict[int, int]] = {}
        #: worker -> engine block id -> sequence hash (filled by STORED events only)
        self._ids: dict[int, dict[int, int]] = {}

    # -- queries ---------------------------------------------------------------------------------
    def find_matches(self, hashes: Sequence[int]) -> dict[int, int]:
        """Per worker, how many leading blocks of ``hashes`` it holds (workers with 0 are left out)."""
        holders = self._holders
        scores: dict[int, int] = {}
        active: set[int] | None = None
        depth = 0
        for h in hashes:
            here = holders.get(h)
            if here is None:
                break
            if active is None:
                active = set(here)
            elif not active <= here:
                for worker in active - here:
                    scores[worker] = depth
                active &= here
                if not active:
                    return scores
            depth += 1
        if active:
            for worker in active:
                scores[worker] = depth
        return scores

    @property
    def num_blocks(self) -> int:
        """Distinct blocks indexed, over all workers."""
        return len(self._holders)

    def blocks_of(self, worker: int) -> int:
        return len(self._refs.get(worker, ()))

    def workers(self) -> list[int]:
        return list(self._refs)

    # -- updates by sequence hash ------------------------------------------------------------------
    def insert(self, worker: int, hashes: Iterable[int]) -> None:
        refs = self._refs.setdefault(worker, {})
        holders = self._holders
        for h in hashes:
            count = refs.get(h, 0)
            refs[h] = count + 1
            if count == 0:
                here = holders.get(h)
                if here is None:
                    holders[h] = {worker}
                else:
                    here.add(worker)

    def remove(self, worker: int, hashes: Iterable[int]) -> None:
        refs = self._refs.get(worker)
        if refs is None:
            return
        for h in hashes:
            count = refs.get(h, 0)
            if count > 1:
                refs[h] = count - 1
            elif count == 1:
                del refs[h]
                self._drop_holder(h, worker)

    def _drop_holder(self, h: int, worker: int) -> None:
        here = self._holders.get(h)
        if here is not None:
            here.discard(worker)
            if not here:
                del self._holders[h]

    def remove_worker(self, worker: int) -> int:
        """Forget every block of ``worker``; return how many there were."""
        refs = self._refs.pop(worker, {})
        self._ids.pop(worker, None)
        for h in refs:
            self._drop_holder(h, worker)
        return len(refs)

    # -- updates from engine events ------------------------------------------------------------------
    def apply(self, worker: int, event: KvEvent) -> None:
        """Apply one KV event of ``worker``; raise ``KvEventError`` if it cannot be applied."""
        if event.kind is KvEventKind.STORED:
            self._stored(worker, event)
        elif event.kind is KvEventKind.REMOVED:
            ids = self._ids.get(worker)
            if ids:
                gone = (ids.pop(engine_id, None) for engine_id in event.block_hashes)
                self.remove(worker, [h for h in gone if h is not None])
        elif event.kind is KvEventKind.CLEARED:
            self.remove_worker(worker)

    def _stored(self, worker: int, event: KvEvent) -> None:
        ids = self._ids.setdefault(worker, {})
        parent: int | None = None
        if event.parent_hash is not None:
            parent = ids.get(event.parent_hash)
            if parent is None:
                raise KvEventError(
                    f"stored blocks follow block {event.parent_hash:#x}, which the worker never stored"
                )
        count = len(event.block_hashes)
        if len(event.token_ids) != count * self.block_size:
            raise KvEventError(
                f"{count} stored block(s) of {self.block_size} tokens came with "
                f"{len(event.token_ids)} token ids"
            )
        hashes = sequence_hashes(event.token_ids, self.block_size, parent)
        fresh: list[int] = []
        for engine_id, h in zip(event.block_hashes, hashes, strict=True):
            old = ids.get(engine_id)
            if old == h:
                continue  # stored again: nothing changes
            if old is not None:
                self.remove(worker, (old,))
            ids[engine_id] = h
            fresh.append(h)
        self.insert(worker, fresh)


class RoutedBlocks:
    """Approximate mode: blocks assumed cached where the router sent them, for ``ttl`` seconds.

    Each (worker, block) pair lives ``ttl`` seconds after the last request that used it; when more
    than ``max_size`` pairs are held, the least recently used ones are dropped down to
    ``prune_target_ratio * max_size``.
    """

    def __init__(
        self, index: KvIndex, ttl: float, max_size: int, prune_target_ratio: float, clock: Callable[[], float]
    ) -> None:
        self.index = index
        self.ttl = ttl
        self.max_size = max_size
        self.prune_target = int(max_size * prune_target_ratio)
        self._clock = clock
        #: (worker, block) -> expiry time, oldest first (one TTL for all, so LRU order is expiry order)
        self._expiry: OrderedDict[tuple[int, int], float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._expiry)

    def record(self, worker: int, hashes: Sequence[int]) -> None:
        """A request with these block hashes was sent to ``worker``."""
        expiry = self._expiry
        until = self._clock() + self.ttl
        new: list[int] = []
        for h in reversed(hashes):  # the prefix's head ends up most recent: pruning trims tails first
            key = (worker, h)
            if key in expiry:
                expiry.move_to_end(key)
            else:
                new.append(h)
            expiry[key] = until
        self.index.insert(worker, new)
        if len(expiry) > self.max_size:
            self._drop_oldest(len(expiry) - self.prune_target)

    def expire(self) -> None:
        """Drop the pairs whose TTL has passed."""
        expiry = self._expiry
        now = self._clock()
        count = 0
        for until in expiry.values():
            if until > now:
                break
            count += 1
        if count:
            self._drop_oldest(count)

    def _drop_oldest(self, count: int) -> None:
        expiry = self._expiry
        by_worker: dict[int, list[int]] = {}
        for _ in range(min(count, len(expiry))):
            (worker, h), _until = expiry.popitem(last=False)
            by_worker.setdefault(worker, []).append(h)
        for worker, hashes in by_worker.items():
            self.index.remove(worker, hashes)

    def remove_worker(self, worker: int) -> None:
        for key in [k for k in self._expiry if k[0] == worker]:
            del self._expiry[key]
        self.index.remove_worker(worker)
