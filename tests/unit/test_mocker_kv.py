"""The mocker's KV block manager and scheduler: prefix reuse, eviction, events, chunked prefill,
preemption."""

from __future__ import annotations

import asyncio
import random

import pytest
from dynamo.mocker import timing
from dynamo.mocker.engine import MockerEngine
from dynamo.mocker.kv_manager import BlockTable, KvManager
from dynamo.mocker.scheduler import Scheduler, SchedulerConfig, Sequence
from dynamo.plugin import EngineContext, GenerateRequest, StopConditions
from dynamo.plugin.capabilities import KvEvent, KvEventKind, PublishesKvEvents, ReportsLoad
from dynamo.plugin.types import FinishReason
from dynamo.router.hashing import sequence_hashes
from dynamo.router.kv_index import KvIndex

BS = 4


def manager(blocks: int = 16, caching: bool = True) -> tuple[KvManager, list[KvEvent]]:
    kv = KvManager(blocks, BS, caching)
    events: list[KvEvent] = []
    kv.sink = events.append
    return kv, events


def run_prefill(kv: KvManager, tokens: list[int]) -> tuple[BlockTable, int]:
    """Admit a sequence, compute all of its tokens; return its table and the cached tokens it found."""
    table = BlockTable()
    cached = kv.match_prefix(table, tokens)
    assert kv.allocate(table, len(tokens))
    kv.commit(table, tokens, len(tokens))
    return table, cached


T = list(range(200, 240))  # 10 blocks


def test_prefix_is_reused_and_one_token_is_always_computed() -> None:
    kv, events = manager()
    first, cached = run_prefill(kv, T)
    assert cached == 0 and kv.active_blocks == 10
    assert [e.kind for e in events] == [KvEventKind.STORED]
    assert events[0].parent_hash is None and events[0].token_ids == T and events[0].block_size == BS
    second, cached = run_prefill(kv, T)
    assert cached == 36  # 9 of 10 blocks: the last one is recomputed (its logits are needed)
    assert kv.active_blocks == 10  # the recomputed block is shared with the first sequence's copy
    assert len(events) == 1  # reuse emits nothing
    kv.free(first)
    kv.free(second)
    assert kv.active_blocks == 0 and kv.cached_blocks == 10 and kv.available() == 16


def test_only_fresh_blocks_are_stored_and_chained_to_their_parent() -> None:
    kv, events = manager()
    run_prefill(kv, T[:16])
    run_prefill(kv, T[:16] + [1, 2, 3, 4, 5, 6, 7, 8, 9])
    assert [len(e.block_hashes) for e in events] == [4, 2]
    assert events[1].parent_hash == events[0].block_hashes[-1]
    assert events[1].token_ids == [1, 2, 3, 4, 5, 6, 7, 8]  # the partial block is not stored


def test_idle_blocks_are_evicted_least_recently_used_tail_first() -> None:
    kv, events = manager(blocks=12)
    a, _ = run_prefill(kv, T)  # 10 blocks
    kv.free(a)
    b, _ = run_prefill(kv, list(range(900, 920)))  # 5 blocks: 2 free + 3 evicted
    removed = [e for e in events if e.kind is KvEventKind.REMOVED]
    assert len(removed) == 1 and len(removed[0].block_hashes) == 3
    assert removed[0].block_hashes == list(reversed(events[0].block_hashes[-3:]))  # the tail went first
    c = BlockTable()
    assert kv.match_prefix(c, T) == 7 * BS  # the head is still reusable
    kv.free(c)
    kv.free(b)


def test_allocation_fails_without_changes_when_memory_is_short() -> None:
    kv, _ = manager(blocks=4)
    table = BlockTable()
    assert not kv.allocate(table, 17)
    assert table.blocks == [] and kv.free_blocks == 4
    assert kv.allocate(table, 16)
    assert not kv.allocate(BlockTable(), 1)
    assert kv.allocate(BlockTable(), 0)


def test_without_prefix_caching_nothing_is_shared_or_published() -> None:
    kv, events = manager(blocks=32, caching=False)
    a, _ = run_prefill(kv, T)
    b, cached = run_prefill(kv, T)
    assert cached == 0 and kv.active_blocks == 20
    assert events == []
    kv.free(a)
    kv.free(b)
    assert kv.free_blocks == 32 and kv.cached_blocks == 0


def test_events_and_snapshot_give_the_router_the_same_index() -> None:
    kv, events = manager(blocks=20)
    rng = random.Random(3)
    tables = []
    for _ in range(30):  # shared prefixes, divergent tails, releases and evictions
        toks = T[: rng.randrange(4, 40)] + [rng.randrange(1000) for _ in range(rng.randrange(0, 12))]
        table, _ = run_prefill(kv, toks)
        tables.append(table)
        if len(tables) > 2:
            kv.free(tables.pop(rng.randrange(len(tables))))
    live, replayed = KvIndex(BS), KvIndex(BS)
    for event in events:
        live.apply(1, event)
    for event in kv.snapshot():
        replayed.apply(1, event)
    assert live._refs == replayed._refs
    assert live.num_blocks == kv.cached_blocks
    assert any(e.kind is KvEventKind.REMOVED for e in events)


# -- the scheduler ----------------------------------------------------------------------------------------


