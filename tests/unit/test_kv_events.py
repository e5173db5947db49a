"""KV events from worker to router: gap detection and resync, the direct event plane, the publisher."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest
from dynamo.mocker.engine import MockerEngine
from dynamo.plugin import EngineContext, GenerateRequest, StopConditions
from dynamo.plugin.capabilities import KvEvent, KvEventKind
from dynamo.router.base import Worker
from dynamo.router.hashing import sequence_hashes
from dynamo.router.kv import KvRouter, KvRouterConfig
from dynamo.router.kv_events import FeedState, WorkerFeed
from dynamo.router.kv_index import KvIndex
from dynamo.runtime.events import EventPlaneError
from dynamo.runtime.events import messages as m
from dynamo.runtime.events.direct import DirectPublisher, DirectSubscriber
from dynamo.runtime.records import InstanceRecord, ModelCard
from dynamo.worker.events import WorkerEvents

BS = 4


def worker(iid: int, transport: dict[str, str]) -> Worker:
    record = InstanceRecord(namespace="ns", component="backend", endpoint="generate", instance_id=iid,
                            transport=transport)
    card = ModelCard(display_name="m", model_path="/m", context_length=8192, kv_cache_block_size=BS,
                     namespace="ns", component="backend", endpoint="generate", instance_id=iid)
    return Worker(iid, record, card)


def stored(
    event_id: int, ids: list[int], toks: list[int], parent: int | None = None, bs: int = BS
) -> KvEvent:
    return KvEvent(
        kind=KvEventKind.STORED,
        block_hashes=ids,
        parent_hash=parent,
        token_ids=toks,
        block_size=bs,
        event_id=event_id,
    )


def removed(event_id: int, ids: list[int]) -> KvEvent:
    return KvEvent(kind=KvEventKind.REMOVED, block_hashes=ids, event_id=event_id)


class Feed:
    def __init__(self) -> None:
        self.index = KvIndex(BS)
        self.requests: list[str] = []
        self.feed = WorkerFeed(1, self.index, self.requests.append)

    def overlap(self, toks: list[int]) -> int:
        return self.index.find_matches(sequence_hashes(toks, BS)).get(1, 0)


T = list(range(100, 140))  # 10 blocks


# -- gap detection -------------------------------------------------------------------------------------


def test_events_wait_for_the_first_snapshot_then_apply_in_order() -> None:
    f = Feed()
    f.feed.resync("connected")
    assert f.requests == ["connected"] and f.feed.state is FeedState.SYNCING
    f.feed.on_events([stored(0, [1], T[:4]), stored(1, [2], T[4:8], parent=1)])
    assert f.overlap(T) == 0  # buffered
    f.feed.on_snapshot(-1, [])
    assert f.feed.state is FeedState.LIVE and f.feed.last_event_id == 1
    assert f.overlap(T) == 2
    f.feed.on_events([stored(2, [3], T[8:12], parent=2), stored(2, [3], T[8:12], parent=2)])  # a duplicate
    f.feed.on_events([removed(3, [3])])
    assert f.overlap(T) == 2 and f.feed.last_event_id == 3 and f.requests == ["connected"]


def test_a_gap_triggers_a_snapshot_and_newer_buffered_events_are_replayed() -> None:
    f = Feed()
    f.feed.on_snapshot(-1, [])
    f.feed.on_events([stored(0, [1], T[:4])])
    f.feed.on_events([stored(2, [3], T[8:12], parent=2)])  # event 1 was lost
    assert f.requests == ["gap"] and f.feed.state is FeedState.SYNCING
    f.feed.on_events([stored(3, [4], T[12:16], parent=3), removed(4, [1])])
    # the worker's cache as of event 3: blocks 1..4 (the snapshot includes the lost event's block)
    snapshot = [
        stored(0, [1], T[:4]),
        stored(0, [2], T[4:8], parent=1),
        stored(0, [3], T[8:12], parent=2),
        stored(0, [4], T[12:16], parent=3),
    ]
    f.feed.on_snapshot(3, snapshot)
    assert f.feed.state is FeedState.LIVE and f.feed.last_event_id == 4
    assert f.overlap(T) == 0  # event 4 (replayed from the buffer) removed the first block
    assert f.index.blocks_of(1) == 3


def test_a_gap_found_while_replaying_asks_again() -> None:
    f = Feed()
    f.feed.resync("connected")
    f.feed.on_events([stored(5, [9], T[:4])])
    f.feed.on_events([stored(7, [8], T[4:8], parent=9)])
    f.feed.on_snapshot(4, [])
    assert f.requests == ["connected", "gap"] and f.feed.state is FeedState.SYNCING


def test_an_unknown_parent_means_we_missed_something() -> None:
    f = Feed()
    f.feed.on_snapshot(-1, [])
    f.feed.on_events([stored(0, [2], T[4:8], parent=1)])
    assert f.requests == ["inconsistent"] and f.feed.state is FeedState.SYNCING


def test_events_with_another_block_size_are_reported_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    f = Feed()
    f.feed.on_snapshot(-1, [stored(0, [1], T[:4])])
    with caplog.at_level(logging.ERROR):
        f.feed.on_events([stored(0, [7], T[:8], bs=8)])
    assert "blocks of 8 tokens" in caplog.text and "IGNORED" in caplog.text
    assert f.feed.state is FeedState.IGNORED and f.index.blocks_of(1) == 0
    f.feed.on_events([stored(1, [2], T[4:8], parent=1)])
    f.feed.resync("connected")
    assert f.index.blocks_of(1) == 0 and f.requests == []


# -- the direct event plane ------------------------------------------------------------------------------


async def _until(cond, within: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_direct_plane_messages_queries_and_reconnects() -> None:
    pub = DirectPublisher("127.0.0.1")
    counter = {"n": 0}
    pub.answer("snapshot", lambda p: b"snap:" + p + b":" + str(counter["n"]).encode())
    pub.answer("broken", lambda _: 1 / 0)  # type: ignore[arg-type,return-value]
    transport = await pub.start()
    got: list[tuple[str, bytes]] = []
    connects: list[int] = []
    sub = DirectSubscriber()
    sub.start(["kv-events", "kv-metrics"], lambda t, p: got.append((t, p)), connects.append)
    try:
        assert sub.follow(7, {"tcp": "x"}) is False
        assert sub.follow(7, transport) is True
        await _until(lambda: connects == [7] and pub.subscribers == 1)
        await asyncio.sleep(0.05)  # let the subscription reach the publisher
        for i in range(100):
            pub.publish("kv-events", b"%d" % i)
            counter["n"] += 1
        pub.publish("other", b"not subscribed")
        assert await sub.query(7, "snapshot", b"x") == b"snap:x:100"
        assert got == [("kv-events", b"%d" % i) for i in range(100)]  # all before the reply
        with pytest.raises(EventPlaneError, match="ZeroDivisionError"):
            await sub.query(7, "broken")
        with pytest.raises(EventPlaneError, match="nothing answers"):
            await sub.query(7, "nope")
        with pytest.raises(EventPlaneError, match="not followed"):
            await sub.query(8, "snapshot")
        for s in list(pub._subscribers):  # the connection drops: the subscriber comes back and says so
            s.writer.close()
        await _until(lambda: connects == [7, 7])
        sub.unfollow(7)
        await _until(lambda: pub.subscribers == 0)
    finally:
        await sub.aclose()
        await pub.aclose()


async def test_query_to_an_unreachable_publisher_fails() -> None:
    sub = DirectSubscriber(connect_timeout=0.2)
    sub.start(["kv-events"], lambda t, p: None)
    try:
        sub.follow(1, {"events": "127.0.0.1:1"})
        with pytest.raises(EventPlaneError, match="unreachable"):
            await sub.query(1, "snapshot", timeout=0.3)
    finally:
        await sub.aclose()


async def test_a_slow_subscriber_is_dropped_not_waited_for() -> None:
    pub = DirectPublisher("127.0.0.1", max_backlog=1)
    transport = await pub.start()
    host, _, port = transport["events"].rpartition(":")
    reader, writer = await asyncio.open_connection(host, int(port))  # subscribes, then never reads
    from dynamo.runtime.events import direct

    writer.write(direct.PREAMBLE + direct._frame(direct.Kind.SUBSCRIBE, direct._encode(["t"])))
    await _until(lambda: pub.subscribers == 1 and all(s.topics for s in pub._subscribers))
    payload = b"x" * 1_000_000
    for _ in range(50):
        pub.publish("t", payload)
        await asyncio.sleep(0)
    await _until(lambda: pub.subscribers == 0)
    writer.close()
    await pub.aclose()


# -- engine -> worker publisher -> event plane -> router ---------------------------------------------------


def _request(rid: str, tokens: list[int], max_tokens: int = 4) -> GenerateRequest:
    return GenerateRequest(
        request_id=rid, token_ids=tokens, stop=StopConditions(max_tokens=max_tokens, ignore_eos=True)
    )


async def _run(engine: MockerEngine, rid: str, tokens: list[int]) -> int:
    cached = 0
    async for delta in engine.generate(_request(rid, tokens)):
        if delta.usage:
            cached = delta.usage.cached_tokens
    return cached


async def test_router_index_follows_a_mocker_through_the_event_plane() -> None:
    engine = MockerEngine(
        EngineContext(
            argv=["--speedup-ratio", "1000", "--block-size", "4", "--num-gpu-blocks-override", "16"]
        )
    )
    await engine.start()
    events = WorkerEvents(engine, DirectPublisher("127.0.0.1"), load_interval=0.02)
    transport = await events.start(worker_id=42)
    w = worker(42, transport)
    router = KvRouter(KvRouterConfig(block_size=BS), DirectSubscriber())
    try:
        prompt = list(range(1000, 1040))  # 10 blocks
        assert (
            await _run(engine, "warm", prompt) == 0
        )  # cached before the router follows: the snapshot has it
        router.add_worker(w)
        await _until(lambda: router.feeds[42].state is FeedState.LIVE)
        assert router.index.find_matches(sequence_hashes(prompt, BS)) == {42: 10}
        assert (
            await _run(engine, "again", prompt) == 36
        )  # all but the last block (one token is always computed)
        other = list(range(5000, 5040))
        await _run(engine, "evicts", other)  # 16 blocks: five of the first prompt's are evicted, tail first
        await _until(lambda: router.index.find_matches(sequence_hashes(other, BS)) == {42: 10})
        assert router.index.find_matches(sequence_hashes(prompt, BS)) == {42: 5}
        await _until(lambda: 42 in router.loads)
        assert router.loads[42].kv_total_blocks == 16
        # a lost batch: the next one shows the gap and the router resynchronises from a snapshot
        router.feeds[42].last_event_id -= 1
        await _run(engine, "third", list(range(9000, 9008)))
        await _until(
            lambda: (
                router.feeds[42].state is FeedState.LIVE
                and router.index.find_matches(sequence_hashes(list(range(9000, 9008)), BS)) == {42: 2}
            )
        )
        assert router.index.blocks_of(42) == engine.kv.cached_blocks
        router.remove_worker(42)
        assert router.index.num_blocks == 0
    finally:
        await router.aclose()
        await events.aclose()
        await engine.aclose()


def test_snapshot_message_roundtrip() -> None:
    snap = m.KvSnapshot(worker_id=3, last_event_id=9, events=[stored(0, [1], T[:4])])
    assert m.decode_snapshot(m.encode(snap)) == snap
