"""The TensorRT-LLM plugin against the TensorRT-LLM fake (``fakes/tensorrt_llm``): the conformance kit,
flags and the YAML file, the engine-specific behaviour (handle map, stats, end ids, context length),
and a clear error when TensorRT-LLM is not installed."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamo.plugin import (
    EngineContext,
    EngineError,
    EngineUnavailable,
    FinishReason,
    GenerateRequest,
    SamplingOptions,
    StopConditions,
    errors,
    plugin_manager,
)
from dynamo.plugin.testing import EngineConformance, collect, tokens

MODEL = ["--model-path", "fake-org/tiny-model"]


def build(*flags: str, **ctx: object):  # type: ignore[no-untyped-def]
    spec = plugin_manager().get("trtllm")
    return spec.factory(EngineContext(argv=[*MODEL, *flags], **ctx))  # type: ignore[arg-type]


def request(max_tokens: int = 8, eos: list[int] | None = None, **stop: object) -> GenerateRequest:
    return GenerateRequest(
        request_id=f"r-{id(stop)}-{max_tokens}",
        token_ids=list(range(10, 26)),
        sampling=SamplingOptions(temperature=0.0),
        stop=StopConditions(max_tokens=max_tokens, **stop),  # type: ignore[arg-type]
        eos_token_ids=eos or [],
    )


class TestTrtllmConformance(EngineConformance):
    """The conformance kit; a batch of 8 at most, so the 32-request test queues."""

    @pytest.fixture(scope="class")
    @classmethod
    def engine_environment(cls, fake_tensorrt_llm: None) -> Iterator[None]:
        yield

    def make_engine(self):  # type: ignore[no-untyped-def]
        return build("--max-seq-len", "2048", "--max-batch-size", "8")


class TestTrtllmModelDirConformance(TestTrtllmConformance):
    """The same suite with the context length read from the model directory's config.json."""

    model_dir: Path

    @pytest.fixture(scope="class")
    @classmethod
    def engine_environment(
        cls, fake_tensorrt_llm: None, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[None]:
        cls.model_dir = tmp_path_factory.mktemp("model")
        (cls.model_dir / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
        yield

    def make_engine(self):  # type: ignore[no-untyped-def]
        spec = plugin_manager().get("trtllm")
        return spec.factory(EngineContext(argv=[], model_path=str(self.model_dir), kv_block_size=16))

    async def test_context_length_is_the_models(self, model_info) -> None:  # type: ignore[no-untyped-def]
        assert (model_info.context_length, model_info.kv_block_size) == (1024, 16)


# ------------------------------------------------------------------------------ flags


def test_flags_become_llm_arguments(fake_tensorrt_llm: None) -> None:
    engine = build(
        "--free-gpu-memory-fraction",
        "0.5",
        "--max-num-tokens",
        "4096",
        "--max-batch-size",
        "16",
        "--max-seq-len",
        "2048",
        "--kv-block-size",
        "64",
        "--tp",
        "1",
        "--model-name",
        "tiny",
    )
    config = engine.config
    assert (config.model, config.served_model_name) == ("fake-org/tiny-model", "tiny")
    assert config.llm_kwargs == {
        "backend": "pytorch",
        "enable_iter_perf_stats": True,
        "max_num_tokens": 4096,
        "max_batch_size": 16,
        "max_seq_len": 2048,
        "tensor_parallel_size": 1,
        "kv_cache_config": {
            "free_gpu_memory_fraction": 0.5,
            "tokens_per_block": 64,
            "event_buffer_max_size": 100_000,  # KV events for KV-aware routers
        },
    }


def test_yaml_file_merges_under_the_flags(fake_tensorrt_llm: None, tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text(
        "max_batch_size: 4\nenable_chunked_prefill: true\n"
        "kv_cache_config:\n  enable_block_reuse: false\n  free_gpu_memory_fraction: 0.7\n"
    )
    kwargs = build("--extra-engine-args", str(extra), "--free-gpu-memory-fraction", "0.5").config.llm_kwargs
    assert kwargs["max_batch_size"] == 4 and kwargs["enable_chunked_prefill"] is True
    assert kwargs["kv_cache_config"] == {"enable_block_reuse": False, "free_gpu_memory_fraction": 0.5}


def test_worker_context_fills_in_what_flags_leave_out(fake_tensorrt_llm: None) -> None:
    spec = plugin_manager().get("trtllm")
    engine = spec.factory(
        EngineContext(argv=[], model_path="/models/m", model_name="served", kv_block_size=16)
    )
    config = engine.config  # type: ignore[attr-defined]
    assert (config.model, config.served_model_name, config.tokens_per_block) == ("/models/m", "served", 16)


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--no-such-flag"], "invalid trtllm flags"),
        (["--max-batch-size", "x"], "invalid trtllm flags"),
        ([], "--model-path is required"),
        (["--model", "m", "--extra-engine-args", "/no/such.yaml"], "extra-engine-args"),
    ],
    ids=["unknown", "bad-value", "no-model", "no-yaml"],
)
def test_bad_flags_are_a_plugin_error(fake_tensorrt_llm: None, argv: list[str], match: str) -> None:
    with pytest.raises(errors.PluginError, match=match):
        plugin_manager().get("trtllm").factory(EngineContext(argv=argv))


def test_yaml_must_be_a_mapping(fake_tensorrt_llm: None, tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("- a\n- b\n")
    with pytest.raises(errors.PluginError, match="mapping"):
        build("--extra-engine-args", str(extra))


async def test_unknown_llm_argument_fails_start(fake_tensorrt_llm: None, tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("no_such_argument: 1\n")
    engine = build("--extra-engine-args", str(extra))
    with pytest.raises(EngineError, match="invalid argument: no_such_argument"):
        await engine.start()
    await engine.aclose()


def test_help_lists_the_flags(fake_tensorrt_llm: None) -> None:
    text = plugin_manager().get("trtllm").help()  # type: ignore[misc]
    assert "--free-gpu-memory-fraction" in text and "--extra-engine-args" in text


# ------------------------------------------------------------------------------ without tensorrt_llm


def test_factory_says_how_to_install_tensorrt_llm(no_tensorrt_llm: None) -> None:
    with pytest.raises(EngineUnavailable) as caught:
        build()
    message = str(caught.value)
    assert "pip install dynamo-trtllm" in message and "\n" not in message


def test_plugin_import_does_not_import_tensorrt_llm_or_torch() -> None:
    code = (
        "import sys; from dynamo.plugin import plugin_manager; import dynamo.trtllm.engine; "
        "assert 'trtllm' in plugin_manager().engines(); "
        "print(sorted(m for m in ('tensorrt_llm', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_python_m_dynamo_trtllm_is_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    import dynamo.trtllm.__main__ as entry
    import dynamo.worker.main

    seen: list[list[str]] = []
    monkeypatch.setattr(dynamo.worker.main, "main", lambda argv: seen.append(argv))
    monkeypatch.setattr(sys, "argv", ["python -m dynamo.trtllm", "--model-path", "m"])
    entry.main()
    assert seen == [["--engine", "trtllm", "--model-path", "m"]]


# ------------------------------------------------------------------------------ engine behaviour


@pytest.fixture
async def engine(fake_tensorrt_llm: None):  # type: ignore[no-untyped-def]
    engine = build("--max-seq-len", "2048", "--kv-block-size", "4", "--max-batch-size", "16")
    engine.stats_interval_s = 0.01
    await engine.start()
    yield engine
    await engine.aclose()


async def test_model_info(engine) -> None:  # type: ignore[no-untyped-def]
    info = engine._info
    assert (info.served_model_name, info.context_length, info.kv_block_size) == (
        "fake-org/tiny-model",
        2048,
        4,
    )
    assert (info.max_num_seqs, info.max_num_batched_tokens) == (16, None)


async def test_abort_goes_through_the_handle(engine) -> None:  # type: ignore[no-untyped-def]
    req = request(1000)
    stream = engine.generate(req)
    await stream.__anext__()
    handle = engine._requests[req.request_id]
    await engine.abort(req.request_id)
    assert handle.aborted()
    rest = [d async for d in stream]
    assert rest[-1].finish_reason == FinishReason.CANCELLED and engine._requests == {}


async def test_closing_a_stream_aborts_the_request(engine) -> None:  # type: ignore[no-untyped-def]
    req = request(1000)
    stream = engine.generate(req)
    await stream.__anext__()
    handle = engine._requests[req.request_id]
    await stream.aclose()
    assert handle.aborted()
    executor = engine._llm._executor
    for _ in range(100):
        if not executor.active:
            break
        await asyncio.sleep(0.01)
    assert not executor.active and not executor.waiting


async def test_load_metrics_come_from_iteration_stats(engine) -> None:  # type: ignore[no-untyped-def]
    req = request(1000)
    stream = engine.generate(req)
    for _ in range(20):
        await stream.__anext__()
    await asyncio.sleep(0.05)
    metrics = engine.load_metrics()
    assert metrics.active_requests == 1 and metrics.kv_total_blocks == 4096
    assert metrics.kv_used_blocks >= (16 + 20) // 4
    await stream.aclose()
    assert engine.load_metrics().active_requests == 0 and engine.load_metrics().kv_used_blocks == 0


async def test_end_of_sequence_is_eos_and_not_streamed(engine, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from tensorrt_llm.executor import executor

    monkeypatch.setattr(executor, "fake_eos_after", 3)
    deltas = await collect(engine, request(8), 10)
    assert len(tokens(deltas)) == 2
    assert deltas[-1].finish_reason == FinishReason.EOS and deltas[-1].usage.completion_tokens == 2


async def test_request_eos_ids_become_end_and_stop_ids(engine) -> None:  # type: ignore[no-untyped-def]
    baseline = tokens(await collect(engine, request(8), 10))
    deltas = await collect(engine, request(8, eos=[99999, baseline[2]]), 10)
    assert tokens(deltas) == baseline[:2] and deltas[-1].finish_reason == FinishReason.EOS
    params = engine.sampling_params(request(8, eos=[7, 8], stop_token_ids=[5]), 8)
    assert (params.end_id, params.stop_token_ids, params.detokenize) == (7, [5, 8], False)


async def test_without_a_tokenizer_requests_need_no_end_id(fake_tensorrt_llm: None, tmp_path: Path) -> None:
    extra = tmp_path / "extra.yaml"
    extra.write_text("skip_tokenizer_init: true\n")
    engine = build("--max-seq-len", "2048", "--extra-engine-args", str(extra))
    await engine.start()
    try:
        deltas = await collect(engine, request(4), 10)
        assert len(tokens(deltas)) == 4 and deltas[-1].finish_reason == FinishReason.LENGTH
    finally:
        await engine.aclose()


async def test_health_fails_when_the_executor_is_gone(engine) -> None:  # type: ignore[no-untyped-def]
    await engine.check_health()
    engine._llm._executor.shutdown()
    with pytest.raises(EngineError):
        await engine.check_health()


async def test_aclose_ends_open_streams_as_cancelled(fake_tensorrt_llm: None) -> None:
    engine = build("--max-seq-len", "2048")
    await engine.start()
    stream = engine.generate(request(1000))
    await stream.__anext__()
    rest = asyncio.ensure_future(collect_rest(stream))
    await asyncio.sleep(0.01)
    await engine.aclose()
    deltas = await asyncio.wait_for(rest, 5)
    assert deltas[-1].finish_reason == FinishReason.CANCELLED
    assert engine._llm is None


async def collect_rest(stream):  # type: ignore[no-untyped-def]
    return [d async for d in stream]