def sequence(rid: str, tokens: list[int], max_tokens: int = 4) -> Sequence:
    return Sequence(
        request_id=rid,
        tokens=list(tokens),
        rng=random.Random(0),
        words=[7, 8, 9],
        limit=max_tokens,
        natural_len=10**6,
        ignore_eos=True,
    )


def drive(sched: Scheduler, max_steps: int = 10_000) -> list[list[tuple[str, int]]]:
    """Run steps to completion without sleeping; return each step's (request, tokens) plan."""
    plans = []
    for _ in range(max_steps):
        if not sched.active:
            return plans
        batch = sched.schedule()
        plans.append([(s.request_id, n) for s, n in batch])
        sched.complete(batch)
    raise AssertionError("the scheduler did not finish")


def results(seq: Sequence) -> tuple[list[int], FinishReason | None, int]:
    tokens, finish, cached = [], None, 0
    while not seq.out.empty():
        delta = seq.out.get_nowait()
        tokens += delta.token_ids
        if delta.finish_reason is not None:
            finish, cached = delta.finish_reason, delta.usage.cached_tokens
    return tokens, finish, cached


def test_chunked_prefill_stays_within_the_token_budget() -> None:
    kv, _ = manager(blocks=64)
    sched = Scheduler(SchedulerConfig(max_num_batched_tokens=16), kv)
    a, b = sequence("a", T), sequence("b", list(range(500, 510)))
    sched.add(a)
    sched.add(b)
    plans = drive(sched)
    assert plans[0] == [("a", 16)]
    assert plans[1] == [("a", 16)]
    assert plans[2] == [("a", 8), ("b", 8)]  # a finishes its prompt, b starts in the same step
    assert plans[3] == [("a", 1), ("b", 2)]
    assert all(sum(n for _, n in plan) <= 16 for plan in plans)
    assert results(a)[1] == FinishReason.LENGTH and len(results(b)[0]) == 4


def test_max_num_seqs_limits_running_requests() -> None:
    kv, _ = manager(blocks=64)
    sched = Scheduler(SchedulerConfig(max_num_seqs=2), kv)
    seqs = [sequence(f"s{i}", list(range(100 * i, 100 * i + 8))) for i in range(5)]
    for s in seqs:
        sched.add(s)
    plans = drive(sched)
    assert max(len(p) for p in plans) == 2
    assert all(results(s)[1] == FinishReason.LENGTH for s in seqs)


def test_memory_pressure_preempts_the_newest_and_everything_completes() -> None:
    kv, _ = manager(blocks=10)
    sched = Scheduler(SchedulerConfig(watermark=0.0), kv)
    seqs = [sequence(f"p{i}", list(range(1000 * i, 1000 * i + 14)), max_tokens=10) for i in range(3)]
    for s in seqs:
        sched.add(s)  # 3 x 4 blocks to start, growing to 6 each: they cannot all fit
    drive(sched)
    assert sched.preemptions > 0
    for s in seqs:
        tokens, finish, _ = results(s)
        assert finish == FinishReason.LENGTH and len(tokens) == 10
    assert kv.active_blocks == 0


def test_a_repeated_prompt_reports_its_cached_tokens() -> None:
    kv, _ = manager(blocks=64)
    sched = Scheduler(SchedulerConfig(), kv)
    first, second = sequence("1", T), sequence("2", T)
    sched.add(first)
    drive(sched)
    sched.add(second)
    drive(sched)
    assert results(first)[2] == 0 and results(second)[2] == 36


def test_step_time_grows_with_uncached_prefill_and_kv_utilisation() -> None:
    kv, _ = manager(blocks=64)
    sched = Scheduler(SchedulerConfig(speedup_ratio=2.0), kv)
    short, long_ = sequence("s", T[:8]), sequence("l", list(range(3000, 3400)))
    assert sched.step_seconds([(long_, 400)]) > sched.step_seconds([(short, 8)]) > 0
    assert sched.step_seconds([(short, 8)]) == pytest.approx(timing.prefill_seconds(8) / 2)
    short.generated = 1
    idle = sched.step_seconds([(short, 1)])
    table = BlockTable()
    kv.allocate(table, 40 * BS)
    assert sched.step_seconds([(short, 1)]) > idle  # decode slows as the cache fills


# -- the engine ------------------------------------------------------------------------------------------


async def test_engine_reports_cache_hits_load_and_publishes_events() -> None:
    engine = MockerEngine(EngineContext(argv=["--speedup-ratio", "1000", "--block-size", "4"]))
    assert isinstance(engine, PublishesKvEvents) and isinstance(engine, ReportsLoad)
    events: list[KvEvent] = []
    engine.set_kv_event_sink(events.append)
    await engine.start()
    try:

        async def run(rid: str) -> int:
            req = GenerateRequest(
                request_id=rid, token_ids=T, stop=StopConditions(max_tokens=3, ignore_eos=True)
            )
            return [d async for d in engine.generate(req)][-1].usage.cached_tokens

        assert await run("a") == 0
        assert await run("b") == 36
        assert events and all(e.kind is KvEventKind.STORED for e in events)
        assert sequence_hashes(events[0].token_ids, 4)  # real tokens, in blocks of 4
        assert engine.load_metrics().active_requests == 0
        assert engine.load_metrics().kv_total_blocks == 16384
    finally:
        await engine.aclose()
    await asyncio.sleep(0)
