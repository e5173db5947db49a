"""The OpenAI API surface as a user meets it: every supported field through the official client,
every bad input answered in the OpenAI error format, disconnects that leak no engine request,
the API key, metrics and logs, and a schema-driven fuzz run that finds no 5xx."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from support.cluster import Cluster, FrontendProc, Proc, free_port

pytestmark = pytest.mark.integration
MODEL = "mocker"
KEY = "sekret-key"
TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
HI = [{"role": "user", "content": "Hello there"}]


class Api:
    def __init__(self, cluster: Cluster, fe: FrontendProc, secured: FrontendProc, workers: list[Proc]) -> None:
        self.cluster, self.fe, self.secured, self.workers = cluster, fe, secured, workers

    def idle(self, timeout: float = 5) -> None:
        """Wait until every engine reports no active request."""
        deadline = time.monotonic() + timeout
        while (active := [w.health()["active_requests"] for w in self.workers]) != [0] * len(self.workers):
            assert time.monotonic() < deadline, f"engine requests leaked: {active}"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    c = Cluster(tmp_path_factory.mktemp("openai-api"))
    try:
        # short natural answers (4-8 tokens) make max_tokens, min_tokens and ignore_eos observable
        workers = [c.worker("--speedup-ratio", "1000", "--min-output-len", "4", "--max-output-len", "8")
                   for _ in range(2)]
        fe = c.frontend(env={"DYN_HTTP_BODY_LIMIT_MB": "1"})
        secured = c.frontend("--api-key", KEY, "--ignore-unknown-fields")
        for w in workers:
            c.wait_worker_ready(w)
        fe.wait_workers(MODEL, 2)
        secured.wait_workers(MODEL, 2)
        yield Api(c, fe, secured, workers)
    finally:
        c.close()


@pytest.fixture(scope="module")
def client(api: Api) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api.fe.url}/v1", api_key="unused", max_retries=0, timeout=30)


def chat(client: openai.OpenAI, **kw: Any) -> Any:
    kw.setdefault("messages", HI)
    return client.chat.completions.create(model=MODEL, **kw)


# -- supported fields --------------------------------------------------------------------------------


def test_token_limits(client: openai.OpenAI) -> None:
    r = chat(client, max_completion_tokens=7, extra_body={"ignore_eos": True})
    assert (r.usage.completion_tokens, r.choices[0].finish_reason) == (7, "length")
    r = chat(client, max_tokens=9, extra_body={"ignore_eos": True})
    assert r.usage.completion_tokens == 9
    natural = chat(client, max_tokens=50)
    assert natural.choices[0].finish_reason == "stop" and natural.usage.completion_tokens <= 8
    floor = chat(client, max_tokens=50, extra_body={"min_tokens": 30})
    assert 30 <= floor.usage.completion_tokens <= 50


def test_sampling_fields_and_seed(client: openai.OpenAI) -> None:
    kw = dict(max_tokens=6, extra_body={"ignore_eos": True})
    a, b, c = (chat(client, seed=s, **kw).choices[0].message.content for s in (5, 5, 6))
    assert a == b and a != c
    r = chat(client, temperature=0.7, top_p=0.9, presence_penalty=0.5, frequency_penalty=-0.5, user="alice",
             max_tokens=4, extra_body={"top_k": 20, "min_p": 0.05, "repetition_penalty": 1.1})
    assert r.choices[0].message.content


def test_roles_and_content_parts(client: openai.OpenAI) -> None:
    plain = chat(client, max_tokens=1, messages=[{"role": "system", "content": "Be brief."},
                                                 {"role": "user", "content": "hello world"}])
    parts = chat(client, max_tokens=1, messages=[
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "text", "text": "hello "}, {"type": "text", "text": "world"}]}])
    assert parts.usage.prompt_tokens == plain.usage.prompt_tokens  # parts are joined into the same text
    developer = chat(client, max_tokens=1, messages=[{"role": "developer", "content": "Be brief."},
                                                     {"role": "user", "content": "hello world"}])
    assert developer.usage.prompt_tokens > plain.usage.prompt_tokens - 3
    conversation = chat(client, max_tokens=3, tools=[TOOL], messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
    ])
    assert conversation.choices[0].message.content


def test_stop_string_and_list(client: openai.OpenAI) -> None:
    kw = dict(max_tokens=12, seed=3, extra_body={"ignore_eos": True})
    full = chat(client, **kw).choices[0].message.content
    stop = " " + full.split()[2]
    for value in (stop, [stop, "never-matches"]):
        cut = chat(client, stop=value, **kw)
        assert cut.choices[0].finish_reason == "stop"
        assert cut.choices[0].message.content == full[: full.index(stop)]


def test_n_choices(client: openai.OpenAI) -> None:
    one = chat(client, max_tokens=5, extra_body={"ignore_eos": True})
    r = chat(client, n=3, max_tokens=5, extra_body={"ignore_eos": True})
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) == 3  # each choice samples with its own seed
    assert r.usage.prompt_tokens == one.usage.prompt_tokens and r.usage.completion_tokens == 15
    chunks = list(chat(client, n=2, max_tokens=4, stream=True, stream_options={"include_usage": True},
                       extra_body={"ignore_eos": True}))
    finished = sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason)
    assert finished == [0, 1] and chunks[-1].usage.completion_tokens == 8


def test_logprobs(client: openai.OpenAI) -> None:
    r = chat(client, max_tokens=5, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    content = r.choices[0].logprobs.content
    assert len(content) == 5
    assert "".join(t.token for t in content) == r.choices[0].message.content
    assert all(t.logprob < 0 and len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token for t in content)
    again = chat(client, max_tokens=5, logprobs=True, top_logprobs=3, extra_body={"ignore_eos": True})
    assert [t.logprob for t in again.choices[0].logprobs.content] == [t.logprob for t in content]  # deterministic
    chunks = list(chat(client, max_tokens=5, logprobs=True, stream=True, extra_body={"ignore_eos": True}))
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content]
    assert [t.token for t in streamed] == [t.token for t in content]
    assert chat(client, max_tokens=2).choices[0].logprobs is None


def test_response_format(client: openai.OpenAI) -> None:
    assert chat(client, max_tokens=2, response_format={"type": "text"}).choices[0].message.content
    with pytest.raises(openai.BadRequestError) as err:  # the mocker declares no structured output
        chat(client, max_tokens=2, response_format={"type": "json_object"})
    body = err.value.response.json()["error"]
    assert body["param"] == "response_format" and "mocker" in body["message"]


def test_tools_are_rendered_and_tool_choice(client: openai.OpenAI) -> None:
    without = chat(client, max_tokens=1)
    with_tools = chat(client, max_tokens=1, tools=[TOOL], tool_choice="auto")
    dropped = chat(client, max_tokens=1, tools=[TOOL], tool_choice="none")
    assert with_tools.usage.prompt_tokens > without.usage.prompt_tokens + 20  # the definitions are in the prompt
    assert dropped.usage.prompt_tokens == without.usage.prompt_tokens
    chunks = list(chat(client, max_tokens=4, tools=[TOOL], stream=True))  # plain text: no tool call parsed
    assert [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason] in (["stop"], ["length"])
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, max_tokens=1, tools=[TOOL], tool_choice="required")
    assert err.value.response.json()["error"]["param"] == "tool_choice"


def test_completion_prompt_forms_echo_and_logprobs(client: openai.OpenAI) -> None:
    kw = dict(model=MODEL, max_tokens=3, extra_body={"ignore_eos": True})
    r = client.completions.create(prompt=["Once upon", "a time"], **kw)
    assert [c.index for c in r.choices] == [0, 1] and r.usage.completion_tokens == 6
    r = client.completions.create(prompt=[[10, 20, 30], [40, 50]], n=2, best_of=2, **kw)
    assert [c.index for c in r.choices] == [0, 1, 2, 3] and r.usage.prompt_tokens == 5
    r = client.completions.create(prompt="Once upon a time", echo=True, **kw)
    assert r.choices[0].text.startswith("Once upon a time") and len(r.choices[0].text) > len("Once upon a time")
    r = client.completions.create(prompt="Once upon a time", logprobs=2, **kw)
    lp = r.choices[0].logprobs
    assert "".join(lp.tokens) == r.choices[0].text and len(lp.token_logprobs) == 3
    assert lp.text_offset == [0, len(lp.tokens[0]), len(lp.tokens[0]) + len(lp.tokens[1])]
    streamed = list(client.completions.create(prompt="Once upon a time", stream=True,
                                              stream_options={"include_usage": True}, **kw))
    assert streamed[-1].usage.completion_tokens == 3


def test_unknown_fields_are_named_or_ignored_by_flag(api: Api, client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        chat(client, max_tokens=2, extra_body={"service_tier": "flex"})
    assert err.value.response.json()["error"]["param"] == "service_tier"
    lenient = openai.OpenAI(base_url=f"{api.secured.url}/v1", api_key=KEY, max_retries=0, timeout=30)
    r = chat(lenient, max_tokens=2, extra_body={"service_tier": "flex", "metadata": {"team": "a"}})
    assert r.choices[0].message.content


# -- bad inputs --------------------------------------------------------------------------------------

CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def _json(**fields: Any) -> bytes:
    return json.dumps({"model": MODEL, "messages": HI, **fields}).encode()


LONG = " ".join(["word"] * 9000)
BAD_INPUTS: list[tuple[str, str, str, Any, int, str, str | None, str]] = [
    # (id, method, path, body, status, error code, param, words in the message)
    ("malformed-json", "POST", CHAT, b'{"model": "mocker", "messages": [', 400, "invalid_request", "body", "not valid JSON"),
    ("empty-body", "POST", CHAT, b"", 400, "invalid_request", "body", "not valid JSON"),
    ("not-an-object", "POST", CHAT, b"[1, 2]", 400, "invalid_request", "body", "JSON object"),
    ("invalid-utf8", "POST", CHAT, b'{"model": "mocker", "messages": [{"role": "user", "content": "\xff\xfe"}]}',
     400, "invalid_request", "body", "not valid JSON"),
    ("lone-surrogate", "POST", CHAT, b'{"model": "mocker", "messages": [{"role": "user", "content": "\\ud800"}]}',
     400, "invalid_request", "body", "not valid JSON"),
    ("max-tokens-string", "POST", CHAT, _json(max_tokens="10"), 400, "invalid_request", "max_tokens", "integer"),
    ("messages-string", "POST", CHAT, _json(messages="hi"), 400, "invalid_request", "messages", "array"),
    ("content-number", "POST", CHAT, _json(messages=[{"role": "user", "content": 5}]), 400, "invalid_request",
     "messages.0.content", "valid string or a valid array"),
    ("stream-string", "POST", CHAT, _json(stream="yes"), 400, "invalid_request", "stream", "boolean"),
    ("temperature-high", "POST", CHAT, _json(temperature=3), 400, "invalid_request", "temperature", "2"),
    ("top-p-zero", "POST", CHAT, _json(top_p=0), 400, "invalid_request", "top_p", "greater than 0"),
    ("max-tokens-zero", "POST", CHAT, _json(max_tokens=0), 400, "invalid_request", "max_tokens", "1"),
    ("max-tokens-huge", "POST", CHAT, _json(max_tokens=10**30), 400, "invalid_request", "max_tokens", "less than"),
    ("n-zero", "POST", CHAT, _json(n=0), 400, "invalid_request", "n", "1"),
    ("seed-too-big", "POST", CHAT, _json(seed=2**64), 400, "invalid_request", "seed", "less than"),
    ("nan-temperature", "POST", CHAT, b'{"model": "mocker", "messages": [{"role": "user", "content": "x"}], '
     b'"temperature": NaN}', 400, "invalid_request", "temperature", "finite number"),
    ("empty-messages", "POST", CHAT, _json(messages=[]), 400, "invalid_request", "messages", "at least 1"),
    ("no-content", "POST", CHAT, _json(messages=[{"role": "user"}]), 400, "invalid_request", "messages.0.content",
     "needs 'content'"),
    ("unknown-role", "POST", CHAT, _json(messages=[{"role": "robot", "content": "x"}]), 400, "invalid_request",
     "messages.0.role", "'assistant'"),
    ("image-part", "POST", CHAT, _json(messages=[{"role": "user", "content": [{"type": "image_url",
                                                                               "image_url": {"url": "x"}}]}]),
     400, "invalid_request", "messages.0.content.0.type", "'text'"),
    ("missing-model", "POST", CHAT, json.dumps({"messages": HI}).encode(), 400, "invalid_request", "model",
     "required"),
    ("unknown-field", "POST", CHAT, _json(frobnicate=True), 400, "invalid_request", "frobnicate", "unsupported"),
    ("logit-bias", "POST", CHAT, _json(logit_bias={"1": 5}), 400, "invalid_request", "logit_bias", "not supported"),
    ("empty-prompt", "POST", COMPLETIONS, json.dumps({"model": MODEL, "prompt": ""}).encode(), 400,
     "invalid_request", "prompt", "at least 1 character"),
    ("token-out-of-vocab", "POST", COMPLETIONS, json.dumps({"model": MODEL, "prompt": [1, 99999999]}).encode(),
     400, "invalid_request", "prompt", "must be in [0, 4096)"),
    ("suffix", "POST", COMPLETIONS, json.dumps({"model": MODEL, "prompt": "x", "suffix": "y"}).encode(), 400,
     "invalid_request", "suffix", "not supported"),
    ("unknown-model", "POST", CHAT, json.dumps({"model": "gpt-17", "messages": HI}).encode(), 404,
     "model_not_found", "model", "gpt-17"),
    ("prompt-over-context", "POST", CHAT, _json(messages=[{"role": "user", "content": LONG}]), 400,
     "invalid_request", "messages", "maximum context length is 8192 tokens, but the prompt has"),
    ("completion-over-context", "POST", CHAT, _json(max_tokens=8190), 400, "invalid_request", "max_tokens",
     "maximum context length is 8192 tokens; you requested"),
    ("oversized-body", "POST", CHAT, _json(messages=[{"role": "user", "content": "x" * (2 << 20)}]), 413,
     "body_too_large", None, "larger than the limit"),
    ("wrong-method", "GET", CHAT, None, 405, "method_not_allowed", None, "Method Not Allowed"),
    ("delete-models", "DELETE", "/v1/models", None, 405, "method_not_allowed", None, "Method Not Allowed"),
    ("unknown-path", "POST", "/v1/embeddings-of-doom", b"{}", 404, "not_found", None, "Not Found"),
]


@pytest.mark.parametrize(("name", "method", "path", "body", "status", "code", "param", "words"), BAD_INPUTS,
                         ids=[b[0] for b in BAD_INPUTS])
def test_bad_input(api: Api, name: str, method: str, path: str, body: bytes | None, status: int, code: str,
                   param: str | None, words: str) -> None:
    headers = {"content-type": "application/json"} if body is not None else {}
    r = httpx.request(method, f"{api.fe.url}{path}", content=body, headers=headers, timeout=30)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    assert words in error["message"]
    assert "pydantic" not in error["message"] and "Traceback" not in r.text
    if name == "prompt-over-context":
        assert re.search(r"8192 tokens, but the prompt has \d{4,} tokens", error["message"])
    if status == 405:
        assert "allow" in r.headers


def test_oversized_chunked_body_is_413(api: Api) -> None:
    def chunks() -> Iterator[bytes]:  # no content-length: the limit is enforced while reading
        yield b'{"model": "mocker", "messages": [{"role": "user", "content": "'
        for _ in range(40):
            yield b"x" * 65536
        yield b'"}]}'

    r = httpx.post(f"{api.fe.url}{CHAT}", content=chunks(), timeout=30)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


def test_server_is_healthy_after_the_bad_inputs(api: Api, client: openai.OpenAI) -> None:
    """Runs after the table (file order): nothing it sent broke the server or leaked an engine request."""
    assert chat(client, max_tokens=3).choices[0].message.content
    assert httpx.get(f"{api.fe.url}/health").json()["models"] == {MODEL: 2}
    api.idle()


# -- availability --------------------------------------------------------------------------------------


async def test_registered_but_unreachable_worker_is_503(cluster: Cluster) -> None:
    from dynamo.mocker.config import DEFAULT_MODEL_PATH
    from dynamo.runtime import records
    from dynamo.runtime.discovery import create_discovery
    from dynamo.runtime.settings import RuntimeSettings

    fe = cluster.frontend()
    ns = cluster.env["DYN_NAMESPACE"]
    discovery = create_discovery(RuntimeSettings(discovery_backend="file", file_kv=str(cluster.kv_dir), namespace=ns))
    await discovery.start()
    try:  # a worker that registered, then became unreachable (its port is closed)
        iid = discovery.lease_id
        record = records.InstanceRecord(namespace=ns, component="backend", endpoint="generate", instance_id=iid,
                                        transport={"tcp": f"127.0.0.1:{free_port()}"})
        card = records.ModelCard(display_name="ghost", model_path=DEFAULT_MODEL_PATH, context_length=8192,
                                 kv_cache_block_size=16, namespace=ns, component="backend", endpoint="generate",
                                 instance_id=iid, engine="mocker")
        await discovery.put(records.instance_key(ns, "backend", "generate", iid), records.encode(record))
        await discovery.put(records.model_card_key(ns, "backend", "generate", iid), records.encode(card))
        await asyncio.to_thread(fe.wait_workers, "ghost", 1)
        body = {"model": "ghost", "messages": HI, "max_tokens": 2}
        for stream in (False, True):
            r = await asyncio.to_thread(httpx.post, f"{fe.url}{CHAT}", json={**body, "stream": stream}, timeout=30)
            assert r.status_code == 503, r.text
            assert int(r.headers["retry-after"]) >= 1
            assert r.json()["error"]["type"] == "service_unavailable_error"
            assert r.json()["error"]["code"] == "no_workers"
    finally:
        await discovery.aclose()


def test_worker_at_its_limit_is_503_overloaded(cluster: Cluster) -> None:
    worker = cluster.worker("--speedup-ratio", "1", "--engine-request-limit", "1")
    fe = cluster.frontend()
    cluster.wait_worker_ready(worker)
    fe.wait_workers(MODEL, 1)
    body = {"model": MODEL, "messages": HI, "max_tokens": 500, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{fe.url}{CHAT}", json=body, timeout=30) as busy:
        lines = busy.iter_lines()  # keep it: a dropped iterator closes the connection
        next(lines)
        r = httpx.post(f"{fe.url}{CHAT}", json={"model": MODEL, "messages": HI, "max_tokens": 2}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert r.json()["error"]["code"] == "overloaded"


# -- disconnects -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("stream", "leave_after", "extra"), [
    (True, 1.0, {}), (False, 1.0, {}), (False, 3.0, {}), (True, 3.0, {"n": 2, "logprobs": True}),
], ids=["stream-before-first-token", "unary-during-prefill", "unary-during-decode", "stream-n2-mid-stream"])
def test_client_gone_cancels_the_engine_request(cluster: Cluster, stream: bool, leave_after: float,
                                                extra: dict) -> None:
    # at 1/100 speed the prompt takes ~1.7 s to prefill and each token ~0.6 s
    worker = cluster.worker("--speedup-ratio", "0.01")
    fe = cluster.frontend()
    cluster.wait_worker_ready(worker)
    fe.wait_workers(MODEL, 1)
    body = {"model": MODEL, "messages": HI, "max_tokens": 100, "ignore_eos": True, "stream": stream, **extra}
    engine_requests = body.get("n", 1)
    left: list[str] = []

    def request() -> None:  # leaves after ``leave_after`` s: by read timeout before any byte, else by closing
        started = time.monotonic()
        try:
            with httpx.stream("POST", f"{fe.url}{CHAT}", json=body, timeout=httpx.Timeout(30, read=leave_after)) as r:
                for _ in r.iter_bytes():
                    if time.monotonic() - started > leave_after:
                        left.append("mid-stream")
                        return
        except httpx.ReadTimeout:
            left.append("before any byte")

    thread = threading.Thread(target=request)
    thread.start()
    deadline = time.monotonic() + 5
    while worker.health()["active_requests"] != engine_requests:
        assert time.monotonic() < deadline, "the request never reached the engine"
        time.sleep(0.02)
    thread.join(30)
    assert left == ["mid-stream" if "n" in extra else "before any byte"]
    deadline = time.monotonic() + 5
    while worker.health()["active_requests"] != 0:
        assert time.monotonic() < deadline, "the engine request was not cancelled"
        time.sleep(0.05)
    kind = "stream" if stream else "unary"
    deadline = time.monotonic() + 5
    while f'dynamo_frontend_model_cancellation_total{{endpoint="chat_completions",model="mocker",' \
          f'request_type="{kind}"}} 1.0' not in httpx.get(f"{fe.url}/metrics").text:
        assert time.monotonic() < deadline, "the cancellation was not counted"
        time.sleep(0.05)
    assert "outcome=cancelled" in fe.log()


# -- API key -----------------------------------------------------------------------------------------


def test_api_key(api: Api) -> None:
    url = api.secured.url
    body = {"model": MODEL, "messages": HI, "max_tokens": 2}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.post(f"{url}{CHAT}", json=body, headers=headers, timeout=30)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "invalid_api_key" and r.json()["error"]["type"] == "invalid_request_error"
    assert httpx.get(f"{url}/v1/models").status_code == 401
    for open_path in ("/health", "/live", "/metrics"):
        assert httpx.get(f"{url}{open_path}").status_code == 200
    good = openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=30)
    assert chat(good, max_tokens=2).choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        chat(openai.OpenAI(base_url=f"{url}/v1", api_key="nope", max_retries=0), max_tokens=2)


def test_api_key_from_env_reaches_every_http_worker(cluster: Cluster) -> None:
    worker = cluster.worker("--speedup-ratio", "1000")
    fe = cluster.frontend("--http-workers", "2", env={"DYN_API_KEY": KEY})
    cluster.wait_worker_ready(worker)
    for _ in range(10):  # each check is a new connection, so each process gets asked
        fe.wait_workers(MODEL, 1)
    good = openai.OpenAI(base_url=f"{fe.url}/v1", api_key=KEY, max_retries=0, timeout=30)
    for _ in range(6):  # new connections: the kernel spreads them over both processes
        assert chat(good, max_tokens=2).choices[0].message.content
        good = openai.OpenAI(base_url=f"{fe.url}/v1", api_key=KEY, max_retries=0, timeout=30)
    assert httpx.get(f"{fe.url}/v1/models").status_code == 401


# -- observability -----------------------------------------------------------------------------------


def _metric(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{want}}} not in /metrics")


def test_frontend_metrics(api: Api, client: openai.OpenAI) -> None:
    chat(client, max_tokens=4, extra_body={"ignore_eos": True})
    list(chat(client, max_tokens=4, stream=True, extra_body={"ignore_eos": True}))
    text = httpx.get(f"{api.fe.url}/metrics").text
    assert httpx.get(f"{api.fe.url}/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
    for kind in ("unary", "stream"):
        assert _metric(text, "dynamo_frontend_requests_total", endpoint="chat_completions", model=MODEL,
                       request_type=kind, status="success") >= 1
    assert _metric(text, "dynamo_frontend_inflight_requests", model=MODEL) == 0
    assert _metric(text, "dynamo_frontend_model_workers", model=MODEL) == 2
    for hist in ("time_to_first_token_seconds", "inter_token_latency_seconds", "request_duration_seconds",
                 "input_sequence_tokens", "output_sequence_tokens"):
        assert _metric(text, f"dynamo_frontend_{hist}_count", model=MODEL) >= 2
        assert f'dynamo_frontend_{hist}_bucket{{le="+Inf",model="{MODEL}"}}' in text
    assert "# TYPE dynamo_frontend_model_cancellation_total counter" in text
    r = httpx.post(f"{api.fe.url}{COMPLETIONS}", json={"model": MODEL, "prompt": [1, 10**6]}, timeout=30)
    assert r.status_code == 400  # refused once the model was known: counted as an error
    text = httpx.get(f"{api.fe.url}/metrics").text
    assert _metric(text, "dynamo_frontend_requests_total", endpoint="completions", model=MODEL,
                   request_type="unary", status="error") >= 1


def test_worker_metrics(api: Api) -> None:
    worker = api.workers[0]
    text = httpx.get(f"http://127.0.0.1:{worker.system_port}/metrics").text
    labels = dict(dynamo_component="backend", dynamo_endpoint="generate",
                  dynamo_namespace=api.cluster.env["DYN_NAMESPACE"])
    assert _metric(text, "dynamo_component_requests_total", **labels) >= 1
    assert _metric(text, "dynamo_component_inflight_requests", **labels) == 0
    assert _metric(text, "dynamo_component_kvstats_total_blocks", **labels) > 0
    assert "# TYPE dynamo_component_system_uptime_seconds gauge" in text


def test_one_log_line_per_request_with_the_id_on_both_sides(api: Api, client: openai.OpenAI) -> None:
    r = chat(client, max_tokens=3, user="log-test-user", extra_body={"ignore_eos": True})
    deadline = time.monotonic() + 5
    while not (lines := [line for line in api.fe.log().splitlines() if f"request {r.id} " in line]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [line] = lines
    for part in (f"model={MODEL}", "status=200", "outcome=success", "completion_tokens=3",
                 f"prompt_tokens={r.usage.prompt_tokens}", "ttft_ms=", "duration_ms=", "user='log-test-user'"):
        assert part in line, line
    worker_id = re.search(r"worker=([0-9a-f]+)", line).group(1)  # type: ignore[union-attr]
    served = [w for w in api.workers if w.health()["instance_id"] == worker_id]
    assert len(served) == 1 and r.id in served[0].log()


# -- fuzzing -----------------------------------------------------------------------------------------


def _bounded(body: Any) -> None:
    """Keep generated requests cheap: the fuzzer's job is bad input, not a million tokens."""
    if not isinstance(body, dict):
        return
    for key in ("max_tokens", "max_completion_tokens", "min_tokens"):
        if isinstance(body.get(key), int) and body[key] > 32:
            body[key] = 32
    if isinstance(body.get("n"), int) and body["n"] > 3:
        body["n"] = 3
    if isinstance(body.get("prompt"), list) and len(body["prompt"]) > 3:
        body["prompt"] = body["prompt"][:3]
    if body.get("ignore_eos") is True and not isinstance(body.get("max_tokens"), int):
        body["max_tokens"] = 16


