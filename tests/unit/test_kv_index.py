"""The router's KV index: overlaps per worker, events with engine ids, removal, approximate mode."""

from __future__ import annotations

import pytest
from dynamo.plugin.capabilities import KvEvent, KvEventKind
from dynamo.router.hashing import sequence_hashes
from dynamo.router.kv_index import KvEventError, KvIndex, RoutedBlocks

BS = 4


def tokens(n_blocks: int, start: int = 0) -> list[int]:
    return list(range(start, start + n_blocks * BS))


def stored(ids: list[int], toks: list[int], parent: int | None = None, block_size: int = BS) -> KvEvent:
    return KvEvent(kind=KvEventKind.STORED, block_hashes=ids, parent_hash=parent, token_ids=toks,
                   block_size=block_size)


def removed(ids: list[int]) -> KvEvent:
    return KvEvent(kind=KvEventKind.REMOVED, block_hashes=ids)


def test_overlap_is_the_leading_run_of_blocks_each_worker_holds() -> None:
    index = KvIndex(BS)
    prompt = sequence_hashes(tokens(6), BS)
    index.insert(1, prompt[:6])
    index.insert(2, prompt[:3])
    index.insert(3, prompt[1:6])  # lacks the first block: no usable prefix
    index.insert(4, prompt[:2] + prompt[3:5])  # a hole after two blocks
    assert index.find_matches(prompt) == {1: 6, 2: 3, 4: 2}
    assert index.find_matches(prompt[:2]) == {1: 2, 2: 2, 4: 2}
    assert index.find_matches(sequence_hashes(tokens(3, 1000), BS)) == {}
    assert index.find_matches([]) == {}


def test_insert_and_remove_are_reference_counted_per_worker() -> None:
    index = KvIndex(BS)
    h = sequence_hashes(tokens(2), BS)
    index.insert(1, h)
    index.insert(1, h[:1])
    index.remove(1, h[:1])
    assert index.find_matches(h) == {1: 2}
    index.remove(1, h)
    assert index.find_matches(h) == {}
    assert index.num_blocks == 0


def test_stored_events_are_hashed_from_tokens_not_engine_ids() -> None:
    index = KvIndex(BS)
    t = tokens(3)
    index.apply(7, stored([0xA, 0xB], t[:8]))
    index.apply(7, stored([0xC], t[8:], parent=0xB))
    assert index.find_matches(sequence_hashes(t, BS)) == {7: 3}
    # another worker names the same content differently: same router blocks
    index.apply(8, stored([1, 2, 3], t))
    assert index.find_matches(sequence_hashes(t, BS)) == {7: 3, 8: 3}
    assert index.num_blocks == 3


def test_removed_and_cleared() -> None:
    index = KvIndex(BS)
    t = tokens(3)
    index.apply(1, stored([11, 12, 13], t))
    index.apply(2, stored([21, 22, 23], t))
    index.apply(1, removed([12, 999]))  # unknown ids are ignored
    assert index.find_matches(sequence_hashes(t, BS)) == {1: 1, 2: 3}
    index.apply(2, KvEvent(kind=KvEventKind.CLEARED))
    assert index.find_matches(sequence_hashes(t, BS)) == {1: 1}
    assert index.blocks_of(2) == 0


def test_remove_worker_drops_all_its_blocks() -> None:
    index = KvIndex(BS)
    t = tokens(4)
    index.apply(1, stored([1, 2, 3, 4], t))
    index.apply(2, stored([5, 6], t[:8]))
    assert index.remove_worker(1) == 4
    assert index.find_matches(sequence_hashes(t, BS)) == {2: 2}
    assert index.num_blocks == 2
    assert index.remove_worker(1) == 0


def test_unknown_parent_and_bad_token_count_are_errors() -> None:
    index = KvIndex(BS)
    with pytest.raises(KvEventError, match="never stored"):
        index.apply(1, stored([2], tokens(1, 4), parent=1))
    with pytest.raises(KvEventError, match="token ids"):
        index.apply(1, stored([1, 2], tokens(1)))
    assert index.num_blocks == 0


def test_the_same_engine_id_stored_twice_counts_once() -> None:
    index = KvIndex(BS)
    index.apply(1, stored([1], tokens(1)))
    index.apply(1, stored([1], tokens(1)))
    index.apply(1, removed([1]))
    assert index.num_blocks == 0


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_routed_blocks_expire_after_their_ttl_refreshed_by_use() -> None:
    index, clock = KvIndex(BS), Clock()
    routed = RoutedBlocks(index, ttl=10, max_size=1000, prune_target_ratio=0.8, clock=clock)
    a, b = sequence_hashes(tokens(2), BS), sequence_hashes(tokens(2, 500), BS)
    routed.record(1, a)
    clock.now = 6
    routed.record(2, b)
    routed.record(1, a[:1])  # refreshed
    clock.now = 12
    routed.expire()
    assert index.find_matches(a) == {1: 1}
    assert index.find_matches(b) == {2: 2}
    clock.now = 17
    routed.expire()
    assert index.num_blocks == 0 and len(routed) == 0


def test_routed_blocks_are_pruned_least_recently_used_first() -> None:
    index, clock = KvIndex(BS), Clock()
    routed = RoutedBlocks(index, ttl=100, max_size=10, prune_target_ratio=0.5, clock=clock)
    old, new = sequence_hashes(tokens(6), BS), sequence_hashes(tokens(6, 900), BS)
    routed.record(1, old)
    clock.now = 1
    routed.record(2, new)  # 12 pairs > 10: prune down to 5, oldest first
    assert len(routed) == 5
    assert index.find_matches(old) == {}
    assert index.find_matches(new) == {2: 5}  # the tail went first: the rest is still a prefix
    routed.remove_worker(2)
    assert len(routed) == 0 and index.num_blocks == 0
