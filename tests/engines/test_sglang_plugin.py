"""The SGLang plugin against the SGLang fake (``fakes/sglang``): the conformance kit, flag pass-through,
the engine-specific behaviour (abort on close, stop ids under ignore_eos, EOS, cached tokens), and a
clear error when SGLang is not installed."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator

import pytest

from dynamo.plugin import (
    EngineContext,
    EngineUnavailable,
    FinishReason,
    GenerateRequest,
    InvalidRequest,
    SamplingOptions,
    StopConditions,
    errors,
    plugin_manager,
)
from dynamo.plugin.testing import EngineConformance, collect, tokens

MODEL = ["--model-path", "fake-org/tiny-model", "--context-length", "2048"]


def build(*flags: str, **ctx: object):  # type: ignore[no-untyped-def]
    spec = plugin_manager().get("sglang")
    return spec.factory(EngineContext(argv=[*MODEL, *flags], **ctx))  # type: ignore[arg-type]


def request(max_tokens: int = 8, **stop: object) -> GenerateRequest:
    return GenerateRequest(
        request_id=f"r-{id(stop)}-{max_tokens}",
        token_ids=list(range(10, 26)),
        sampling=SamplingOptions(temperature=0.0),
        stop=StopConditions(max_tokens=max_tokens, **stop),  # type: ignore[arg-type]
    )


class TestSglangConformance(EngineConformance):
    """The conformance kit; 8 running requests at most, so the 32-request test queues."""

    @pytest.fixture(scope="class")
    @classmethod
    def engine_environment(cls, fake_sglang: None) -> Iterator[None]:
        yield

    def make_engine(self):  # type: ignore[no-untyped-def]
        return build("--max-running-requests", "8", "--page-size", "4")


class TestSglangCumulativeConformance(TestSglangConformance):
    """The same suite with cumulative output ids (SGLang's default, which the plugin turns off)."""

    def make_engine(self):  # type: ignore[no-untyped-def]
        engine = build("--max-running-requests", "8")
        engine.server_args.incremental_streaming_output = False
        return engine


# ------------------------------------------------------------------------------ flags


def test_sglang_flags_pass_through(fake_sglang: None) -> None:
    engine = build(
        "--mem-fraction-static",
        "0.5",
        "--max-running-requests",
        "4",
        "--page-size",
        "16",
        "--tp",
        "2",
        "--model-name",
        "tiny",
        "--chunked-prefill-size=512",
    )
    args = engine.server_args
    assert (args.mem_fraction_static, args.max_running_requests, args.page_size) == (0.5, 4, 16)
    assert (args.tp_size, args.served_model_name, args.chunked_prefill_size) == (2, "tiny", 512)
    assert args.model_path == "fake-org/tiny-model" and args.context_length == 2048
    # forced: disjoint deltas, token ids only
    assert args.incremental_streaming_output and args.skip_tokenizer_init


def test_worker_context_fills_in_what_flags_leave_out(fake_sglang: None) -> None:
    spec = plugin_manager().get("sglang")
    ctx = EngineContext(argv=[], model_path="/models/m", model_name="served", kv_block_size=32)
    args = spec.factory(ctx).server_args  # type: ignore[attr-defined]
    assert (args.model_path, args.served_model_name, args.page_size) == ("/models/m", "served", 32)
    args = build(
        "--served-model-name", "flag-wins", "--page-size", "8", model_name="ctx", kv_block_size=32
    ).server_args
    assert (args.served_model_name, args.page_size) == ("flag-wins", 8)


@pytest.mark.parametrize(
    "argv", [["--no-such-flag"], ["--page-size", "x"], []], ids=["unknown", "bad-value", "no-model"]
)
def test_bad_flags_are_a_plugin_error(fake_sglang: None, argv: list[str]) -> None:
    spec = plugin_manager().get("sglang")
    with pytest.raises(errors.PluginError, match="invalid sglang flags"):
        spec.factory(EngineContext(argv=argv))


def test_help_is_sglangs(fake_sglang: None) -> None:
    text = plugin_manager().get("sglang").help()  # type: ignore[misc]
    assert "--mem-fraction-static" in text and "python -m dynamo.sglang" in text


# ------------------------------------------------------------------------------ without sglang


def test_factory_says_how_to_install_sglang(no_sglang: None) -> None:
    with pytest.raises(EngineUnavailable) as caught:
        build()
    message = str(caught.value)
    assert "pip install dynamo-sglang" in message and "\n" not in message


def test_plugin_import_does_not_import_sglang_or_torch() -> None:
    code = (
        "import sys; from dynamo.plugin import plugin_manager; import dynamo.sglang.engine; "
        "assert 'sglang' in plugin_manager().engines(); "
        "print(sorted(m for m in ('sglang', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_m_dynamo_sglang_is_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    import dynamo.sglang.__main__ as entry
    import dynamo.worker.main

    seen: list[list[str]] = []
    monkeypatch.setattr(dynamo.worker.main, "main", lambda argv: seen.append(argv))
    monkeypatch.setattr(sys, "argv", ["python -m dynamo.sglang", "--model-path", "m", "--tp", "2"])
    entry.main()
    assert seen == [["--engine", "sglang", "--model-path", "m", "--tp", "2"]]


# ------------------------------------------------------------------------------ engine behaviour


@pytest.fixture
async def engine(fake_sglang: None):  # type: ignore[no-untyped-def]
    engine = build("--page-size", "4", "--max-total-tokens", "32768", "--model-name", "tiny")
    await engine.start()
    yield engine
    await engine.aclose()


async def test_model_info_reports_capacity(engine) -> None:  # type: ignore[no-untyped-def]
    info = engine._info
    assert (info.served_model_name, info.model_path, info.context_length) == (
        "tiny",
        "fake-org/tiny-model",
        2048,
    )
    assert (info.kv_block_size, info.total_kv_blocks) == (4, 8192)
    assert engine.load_metrics().kv_total_blocks == 8192


async def test_closing_a_stream_aborts_the_sglang_request(engine) -> None:  # type: ignore[no-untyped-def]
    manager = engine._engine.tokenizer_manager
    req = request(1000)
    stream = engine.generate(req)
    await stream.__anext__()
    await stream.aclose()
    assert manager.fake_aborted == [req.request_id]
    for _ in range(100):
        if not manager.rid_to_state:
            break
        await asyncio.sleep(0.01)
    assert manager.rid_to_state == {}


async def test_stop_ids_under_ignore_eos_are_applied_by_the_plugin(engine) -> None:  # type: ignore[no-untyped-def]
    baseline = tokens(await collect(engine, request(8, ignore_eos=True), 10))
    req = request(8, ignore_eos=True, stop_token_ids=[baseline[3]])
    deltas = await collect(engine, req, 10)
    assert tokens(deltas) == baseline[:3]
    assert deltas[-1].finish_reason == FinishReason.STOP and deltas[-1].usage.completion_tokens == 4
    assert req.request_id in engine._engine.tokenizer_manager.fake_aborted  # SGLang would go on


async def test_eos_ends_with_eos_and_is_not_streamed(engine, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from sglang.srt.managers import scheduler

    monkeypatch.setattr(scheduler, "fake_eos_after", 3)
    deltas = await collect(engine, request(8), 10)
    assert len(tokens(deltas)) == 2 and scheduler.EOS_TOKEN_ID not in tokens(deltas)
    assert deltas[-1].finish_reason == FinishReason.EOS and deltas[-1].usage.completion_tokens == 3


async def test_cached_prompt_tokens_are_reported(engine) -> None:  # type: ignore[no-untyped-def]
    first = await collect(engine, request(2), 10)
    second = await collect(engine, request(2), 10)
    assert first[-1].usage.cached_tokens == 0
    assert second[-1].usage.cached_tokens == 12  # 16 prompt tokens, pages of 4, the last one recomputed


async def test_sglang_validation_errors_are_invalid_requests(engine) -> None:  # type: ignore[no-untyped-def]
    req = request(4)
    req.sampling.temperature = -1.0
    with pytest.raises(InvalidRequest, match="temperature"):
        await collect(engine, req, 10)


async def test_min_tokens_needs_sglangs_tokenizer(engine) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidRequest, match="min_new_tokens"):
        await collect(engine, request(4, min_tokens=2), 10)


async def test_duplicate_request_id_is_invalid(engine) -> None:  # type: ignore[no-untyped-def]
    req = request(1000)
    stream = engine.generate(req)
    await stream.__anext__()
    with pytest.raises(InvalidRequest, match="already in flight"):
        await collect(engine, req, 10)
    await stream.aclose()


async def test_aclose_ends_open_streams_as_cancelled(fake_sglang: None) -> None:
    engine = build()
    await engine.start()
    stream = engine.generate(request(1000))
    await stream.__anext__()
    rest = asyncio.ensure_future(collect_rest(stream))
    await asyncio.sleep(0.01)
    await engine.aclose()
    deltas = await asyncio.wait_for(rest, 5)
    assert deltas[-1].finish_reason == FinishReason.CANCELLED
    assert engine._engine is None


async def collect_rest(stream):  # type: ignore[no-untyped-def]
    return [d async for d in stream]


def test_sampling_params_use_sglang_names() -> None:
    from dynamo.sglang.engine import sampling_params

    req = GenerateRequest(
        request_id="x",
        token_ids=[1],
        eos_token_ids=[2, 3],
        sampling=SamplingOptions(temperature=0.5, top_k=5, seed=7, repetition_penalty=1.1),
        stop=StopConditions(max_tokens=4, stop_token_ids=[9, 2]),
    )
    assert sampling_params(req, 4) == {
        "max_new_tokens": 4,
        "ignore_eos": False,
        "temperature": 0.5,
        "top_k": 5,
        "repetition_penalty": 1.1,
        "sampling_seed": 7,
        "stop_token_ids": [9, 2, 3],
    }
    req.stop.ignore_eos = True
    assert "stop_token_ids" not in sampling_params(req, 4)
