"""KV routing: the cost function, selection, in-flight load tracking and approximate mode."""

from __future__ import annotations

import logging
import random
from collections import Counter

import pytest
from dynamo.plugin.capabilities import KvEvent, KvEventKind
from dynamo.router import RouterMode, create_router
from dynamo.router.base import RouteRequest, Worker
from dynamo.router.hashing import sequence_hashes
from dynamo.router.kv import KvRouter, KvRouterConfig, choose, kv_cost
from dynamo.router.kv_events import FeedState
from dynamo.router.load import ActiveLoad
from dynamo.runtime.records import InstanceRecord, ModelCard

BS = 4


def worker(iid: int, block_size: int = BS) -> Worker:
    record = InstanceRecord(namespace="ns", component="backend", endpoint="generate", instance_id=iid,
                            transport={"tcp": f"127.0.0.1:{iid}"})
    card = ModelCard(display_name="m", model_path="/m", context_length=8192, kv_cache_block_size=block_size,
                     namespace="ns", component="backend", endpoint="generate", instance_id=iid)
    return Worker(iid, record, card)


def request(rid: str, n_blocks: int, start: int = 0) -> RouteRequest:
    return RouteRequest(rid, list(range(start, start + n_blocks * BS)))


def router(**config: object) -> KvRouter:
    cfg = KvRouterConfig(block_size=BS, use_kv_events=False, **config)  # type: ignore[arg-type]
    return KvRouter(cfg, rng=random.Random(0))


def cache(r: KvRouter, w: Worker, req: RouteRequest, blocks: int | None = None) -> None:
    """Make ``w`` hold the first ``blocks`` blocks of ``req``'s prompt."""
    hashes = sequence_hashes(req.token_ids, BS)
    r.index.insert(w.instance_id, hashes[: len(hashes) if blocks is None else blocks])


# -- cost and selection ------------------------------------------------------------------------------


def test_cost_matches_the_documented_example() -> None:
    # Dynamo's docs: a 10-block prompt; overlaps 2, 5, 8 and decode loads 10, 5, 9 -> costs 18, 10, 11
    costs = [kv_cost(10, overlap, decode) for overlap, decode in [(2, 10), (5, 5), (8, 9)]]
    assert costs == [18, 10, 11]
    assert choose(costs, 0.0, random.Random(0)) == 1


def test_cost_weights() -> None:
    assert kv_cost(10, 4, 3, overlap_credit=0.5, prefill_load_scale=2) == 2 * (10 - 2) + 3
    assert kv_cost(4, 10, 3) == 3  # more overlap than prefill: the prefill term bottoms out at 0
    assert kv_cost(10, 10, 0, overlap_credit=0) == 10


def test_temperature_zero_takes_the_first_minimum() -> None:
    assert choose([3.0, 1.0, 1.0, 2.0], 0.0, random.Random(0)) == 1
    assert choose([5.0, 5.0], 0.0, random.Random(0)) == 0


def test_temperature_samples_softmax_of_normalised_costs() -> None:
    rng = random.Random(1)
    picks = Counter(choose([0.0, 10.0, 20.0], 0.5, rng) for _ in range(4000))
    # normalised costs 0, 0.5, 1 -> weights e^0, e^-1, e^-2 (0.665, 0.245, 0.090)
    assert 0.62 < picks[0] / 4000 < 0.71
    assert 0.20 < picks[1] / 4000 < 0.29
    assert 0.06 < picks[2] / 4000 < 0.12
    even = Counter(choose([7.0, 7.0, 7.0], 1.0, rng) for _ in range(3000))
    assert all(800 < even[i] < 1200 for i in range(3))


# -- the router ---------------------------------------------------------------------------------------


def test_the_worker_holding_the_prefix_wins() -> None:
    r = router()
    ws = [worker(1), worker(2), worker(3)]
    req = request("a", 10)
    cache(r, ws[2], req, 8)
    cache(r, ws[1], req, 3)
    assert r.select(ws, req) is ws[2]


def test_equal_overlaps_spread_by_in_flight_load() -> None:
    r = router()
    ws = [worker(1), worker(2), worker(3)]
    chosen = []
    for i in range(6):
        req = request(f"r{i}", 5, start=1000 * i)  # nothing cached anywhere
        w = r.select(ws, req)
        r.on_start(w, req)
        chosen.append(w.instance_id)
    assert chosen == [1, 2, 3, 1, 2, 3]
    assert r.active.decode_blocks(1) == 10
    for i in range(6):
        r.on_end(worker(chosen[i]), request(f"r{i}", 5, start=1000 * i))
    assert len(r.active) == 0
    assert all(r.active.decode_blocks(w.instance_id) == 0 for w in ws)


def test_load_outweighs_a_small_overlap() -> None:
    r = router()
    ws = [worker(1), worker(2)]
    req = request("x", 10)
    cache(r, ws[0], req, 2)
    for i in range(3):  # worker 1 is busy with three 10-block requests
        busy = request(f"busy{i}", 10, start=5000 + 100 * i)
        r.select([ws[0]], busy)
        r.on_start(ws[0], busy)
    assert r.select(ws, req) is ws[1]


def test_prefill_load_ends_at_the_first_token() -> None:
    r = router()
    w = worker(1)
    req = request("p", 8)
    r.select([w], req)
    r.on_start(w, req)
    assert r.active.prefill_blocks(1) == 8
    r.on_first_token(w, req)
    assert r.active.prefill_blocks(1) == 0
    assert r.active.decode_blocks(1) == 8


