"""The serving pipeline against a scripted engine stream: what the mocker cannot produce
(tool calls in the output, errors at chosen points) and the exact chunk shapes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from dynamo.frontend.metrics import FrontendMetrics
from dynamo.frontend.models import ModelEntry
from dynamo.frontend.preprocess import load_preprocessor
from dynamo.frontend.protocol import ChatCompletionRequest, CompletionRequest, parse
from dynamo.frontend.service import Service
from dynamo.mocker.config import DEFAULT_MODEL_PATH
from dynamo.plugin.errors import InvalidRequest, NoWorkersAvailable, WorkerLost
from dynamo.plugin.types import Delta, FinishReason, GenerateRequest, Usage
from dynamo.runtime.records import ModelCard

Script = Callable[[GenerateRequest], list[Any]]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL_TEXT = 'Checking.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


class ScriptedPush:
    """Stands in for the PushRouter: each request streams what ``script`` says."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[GenerateRequest] = []

    async def generate(self, model: str, router: object, workers: object, request: GenerateRequest,
                       on_worker: Callable[..., None] | None = None) -> AsyncIterator[Delta]:
        self.requests.append(request)
        for item in self.script(request):
            if isinstance(item, BaseException):
                raise item
            yield item


def text_deltas(text: str, finish: FinishReason = FinishReason.EOS, logprobs: bool = False) -> Script:
    pre = load_preprocessor(DEFAULT_MODEL_PATH)
    ids = pre.encode(text)

    def script(request: GenerateRequest) -> list[Any]:
        k = request.output.logprobs
        out: list[Any] = [
            Delta([t], logprobs=[-0.5], top_logprobs=[{t: -0.5, 7: -1.5}] if k else None) if logprobs else Delta([t])
            for t in ids
        ]
        return [*out, Delta([], finish, Usage(prompt_tokens=len(request.token_ids), completion_tokens=len(ids)))]

    return script


@pytest.fixture(scope="module")
def entry() -> ModelEntry:
    card = ModelCard(display_name="m", model_path=DEFAULT_MODEL_PATH, context_length=8192, kv_cache_block_size=16,
                     namespace="t", component="backend", endpoint="generate", instance_id=1, engine="scripted",
                     response_formats=["json_object"])
    return ModelEntry("m", card, router=None, preprocessor=load_preprocessor(DEFAULT_MODEL_PATH))  # type: ignore[arg-type]


def chat(**fields: Any) -> ChatCompletionRequest:
    body = {"model": "m", "messages": [{"role": "user", "content": "weather in Paris?"}], **fields}
    return parse(ChatCompletionRequest, json.dumps(body).encode())


def service(script: Script) -> tuple[Service, ScriptedPush]:
    push = ScriptedPush(script)
    return Service(None, push), push  # type: ignore[arg-type]


async def sse_events(svc: Service, entry: ModelEntry, req: ChatCompletionRequest | CompletionRequest,
                     metrics: FrontendMetrics | None = None) -> list[Any]:
    chat_req = isinstance(req, ChatCompletionRequest)
    plan = svc.plan_chat(entry, req, "r1") if chat_req else svc.plan_completion(entry, req, "r1")  # type: ignore[arg-type]
    tracker = (metrics or FrontendMetrics()).track("r1", "m", "chat_completions", True)
    chunks = b"".join([c async for c in svc.sse(plan, tracker)]).decode()
    events = [e.removeprefix("data: ") for e in chunks.split("\n\n") if e]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def complete(svc: Service, entry: ModelEntry, req: ChatCompletionRequest) -> dict:
    plan = svc.plan_chat(entry, req, "r1")
    return json.loads(await svc.complete(plan, FrontendMetrics().track("r1", "m", "chat_completions", False)))


async def test_streamed_tool_call(entry: ModelEntry) -> None:
    svc, push = service(text_deltas(CALL_TEXT))
    events = await sse_events(svc, entry, chat(tools=[TOOL], stream=True))
    deltas = [e["choices"][0]["delta"] for e in events]
    assert deltas[0] == {"role": "assistant", "content": ""}
    assert "".join(d.get("content") or "" for d in deltas) == "Checking."
    [call] = [tc for d in deltas for tc in d.get("tool_calls", [])]
    assert call["index"] == 0 and call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert [e["choices"][0]["finish_reason"] for e in events if e["choices"][0]["finish_reason"]] == ["tool_calls"]
    prompt = load_preprocessor(DEFAULT_MODEL_PATH).decode(push.requests[0].token_ids)
    assert "get_weather" in prompt and "<tools>" in prompt  # the definitions reached the template


async def test_whole_tool_call(entry: ModelEntry) -> None:
    svc, _ = service(text_deltas(CALL_TEXT))
    body = await complete(svc, entry, chat(tools=[TOOL]))
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Checking."
    assert choice["message"]["tool_calls"][0]["function"]["name"] == "get_weather"


async def test_tool_calls_are_not_parsed_without_tools(entry: ModelEntry) -> None:
    svc, _ = service(text_deltas(CALL_TEXT))
    body = await complete(svc, entry, chat())
    assert body["choices"][0]["message"] == {"role": "assistant", "content": CALL_TEXT}
    assert body["choices"][0]["finish_reason"] == "stop"


