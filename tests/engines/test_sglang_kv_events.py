"""SGLang's KV events into Dynamo's ``KvEvent``s: the decoder and its sequence checks, where the
publishers are, and the whole path against the SGLang fake's ZMQ publisher (``--kv-events-config``)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import msgspec
import pytest
from dynamo.plugin import (
    EngineContext,
    EngineError,
    GenerateRequest,
    KvEvent,
    KvEventKind,
    StopConditions,
    plugin_manager,
)
from dynamo.plugin.testing import collect
from dynamo.sglang.kv_events import (
    KvCacheMirror,
    KvEventBridge,
    KvEventSource,
    block_hash_id,
    decode_batch,
    kv_event_sources,
)

# ------------------------------------------------------------------------------ decoding

STORED_MAP = {"type": "BlockStored", "block_hashes": [-5, 12], "parent_block_hash": None,
              "token_ids": [1, 2, 3, 4, 5, 6, 7, 8], "block_size": 4, "lora_id": None, "medium": "GPU",
              "session_id": "s", "some_future_field": 1}  # fmt: skip
STORED_ARRAY = ["BlockStored", [13], 12, [9, 10, 11, 12], 4, None]  # the older array_like form


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def on_stored(self, block_hashes, parent_hash, token_ids, block_size) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(("stored", block_hashes, parent_hash, token_ids, block_size))

    def on_removed(self, block_hashes) -> None:  # type: ignore[no-untyped-def]
        self.calls.append(("removed", block_hashes))

    def on_cleared(self) -> None:
        self.calls.append(("cleared",))


def frames(seq: int, events: list, *, as_map: bool = False) -> list[bytes]:
    batch = {"ts": 1.0, "events": events, "attn_dp_rank": 0} if as_map else [1.0, events, 0]
    return [b"kv", seq.to_bytes(8, "big"), msgspec.msgpack.encode(batch)]


@pytest.mark.parametrize("as_map", [False, True], ids=["array-batch", "map-batch"])
def test_both_event_forms_are_decoded(as_map: bool) -> None:
    events = [STORED_MAP, STORED_ARRAY, {"type": "BlockRemoved", "block_hashes": [-5], "medium": "GPU"},
              ["BlockRemoved", [13]], {"type": "AllBlocksCleared"}, ["AllBlocksCleared"],
              {"type": "SomethingNew", "x": 1}]  # fmt: skip
    assert decode_batch(frames(0, events, as_map=as_map)[2])[0::2] == (1.0, 0)
    rec = Recorder()
    assert KvEventBridge(rec, expected_block_size=4).handle_frames(frames(0, events, as_map=as_map))
    u5 = 2**64 - 5  # SGLang's hashes are signed int64: folded to unsigned 64-bit ids
    assert rec.calls == [
        ("stored", [u5, 12], None, [1, 2, 3, 4, 5, 6, 7, 8], 4),
        ("stored", [13], 12, [9, 10, 11, 12], 4),
        ("removed", [u5]),
        ("removed", [13]),
        ("cleared",),
        ("cleared",),
    ]
    assert block_hash_id(-1) == 2**64 - 1
    assert block_hash_id(bytes(range(32))) == int.from_bytes(bytes(range(8)), "big")


def test_gaps_clear_and_duplicates_are_dropped() -> None:
    rec = Recorder()
    bridge = KvEventBridge(rec)
    assert bridge.handle(0, [STORED_MAP]) and not bridge.handle(0, [STORED_MAP])
    assert bridge.handle(3, [STORED_ARRAY])  # 1 and 2 were lost
    assert (bridge.gaps, bridge.duplicates, bridge.next_seq) == (1, 1, 4)
    assert [c[0] for c in rec.calls] == ["stored", "cleared", "stored"]


def test_partial_pages_are_skipped_and_bigger_blocks_are_loud() -> None:
    rec = Recorder()
    bridge = KvEventBridge(rec, expected_block_size=4)
    bridge.handle(0, [{**STORED_MAP, "block_hashes": [1], "token_ids": [1, 2], "block_size": 2}])
    assert rec.calls == [] and bridge.partial_blocks == 1
    with pytest.raises(ValueError, match="misroute"):
        bridge.handle(1, [{**STORED_MAP, "block_size": 8, "block_hashes": [1]}])


def test_mirror_forwards_and_snapshots_parents_first() -> None:
    mirror, sunk = KvCacheMirror(), []
    mirror.on_stored([1], None, [0, 1], 2)  # before the sink: kept, not forwarded
    mirror.sink = sunk.append
    mirror.on_stored([2, 3], 1, [2, 3, 4, 5], 2)
    mirror.on_removed([3, 99])
    mirror.on_stored([1], None, [0, 1], 2)  # the parent stored again after its child
    assert [e.kind for e in sunk] == [KvEventKind.STORED, KvEventKind.REMOVED, KvEventKind.STORED]
    snap = mirror.snapshot()
    assert [(e.block_hashes, e.parent_hash, e.token_ids) for e in snap] == [
        ([1], None, [0, 1]),
        ([2], 1, [2, 3]),
    ]
    mirror.on_cleared()
    assert mirror.snapshot() == [] and sunk[-1].kind is KvEventKind.CLEARED


# ------------------------------------------------------------------------------ where to subscribe


def sources(config: dict | None, dp_size: int = 1) -> list[KvEventSource]:
    raw = json.dumps(config) if config is not None else None
    return kv_event_sources(SimpleNamespace(kv_events_config=raw, dp_size=dp_size))


def test_sources_follow_the_kv_events_config() -> None:
    assert sources(None) == [] and sources({"endpoint": "tcp://*:5557"}) == []  # publisher "null"
    tcp = {"publisher": "zmq", "endpoint": "tcp://*:6000", "replay_endpoint": "tcp://*:6100", "topic": "kv"}
    assert sources(tcp, dp_size=2) == [
        KvEventSource("tcp://127.0.0.1:6000", "kv", "tcp://127.0.0.1:6100", dp_rank=0),
        KvEventSource("tcp://127.0.0.1:6001", "kv", "tcp://127.0.0.1:6101", dp_rank=1),
    ]
    (ipc,) = sources({"publisher": "zmq", "endpoint": "ipc:///tmp/kv"})
    assert (ipc.endpoint, ipc.bind, ipc.replay_endpoint) == ("ipc:///tmp/kv", False, None)
    # a concrete host: SGLang's publisher connects there, so the subscriber binds
    (connecting,) = sources({"publisher": "zmq", "endpoint": "tcp://127.0.0.1:6000"})
    assert connecting.bind
    (forced,) = sources({"publisher": "zmq", "endpoint": "tcp://127.0.0.1:6000", "bind": True})
    assert not forced.bind


async def test_a_bad_config_fails_start(fake_sglang: None) -> None:
    engine = (
        plugin_manager()
        .get("sglang")
        .factory(EngineContext(argv=["--model-path", "m", "--kv-events-config", "{nope"]))
    )
    with pytest.raises(EngineError):  # SGLang refuses it first; the plugin would too
        await engine.start()
    await engine.aclose()
    with pytest.raises(ValueError, match="not a JSON object"):
        kv_event_sources(SimpleNamespace(kv_events_config="{nope", dp_size=1))


# ------------------------------------------------------------------------------ against the fake


def build(tmp_path: Path, *flags: str):  # type: ignore[no-untyped-def]
    config = {"publisher": "zmq", "endpoint": f"ipc://{tmp_path}/kv", "topic": "kv",
              "replay_endpoint": f"ipc://{tmp_path}/replay"}  # fmt: skip
    argv = ["--model-path", "fake-org/tiny", "--page-size", "4", "--kv-events-config", json.dumps(config)]
    argv += flags
    return plugin_manager().get("sglang").factory(EngineContext(argv=argv))


def request(rid: str, prompt: list[int], max_tokens: int = 4) -> GenerateRequest:
    return GenerateRequest(request_id=rid, token_ids=prompt, stop=StopConditions(max_tokens=max_tokens))


async def until(check: Callable[[], bool], limit_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not check():
        assert loop.time() < deadline, "timed out waiting for KV events"
        await asyncio.sleep(0.01)


def stored_tokens(events: list[KvEvent]) -> list[int]:
    return [t for e in events if e.kind is KvEventKind.STORED for t in e.token_ids]


async def test_prefix_cache_changes_reach_the_sink(fake_sglang: None, tmp_path: Path) -> None:
    pytest.importorskip("zmq")
    engine = build(tmp_path)
    await engine.start()
    sunk: list[KvEvent] = []
    engine.set_kv_event_sink(sunk.append)
    try:
        prompt = list(range(10, 20))  # 2 full pages of 4, and 2 tokens that are not cached
        await collect(engine, request("a", prompt), 5)
        # the prompt's pages at admission, then those of prompt + output less its last token (13
        # tokens with KV: one more page) when the request ends
        await until(lambda: len(stored_tokens(sunk)) >= 12)
        stored = [e for e in sunk if e.kind is KvEventKind.STORED]
        assert stored_tokens(stored)[:8] == prompt[:8] and all(e.block_size == 4 for e in stored)
        assert stored[0].parent_hash is None and len(stored_tokens(stored)) == 12
        assert stored[1].parent_hash == stored[0].block_hashes[-1], "pages are chained"
        snapshot = engine.kv_snapshot()
        assert [b for e in snapshot for b in e.block_hashes] == [b for e in stored for b in e.block_hashes]
        assert len(snapshot) == 3

        assert engine._engine.flush_cache().success
        await until(lambda: sunk[-1].kind is KvEventKind.CLEARED)
        assert engine.kv_snapshot() == []
    finally:
        await engine.aclose()


async def test_evictions_are_removed_events(fake_sglang: None, tmp_path: Path) -> None:
    pytest.importorskip("zmq")
    engine = build(tmp_path, "--max-total-tokens", "16")  # room for 4 pages
    await engine.start()
    sunk: list[KvEvent] = []
    engine.set_kv_event_sink(sunk.append)
    try:
        await collect(engine, request("a", list(range(10, 22)), 1), 5)  # 3 pages
        await collect(engine, request("b", list(range(50, 62)), 1), 5)  # 3 more: 2 evicted
        await until(lambda: any(e.kind is KvEventKind.REMOVED for e in sunk))
        await until(lambda: len(engine.kv_snapshot()) == 4)
        removed = {b for e in sunk if e.kind is KvEventKind.REMOVED for b in e.block_hashes}
        first = {b for e in sunk[:1] for b in e.block_hashes}
        assert removed and removed <= first, "the least recently used pages go first"
    finally:
        await engine.aclose()


async def test_a_lost_batch_is_replayed(fake_sglang: None, tmp_path: Path) -> None:
    pytest.importorskip("zmq")
    engine = build(tmp_path)
    await engine.start()
    sunk: list[KvEvent] = []
    engine.set_kv_event_sink(sunk.append)
    try:
        await collect(engine, request("a", list(range(10, 18)), 1), 5)
        await until(lambda: len(sunk) >= 1)
        engine._engine.tokenizer_manager.scheduler.kv_event_publisher.fake_drop_next = True
        await collect(engine, request("b", list(range(30, 38)), 1), 5)  # its batch is lost on PUB
        await collect(engine, request("c", list(range(50, 58)), 1), 5)  # this one reveals the gap
        await until(lambda: len(stored_tokens(sunk)) >= 24)
        (subscriber,) = engine._kv_subscribers
        assert subscriber.replayed >= 1 and subscriber.bridge.gaps == 0
        assert stored_tokens(sunk) == [*range(10, 18), *range(30, 38), *range(50, 58)]
    finally:
        await engine.aclose()


async def test_without_the_config_there_are_no_subscribers(fake_sglang: None) -> None:
    engine = plugin_manager().get("sglang").factory(EngineContext(argv=["--model-path", "m"]))
    await engine.start()
    try:
        assert engine._kv_subscribers == [] and engine.kv_snapshot() == []
    finally:
        await engine.aclose()