def test_shared_blocks_of_requests_in_flight_count_once() -> None:
    load = ActiveLoad()
    hashes = sequence_hashes(list(range(40)), BS)
    load.add("a", 1, hashes, 10.5, 10.5)
    load.add("b", 1, hashes[:6], 6.0, 0.0)
    assert load.decode_blocks(1) == 10.5
    load.remove("a")
    assert load.decode_blocks(1) == 6
    load.remove_worker(1)
    assert load.decode_blocks(1) == 0 and len(load) == 0


def test_zero_overlap_credit_routes_by_load_only() -> None:
    r = router(overlap_score_credit=0.0)
    ws = [worker(1), worker(2)]
    req = request("a", 10)
    cache(r, ws[1], req)
    assert r.select(ws, req) is ws[0]


def test_approximate_mode_remembers_its_own_decisions_for_a_ttl() -> None:
    now = [0.0]
    cfg = KvRouterConfig(block_size=BS, use_kv_events=False, ttl_secs=30)
    r = KvRouter(cfg, clock=lambda: now[0])
    ws = [worker(1), worker(2), worker(3)]
    first = request("1", 6, start=300)
    w = r.select(ws, first)
    r.on_start(w, first)
    r.on_end(w, first)
    assert w is ws[0]
    again = request("2", 6, start=300)  # the same prompt, with worker 1 listed last
    assert r.select(ws[1:] + ws[:1], again) is ws[0]
    now[0] = 31
    assert r.select(ws[1:] + ws[:1], again) is ws[1]  # forgotten: a tie, the first listed wins


def test_a_worker_with_another_block_size_is_reported_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    r = KvRouter(KvRouterConfig(block_size=BS))  # events on, no subscriber: feeds only
    odd = worker(9, block_size=BS * 2)
    with caplog.at_level(logging.ERROR, logger="dynamo.router.kv"):
        r.add_worker(odd)
    assert "KV block size 8" in caplog.text and "IGNORED" in caplog.text
    assert r.feeds[9].state is FeedState.IGNORED
    stored = KvEvent(kind=KvEventKind.STORED, block_hashes=[1], token_ids=[1] * 8, block_size=8)
    r.feeds[9].on_events([stored])
    assert r.index.num_blocks == 0


def test_removing_a_worker_forgets_it() -> None:
    r = KvRouter(KvRouterConfig(block_size=BS))
    w = worker(5)
    r.add_worker(w)
    r.feeds[5].on_snapshot(
        -1, [KvEvent(kind=KvEventKind.STORED, block_hashes=[1, 2], token_ids=list(range(8)), block_size=BS)]
    )
    assert r.index.blocks_of(5) == 2
    req = request("q", 2)
    r.on_start(r.select([w], req), req)
    r.remove_worker(5)
    assert r.index.num_blocks == 0 and 5 not in r.feeds and r.active.decode_blocks(5) == 0


def test_each_decision_is_logged_with_overlap_and_cost(caplog: pytest.LogCaptureFixture) -> None:
    r = router()
    ws = [worker(0xA), worker(0xB)]
    req = request("logged", 4)
    cache(r, ws[1], req)
    with caplog.at_level(logging.DEBUG, logger="dynamo.router.kv"):
        r.select(ws, req)
    assert "route logged (4 blocks) -> b" in caplog.text
    assert "a: overlap=0 cost=8.00" in caplog.text and "b: overlap=4 cost=4.00" in caplog.text


def test_create_router_builds_a_kv_router() -> None:
    r = create_router(RouterMode.KV, config=KvRouterConfig(block_size=BS, use_kv_events=False))
    assert isinstance(r, KvRouter) and r.block_size == BS


def test_approximate_mode_reports_a_block_size_mismatch_too(caplog: pytest.LogCaptureFixture) -> None:
    r = router()
    odd = worker(9, block_size=BS * 2)
    with caplog.at_level(logging.ERROR, logger="dynamo.router.kv"):
        r.add_worker(odd)
    assert "KV block size 8" in caplog.text
    req = request("q", 4)
    r.on_start(r.select([odd], req), req)
    assert r.index.num_blocks == 0  # its decisions are not remembered as cache


def test_least_loaded_uses_published_load_when_it_is_more() -> None:
    from dynamo.plugin.capabilities import LoadMetrics
    from dynamo.router.basic import LeastLoadedRouter
    from dynamo.router.load import LoadMonitor

    class Monitor(LoadMonitor):
        def __init__(self) -> None:
            self.loads = {}

    monitor = Monitor()
    r = LeastLoadedRouter(monitor)
    a, b, c = worker(1), worker(2), worker(3)
    assert r.select([a, b, c], request("x", 1)) is a  # nothing published yet: in-flight counts
    # worker 1 is busy with another frontend's requests
    monitor.loads[1] = LoadMetrics(active_requests=5, kv_used_blocks=10, kv_total_blocks=100)
    monitor.loads[2] = LoadMetrics(active_requests=0, kv_used_blocks=50, kv_total_blocks=100)
    monitor.loads[3] = LoadMetrics(active_requests=0, kv_used_blocks=20, kv_total_blocks=100)
    assert r.select([a, b, c], request("x", 1)) is c  # b and c idle: the emptier cache wins
    c.in_flight = 2  # ours, not yet in its report
    assert r.select([a, b, c], request("x", 1)) is b