def _servable(body: Any) -> None:
    """Steer a schema-valid body past the cross-field rules (the unit tests cover those), so that
    most positive cases reach an engine and exercise the whole pipeline."""
    if not isinstance(body, dict):
        return
    body["model"] = MODEL
    for key in ("logit_bias", "suffix", "best_of", "min_tokens"):
        body.pop(key, None)
    if body.get("stream") is not True:
        body.pop("stream_options", None)
    if isinstance(body.get("response_format"), dict):
        body["response_format"] = {"type": "text"}
    if "messages" in body:
        if body.get("logprobs") is not True:
            body.pop("top_logprobs", None)
        if not body.get("tools"):
            body.pop("tool_choice", None)
        elif body.get("tool_choice") not in (None, "auto", "none"):
            body["tool_choice"] = "auto"
        if isinstance(body.get("chat_template_kwargs"), dict):
            for reserved in ("messages", "tools", "add_generation_prompt"):
                body["chat_template_kwargs"].pop(reserved, None)
        for m in body["messages"] if isinstance(body["messages"], list) else []:
            if isinstance(m, dict):
                if m.get("role") != "assistant":
                    m.pop("tool_calls", None)
                if m.get("role") == "tool" and m.get("tool_call_id") is None:
                    m["tool_call_id"] = "call_1"
                if m.get("content") is None and not m.get("tool_calls"):
                    m["content"] = "hi"
    elif body.get("echo") and body.get("logprobs") is not None:
        body["echo"] = False


def _fuzz(operation: Any, positive: bool, base_url: str, failures: list[str]) -> None:
    """Send ``EXAMPLES`` generated requests for ``operation``; record any 5xx."""
    import hypothesis
    from schemathesis import GenerationMode

    mode = GenerationMode.POSITIVE if positive else GenerationMode.NEGATIVE

    @hypothesis.settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck), phases=[hypothesis.Phase.generate])
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def run(case: Any) -> None:
        if positive:
            _servable(case.body)
        _bounded(case.body)
        response = case.call(base_url=base_url, timeout=30)
        if response.status_code >= 500:
            failures.append(f"{response.status_code} {response.text[:300]}\n  {case.as_curl_command()}")

    run()


#: generated requests per operation and mode (positive: valid by the schema; negative: not)
EXAMPLES = 75


def test_fuzz_openapi_schema_finds_no_5xx(api: Api) -> None:
    import schemathesis

    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{api.fe.url}/openapi.json")
    failures: list[str] = []
    for path in (CHAT, COMPLETIONS):
        for positive in (True, False):
            _fuzz(schema[path]["POST"], positive, api.fe.url, failures)
    assert not failures, "\n".join(failures[:5])
    assert time.monotonic() - started < 60
    api.idle()
