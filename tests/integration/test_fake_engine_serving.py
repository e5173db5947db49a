"""A user's session with the SGLang and TensorRT-LLM plugins, their engine libraries replaced by the
fakes of ``tests/engines/fakes``: ``python -m dynamo.sglang`` / ``python -m dynamo.trtllm`` workers
behind a real frontend, driven over HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from dynamo.mocker.config import DEFAULT_MODEL_PATH  # a small model directory with a tokenizer
from support.cluster import Cluster, FrontendProc

pytestmark = pytest.mark.integration
FAKES_DIR = Path(__file__).resolve().parents[1] / "engines" / "fakes"
ENGINE_FLAGS = {
    "sglang": ["--context-length", "2048", "--max-running-requests", "8"],
    "trtllm": ["--max-seq-len", "2048", "--max-batch-size", "8"],
}


@pytest.fixture(scope="module", params=sorted(ENGINE_FLAGS))
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, FrontendProc]]:
    engine = request.param
    pytest.importorskip(f"dynamo.{engine}", reason=f"dynamo-{engine} is not installed here")
    c = Cluster(tmp_path_factory.mktemp(f"fake-{engine}"))
    try:
        worker = c.worker(
            "--model-path", DEFAULT_MODEL_PATH, "--model-name", f"tiny-{engine}", *ENGINE_FLAGS[engine],
            module=f"dynamo.{engine}", engine=engine, env={"PYTHONPATH": str(FAKES_DIR)},
        )  # fmt: skip
        fe = c.frontend()
        c.wait_worker_ready(worker)
        fe.wait_workers(f"tiny-{engine}", 1)
        yield f"tiny-{engine}", fe
    finally:
        c.close()


def client(fe: FrontendProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fe.url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_completion(served: tuple[str, FrontendProc]) -> None:
    model, fe = served
    resp = client(fe).completions.create(model=model, prompt="Hello there", max_tokens=12)
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 12
    assert resp.choices[0].text


def test_chat_streaming_matches_non_streaming(served: tuple[str, FrontendProc]) -> None:
    model, fe = served
    kwargs = dict(model=model, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=16)
    whole = client(fe).chat.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(client(fe).chat.completions.create(**kwargs, stream=True))  # type: ignore[call-overload]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "length"
    ]


def test_unservable_request_is_a_400(served: tuple[str, FrontendProc]) -> None:
    model, fe = served
    with pytest.raises(openai.BadRequestError):
        client(fe).completions.create(model=model, prompt="Hello", max_tokens=4000)
