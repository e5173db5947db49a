"""TensorRT-LLM's KV cache events into Dynamo's ``KvEvent``s: the translator of
``get_kv_cache_events_async``'s dicts, and the whole path against the TensorRT-LLM fake."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
from dynamo.plugin import EngineContext, GenerateRequest, KvEvent, KvEventKind, StopConditions, plugin_manager
from dynamo.plugin.testing import collect
from dynamo.trtllm.kv_events import KvCacheMirror, KvEventTranslator

# ------------------------------------------------------------------------------ the translator


def stored(event_id: int, parent: int | None, *blocks: tuple[int, list[int]]) -> dict:
    blocks_ = [{"type": "stored_block", "block_hash": h, "cache_level": 0, "priority": 35,
                "tokens": [{"type": "unique_token", "token_id": t, "token_extra_id": 0} for t in tokens]}
               for h, tokens in blocks]  # fmt: skip
    data = {"type": "stored", "parent_hash": parent, "blocks": blocks_}
    return {"event_id": event_id, "window_size": 2048, "data": data}


def removed(event_id: int, *hashes: int) -> dict:
    return {
        "event_id": event_id,
        "window_size": 2048,
        "data": {"type": "removed", "block_hashes": list(hashes)},
    }


def translate(*events: dict) -> tuple[list[KvEvent], KvEventTranslator]:
    mirror, sunk = KvCacheMirror(), []
    mirror.sink = sunk.append
    translator = KvEventTranslator(mirror, block_size=2)
    for event in events:
        translator.handle(event)
    return sunk, translator


def test_stored_and_removed_blocks() -> None:
    sunk, _ = translate(
        {"event_id": 0, "data": {"type": "created", "num_blocks_per_cache_level": [64, 0]}},
        stored(1, None, (11, [1, 2]), (2**64 - 3, [3, 4])),
        {"event_id": 2, "data": {"type": "updated", "block_hash": 11, "priority": {"old_value": 35,
                                                                                  "new_value": 90}}},
        stored(3, 2**64 - 3, (13, [5, 6])),
        removed(4, 13),
    )  # fmt: skip
    assert [(e.kind, e.block_hashes, e.parent_hash, e.token_ids, e.block_size) for e in sunk] == [
        (KvEventKind.STORED, [11, 2**64 - 3], None, [1, 2, 3, 4], 2),
        (KvEventKind.STORED, [13], 2**64 - 3, [5, 6], 2),
        (KvEventKind.REMOVED, [13], None, [], 0),
    ]


def test_partial_blocks_and_their_removals_are_dropped() -> None:
    sunk, translator = translate(
        stored(0, None, (11, [1, 2]), (12, [3]), (99, [4, 5])),  # 12 is partial: 12 and 99 dropped
        removed(1, 12, 11),
    )
    assert [(e.kind, e.block_hashes) for e in sunk] == [
        (KvEventKind.STORED, [11]),
        (KvEventKind.REMOVED, [11]),
    ]
    assert translator.dropped == {99}


def test_a_gap_in_event_ids_clears_the_mirror() -> None:
    sunk, translator = translate(
        stored(5, None, (11, [1, 2])), stored(6, 11, (12, [3, 4])), stored(9, None, (13, [5, 6]))
    )
    assert [e.kind for e in sunk] == [
        KvEventKind.STORED,
        KvEventKind.STORED,
        KvEventKind.CLEARED,
        KvEventKind.STORED,
    ]
    assert translator.gaps == 1 and translator.mirror.snapshot()[0].block_hashes == [13]


# ------------------------------------------------------------------------------ against the fake


def build(*flags: str, **ctx: object):  # type: ignore[no-untyped-def]
    argv = ["--model-path", "fake-org/tiny-model", "--max-seq-len", "2048", "--kv-block-size", "4", *flags]
    return plugin_manager().get("trtllm").factory(EngineContext(argv=argv, **ctx))  # type: ignore[arg-type]


def yaml_file(tmp_path: Path, text: str) -> str:
    path = tmp_path / "extra.yaml"
    path.write_text(text)
    return str(path)


def request(rid: str, prompt: list[int], max_tokens: int = 4) -> GenerateRequest:
    return GenerateRequest(
        request_id=rid, token_ids=prompt, stop=StopConditions(max_tokens=max_tokens), eos_token_ids=[2]
    )


async def until(check: Callable[[], bool], limit_s: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not check():
        assert loop.time() < deadline, "timed out waiting for KV events"
        await asyncio.sleep(0.01)


def stored_tokens(events: list[KvEvent]) -> list[int]:
    return [t for e in events if e.kind is KvEventKind.STORED for t in e.token_ids]


async def test_reusable_blocks_reach_the_sink(fake_tensorrt_llm: None) -> None:
    engine = build()
    assert (
        engine.config.kv_events and engine.config.llm_kwargs["kv_cache_config"]["event_buffer_max_size"] > 0
    )
    await engine.start()
    sunk: list[KvEvent] = []
    engine.set_kv_event_sink(sunk.append)
    try:
        prompt = list(range(10, 20))
        deltas = await collect(engine, request("a", prompt), 5)
        output = [t for d in deltas for t in d.token_ids]
        # the prompt's 2 full blocks when its context is computed; at the end the 13 tokens with KV
        # (prompt and output less its last token) add one full block and a partial one (dropped)
        await until(lambda: len(stored_tokens(sunk)) >= 12)
        assert stored_tokens(sunk) == [*prompt, *output[:2]]
        assert all(e.block_size == 4 for e in sunk) and sunk[0].parent_hash is None
        assert sunk[1].parent_hash == sunk[0].block_hashes[-1], "blocks are chained"
        snapshot = engine.kv_snapshot()
        assert [b for e in snapshot for b in e.block_hashes] == [b for e in sunk for b in e.block_hashes]
    finally:
        await engine.aclose()
    assert engine._kv_task is not None and engine._kv_task.done()


async def test_evictions_are_removed_events(fake_tensorrt_llm: None, tmp_path: Path) -> None:
    engine = build(
        "--extra-engine-args", yaml_file(tmp_path, "kv_cache_config:\n  max_tokens: 16\n")
    )  # 4 blocks
    await engine.start()
    sunk: list[KvEvent] = []
    engine.set_kv_event_sink(sunk.append)
    try:
        await collect(engine, request("a", list(range(10, 22)), 1), 5)  # 3 blocks
        await collect(engine, request("b", list(range(50, 62)), 1), 5)  # 3 more: 2 evicted
        await until(lambda: any(e.kind is KvEventKind.REMOVED for e in sunk))
        removed_ids = {b for e in sunk if e.kind is KvEventKind.REMOVED for b in e.block_hashes}
        assert removed_ids <= set(sunk[0].block_hashes), "the least recently used blocks go first"
        await until(lambda: len(engine.kv_snapshot()) == 4)
    finally:
        await engine.aclose()


async def test_an_overflowing_event_buffer_clears_the_mirror(fake_tensorrt_llm: None, tmp_path: Path) -> None:
    engine = build(
        "--extra-engine-args", yaml_file(tmp_path, "kv_cache_config:\n  event_buffer_max_size: 2\n")
    )
    engine.kv_events_timeout_s, engine.kv_events_interval_s = 0.01, 0.3  # a slow reader
    await engine.start()
    sunk: list[KvEvent] = []
    engine.set_kv_event_sink(sunk.append)
    try:
        await asyncio.sleep(0.05)  # the reader has read "created" and is pausing
        for i in range(3):  # 6 events into a buffer of 2
            await collect(engine, request(f"r{i}", list(range(10 + 20 * i, 22 + 20 * i)), 1), 5)
        await until(lambda: any(e.kind is KvEventKind.CLEARED for e in sunk))
        cleared = max(i for i, e in enumerate(sunk) if e.kind is KvEventKind.CLEARED)
        assert stored_tokens(sunk[cleared:]) == stored_tokens([e for e in engine.kv_snapshot()])
    finally:
        await engine.aclose()


@pytest.mark.parametrize("how", ["env", "yaml", "no-reuse"])
async def test_kv_events_can_be_turned_off(
    fake_tensorrt_llm: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    flags: list[str] = []
    if how == "env":
        monkeypatch.setenv("DYN_TRTLLM_KV_EVENTS", "0")
    else:
        setting = "event_buffer_max_size: 0" if how == "yaml" else "enable_block_reuse: false"
        flags = ["--extra-engine-args", yaml_file(tmp_path, f"kv_cache_config:\n  {setting}\n")]
    engine = build(*flags)
    assert not engine.config.kv_events
    await engine.start()
    try:
        await collect(engine, request("a", list(range(10, 20))), 5)
        assert engine._kv_task is None and engine.kv_snapshot() == []
    finally:
        await engine.aclose()