async def test_logprobs_stream_and_whole(entry: ModelEntry) -> None:
    svc, push = service(text_deltas(" alpha beta gamma", logprobs=True))
    events = await sse_events(svc, entry, chat(stream=True, logprobs=True, top_logprobs=2))
    assert push.requests[0].output.logprobs == 2
    entries = [c for e in events if e["choices"][0]["logprobs"] for c in e["choices"][0]["logprobs"]["content"]]
    assert "".join(c["token"] for c in entries) == " alpha beta gamma"
    assert all(c["logprob"] == -0.5 and len(c["top_logprobs"]) == 2 for c in entries)
    assert entries[0]["bytes"] == list(entries[0]["token"].encode())
    body = await complete(svc, entry, chat(logprobs=True))
    content = body["choices"][0]["logprobs"]["content"]
    assert "".join(c["token"] for c in content) == " alpha beta gamma"
    assert all(c["top_logprobs"] == [] for c in content)


async def test_completion_logprobs_shape(entry: ModelEntry) -> None:
    svc, _ = service(text_deltas(" alpha beta", logprobs=True))
    req = parse(CompletionRequest, json.dumps({"model": "m", "prompt": "x", "logprobs": 1, "stream": True}).encode())
    events = await sse_events(svc, entry, req)
    lps = [e["choices"][0]["logprobs"] for e in events if e["choices"][0]["logprobs"]]
    tokens = [t for lp in lps for t in lp["tokens"]]
    offsets = [o for lp in lps for o in lp["text_offset"]]
    assert "".join(tokens) == " alpha beta"
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    assert all(set(top) >= {tok} for lp in lps for tok, top in zip(lp["tokens"], lp["top_logprobs"], strict=True))


async def test_n_choices_stream_with_distinct_seeds(entry: ModelEntry) -> None:
    svc, push = service(lambda r: text_deltas(f" choice {r.sampling.seed}")(r))
    events = await sse_events(svc, entry, chat(stream=True, n=3, seed=10, stream_options={"include_usage": True}))
    assert sorted(r.sampling.seed for r in push.requests) == [10, 11, 12]
    assert len({r.request_id for r in push.requests}) == 3
    texts = {i: "" for i in range(3)}
    finishes = []
    for e in events[:-1]:
        c = e["choices"][0]
        texts[c["index"]] += c["delta"].get("content") or ""
        if c["finish_reason"]:
            finishes.append(c["index"])
    assert {texts[i] for i in range(3)} == {" choice 10", " choice 11", " choice 12"}
    assert sorted(finishes) == [0, 1, 2]
    usage = events[-1]["usage"]
    assert usage["prompt_tokens"] == len(push.requests[0].token_ids)  # the prompt is counted once
    assert usage["completion_tokens"] == 3 * len(load_preprocessor(DEFAULT_MODEL_PATH).encode(" choice 10"))


async def test_error_mid_stream_is_an_error_event(entry: ModelEntry) -> None:
    ids = load_preprocessor(DEFAULT_MODEL_PATH).encode(" alpha beta")

    def script(request: GenerateRequest) -> list[Any]:
        return [*(Delta([t]) for t in ids), WorkerLost("the worker went away")]

    metrics = FrontendMetrics()
    svc, _ = service(script)
    events = await sse_events(svc, entry, chat(stream=True), metrics)
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1]) == " alpha beta"
    assert events[-1]["error"]["code"] == "worker_lost"
    assert events[-1]["error"]["type"] == "server_error"
    text = metrics.render().decode()
    assert 'dynamo_frontend_requests_total{endpoint="chat_completions",model="m",request_type="stream",' \
           'status="error"} 1.0' in text


async def test_error_before_first_token_raises(entry: ModelEntry) -> None:
    svc, _ = service(lambda r: [NoWorkersAvailable("nobody home", retry_after=1)])
    plan = svc.plan_chat(entry, chat(stream=True), "r1")
    stream = svc.sse(plan, FrontendMetrics().track("r1", "m", "chat_completions", True))
    with pytest.raises(NoWorkersAvailable):
        await stream.__anext__()


async def test_response_format_is_passed_only_when_declared(entry: ModelEntry) -> None:
    svc, push = service(text_deltas("{}"))
    await complete(svc, entry, chat(response_format={"type": "json_object"}))
    assert push.requests[0].extra == {"response_format": {"type": "json_object"}}
    with pytest.raises(InvalidRequest) as err:
        svc.plan_chat(entry, chat(response_format={"type": "json_schema", "json_schema": {"name": "x"}}), "r")
    assert err.value.param == "response_format" and "json_object" in err.value.message


async def test_metrics_observe_once_per_request(entry: ModelEntry) -> None:
    metrics = FrontendMetrics()
    svc, _ = service(text_deltas(" one two three four"))
    await sse_events(svc, entry, chat(stream=True), metrics)
    text = metrics.render().decode()
    assert 'dynamo_frontend_inter_token_latency_seconds_count{model="m"} 1.0' in text
    assert 'dynamo_frontend_time_to_first_token_seconds_count{model="m"} 1.0' in text
    assert 'dynamo_frontend_output_sequence_tokens_sum{model="m"} 4.0' in text
    assert 'dynamo_frontend_inflight_requests{model="m"} 0.0' in text
