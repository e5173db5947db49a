"""A user's first session: a frontend and two mocker workers, driven with the official client."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator


import httpx
import openai
import pytest

from support.cluster import Cluster, FrontendProc

pytestmark = pytest.mark.integration
MODEL = "mocker"


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, FrontendProc]]:
    c = Cluster(tmp_path_factory.mktemp("serving"))
    try:
        workers = [c.worker("--speedup-ratio", "1000") for _ in range(2)]
        fe = c.frontend()
        for w in workers:
            c.wait_worker_ready(w)
        fe.wait_workers(MODEL, 2)
        yield c, fe
    finally:
        c.close()


@pytest.fixture
def client(served: tuple[Cluster, FrontendProc]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served[1].url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_chat_completion(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hello"}], max_tokens=32, extra_body={"ignore_eos": True}
    )
    choice = resp.choices[0]
    assert resp.object == "chat.completion"
    assert choice.message.role == "assistant"
    assert choice.message.content and choice.message.content.strip()
    assert choice.finish_reason == "length"
    assert resp.usage is not None
    assert resp.usage.completion_tokens == 32
    assert resp.usage.prompt_tokens > 0
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + 32


def test_chat_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=24, seed=7)
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text == whole.choices[0].message.content
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_sse_wire_format_ends_with_done(served: tuple[Cluster, FrontendProc]) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8, "stream": True}
    with httpx.stream("POST", f"{served[1].url}/v1/chat/completions", json=body, timeout=30) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert len(events) >= 3


def test_completions(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10,
                                     extra_body={"ignore_eos": True})
    assert resp.object == "text_completion"
    assert resp.choices[0].text
    assert resp.choices[0].finish_reason == "length"
    assert resp.usage.completion_tokens == 10
    streamed = list(client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=10, stream=True,
                                              extra_body={"ignore_eos": True}))
    text = "".join(c.choices[0].text for c in streamed if c.choices)
    assert text == resp.choices[0].text


def test_completions_with_token_ids(client: openai.OpenAI) -> None:
    resp = client.completions.create(model=MODEL, prompt=[10, 20, 30, 40], max_tokens=5,
                                     extra_body={"ignore_eos": True})
    assert resp.usage.prompt_tokens == 4
    assert resp.usage.completion_tokens == 5


def test_stop_string_truncates(client: openai.OpenAI) -> None:
    full = client.completions.create(model=MODEL, prompt="stop test", max_tokens=20, seed=3,
                                     extra_body={"ignore_eos": True}).choices[0].text
    words = full.split()
    stop = " " + words[3]
    cut = client.completions.create(model=MODEL, prompt="stop test", max_tokens=20, seed=3, stop=[stop],
                                    extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == full[: full.index(stop)]


def test_models_endpoint(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert ids == [MODEL]


def test_unknown_model_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    body = err.value.response.json()
    assert body["error"]["code"] == "model_not_found"
    assert body["error"]["param"] == "model"


def test_invalid_field_is_400_naming_it(served: tuple[Cluster, FrontendProc]) -> None:
    url = f"{served[1].url}/v1/chat/completions"
    r = httpx.post(url, json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": -3})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "max_tokens"
    r = httpx.post(url, json={"model": MODEL, "messages": []})
    assert r.status_code == 400 and r.json()["error"]["param"] == "messages"
    r = httpx.post(url, content=b"{not json")
    assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_health_and_live(served: tuple[Cluster, FrontendProc]) -> None:
    url = served[1].url
    assert httpx.get(f"{url}/live").json()["status"] == "live"
    health = httpx.get(f"{url}/health").json()
    assert health["status"] == "healthy" and health["models"] == {MODEL: 2}


def test_requests_spread_over_both_workers(served: tuple[Cluster, FrontendProc], client: openai.OpenAI) -> None:
    cluster, _ = served
    workers = [p for p in cluster.procs if p.name.startswith("worker")]
    before = [_requests_total(w) for w in workers]
    for _ in range(6):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    after = [_requests_total(w) for w in workers]
    assert [a - b for a, b in zip(after, before)] == [3, 3]


def _requests_total(worker) -> int:  # type: ignore[no-untyped-def]
    text = httpx.get(f"http://127.0.0.1:{worker.system_port}/metrics").text
    line = next(line for line in text.splitlines() if line.startswith("dynamo_worker_requests_total "))
    return int(float(line.split()[1]))


# -- failures ------------------------------------------------------------------------------------


def test_sigkill_worker_requests_keep_succeeding(cluster: Cluster) -> None:
    a = cluster.worker("--speedup-ratio", "1000")
    b = cluster.worker("--speedup-ratio", "1000")
    fe = cluster.frontend()
    cluster.wait_worker_ready(a)
    cluster.wait_worker_ready(b)
    fe.wait_workers(MODEL, 2)
    client = openai.OpenAI(base_url=f"{fe.url}/v1", api_key="x", max_retries=0, timeout=30)
    a.kill()
    started = time.monotonic()
    for _ in range(10):  # round-robin would send every other request to the dead worker
        resp = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert resp.choices[0].message.content
    fe.wait_workers(MODEL, 1, timeout=10)
    assert time.monotonic() - started < 10
    assert [m.id for m in client.models.list()] == [MODEL]


def test_client_disconnect_aborts_engine_request(cluster: Cluster) -> None:
    worker = cluster.worker("--speedup-ratio", "1")  # ~6 ms per token: the stream lasts seconds
    fe = cluster.frontend()
    cluster.wait_worker_ready(worker)
    fe.wait_workers(MODEL, 1)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "go on"}], "max_tokens": 3000,
            "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{fe.url}/v1/chat/completions", json=body, timeout=30) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert all(line.startswith("data: ") or line == "" for line in got)
        assert worker.health()["active_requests"] == 1
    deadline = time.monotonic() + 5
    while worker.health()["active_requests"] != 0:
        assert time.monotonic() < deadline, "the engine request was not aborted"
        time.sleep(0.05)


def test_worker_sigterm_leaves_discovery(cluster: Cluster) -> None:
    worker = cluster.worker("--speedup-ratio", "1000")
    fe = cluster.frontend()
    cluster.wait_worker_ready(worker)
    fe.wait_workers(MODEL, 1)
    worker.signal(signal.SIGTERM)
    assert worker.popen.wait(15) == 0
    deadline = time.monotonic() + 5
    while httpx.get(f"{fe.url}/v1/models").json()["data"]:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = httpx.post(f"{fe.url}/v1/chat/completions",
                   json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404


