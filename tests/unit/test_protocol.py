"""Request validation: every refusal is an InvalidRequest that names the field, never a pydantic dump."""

from __future__ import annotations

import json
from typing import Any

import pytest

from dynamo.frontend.protocol import ChatCompletionRequest, CompletionRequest, parse
from dynamo.plugin.errors import InvalidRequest

MSGS = [{"role": "user", "content": "hi"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def chat(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "messages": MSGS, **fields}).encode()


def completion(**fields: Any) -> bytes:
    return json.dumps({"model": "m", "prompt": "hi", **fields}).encode()


BAD = [
    # (body, param, words in the message)
    (chat(max_tokens="10"), "max_tokens", "valid integer"),
    (chat(max_tokens=0), "max_tokens", "greater than or equal to 1"),
    (chat(max_tokens=2.5), "max_tokens", "valid integer"),
    (chat(temperature=2.5), "temperature", "less than or equal to 2"),
    (chat(temperature="hot"), "temperature", "valid number"),
    (chat(top_p=0), "top_p", "greater than 0"),
    (chat(n=0), "n", "greater than or equal to 1"),
    (chat(n=129), "n", "less than or equal to 128"),
    (chat(seed=2**64), "seed", "less than"),
    (chat(stream="yes"), "stream", "valid boolean"),
    (chat(presence_penalty=3), "presence_penalty", "less than or equal to 2"),
    (chat(stop=5), "stop", "valid string or a valid array"),
    (chat(top_logprobs=21, logprobs=True), "top_logprobs", "less than or equal to 20"),
    (chat(top_logprobs=2), "top_logprobs", "requires logprobs"),
    (chat(stream_options={"include_usage": True}), "stream_options", "only allowed when stream"),
    (chat(logit_bias={"50256": -100}), "logit_bias", "not supported"),
    (chat(metadata={"a": "b"}), "metadata", "unsupported field 'metadata'"),
    (chat(response_format={"type": "xml"}), "response_format.type", "'json_object'"),
    (chat(response_format={"type": "json_schema"}), "response_format.json_schema", "json_schema"),
    (chat(tool_choice="auto"), "tool_choice", "requires tools"),
    (chat(tools=[TOOL], tool_choice="required"), "tool_choice", "cannot be enforced"),
    (chat(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}}), "tool_choice",
     "cannot be enforced"),
    (chat(tools=[{"type": "function", "function": {"name": "bad name!"}}]), "tools.0.function.name", "pattern"),
    (chat(chat_template_kwargs={"messages": []}), "chat_template_kwargs", "may not set messages"),
    (chat(min_tokens=9, max_tokens=4), "min_tokens", "exceeds max_tokens"),
    (json.dumps({"model": "m"}).encode(), "messages", "'messages' is required"),
    (json.dumps({"messages": MSGS}).encode(), "model", "'model' is required"),
    (chat(model=""), "model", "at least 1 character"),
    (chat(messages=[]), "messages", "at least 1 item"),
    (chat(messages="hi"), "messages", "valid array"),
    (chat(messages=[{"role": "bot", "content": "x"}]), "messages.0.role", "'user'"),
    (chat(messages=[{"role": "user"}]), "messages.0.content", "needs 'content'"),
    (chat(messages=[{"role": "user", "content": 5}]), "messages.0.content", "valid string or a valid array"),
    (chat(messages=[{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages.0.content.0.type", "'text'"),
    (chat(messages=[{"role": "user", "content": "x", "foo": 1}]), "messages.0.foo", "unsupported field"),
    (chat(messages=[{"role": "tool", "content": "x"}]), "messages.0.tool_call_id", "needs 'tool_call_id'"),
    (chat(messages=[{"role": "user", "content": "x", "tool_calls": []}]), "messages.0.tool_calls", "assistant"),
    (completion(prompt=""), "prompt", "at least 1 character"),
    (completion(prompt=[]), "prompt", "at least 1 item"),
    (completion(prompt=[1, -1]), "prompt.1", "greater than or equal to 0"),
    (completion(prompt=5), "prompt", "valid string or a valid array"),
    (completion(suffix="!"), "suffix", "not supported"),
    (completion(best_of=3), "best_of", "not supported"),
    (completion(echo=True, logprobs=1), "echo", "not supported"),
    (completion(logprobs=True), "logprobs", "valid integer"),
    (completion(prompt=["a"] * 65, n=2), "n", "must not exceed 128"),
    (completion(min_tokens=17), "min_tokens", "exceeds max_tokens (16)"),  # completions default to 16
]


@pytest.mark.parametrize(("body", "param", "words"), BAD, ids=[f"{b[1]}:{b[2]}" for b in BAD])
def test_bad_fields_are_refused_naming_them(body: bytes, param: str, words: str) -> None:
    model = CompletionRequest if b'"prompt"' in body else ChatCompletionRequest
    with pytest.raises(InvalidRequest) as err:
        parse(model, body)
    assert err.value.param == param
    assert words in err.value.message
    assert "pydantic" not in err.value.message and "errors.pydantic.dev" not in err.value.message


@pytest.mark.parametrize("body", [b"", b"{", b"[]", b'{"model": "m"} x', b'{"model": "\xff"}', b'"just a string"'])
def test_bodies_that_are_not_a_json_object(body: bytes) -> None:
    with pytest.raises(InvalidRequest) as err:
        parse(ChatCompletionRequest, body)
    assert err.value.param == "body"


def test_unknown_fields_can_be_ignored() -> None:
    body = chat(metadata={"a": 1}, messages=[{"role": "user", "content": "hi", "cache_control": {}}])
    req = parse(ChatCompletionRequest, body, ignore_unknown=True)
    assert req.messages[0].content == "hi"
    with pytest.raises(InvalidRequest):
        parse(ChatCompletionRequest, body)


def test_supported_fields_parse() -> None:
    req = parse(ChatCompletionRequest, chat(
        max_completion_tokens=5, max_tokens=9, temperature=0.5, top_p=0.9, top_k=40, seed=-3, n=2,
        presence_penalty=0.1, frequency_penalty=-0.1, stop=["\n"], stream=True,
        stream_options={"include_usage": True}, user="u1", logprobs=True, top_logprobs=3, tools=[TOOL],
        tool_choice="auto", parallel_tool_calls=False, response_format={"type": "json_object"}, ignore_eos=True,
        min_tokens=2, logit_bias={}, chat_template_kwargs={"enable_thinking": False},
        messages=[
            {"role": "system", "content": "be brief"},
            {"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "P"}'}}]},
            {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        ],
    ))
    assert req.effective_max_tokens() == 5 and req.top_logprobs_count() == 3 and req.use_tools()
    assert req.include_usage() and req.stop_strings() == ["\n"]
    assert req.messages[1].as_template_dict()["content"] == "ab"
    assert req.messages[3].as_template_dict()["tool_calls"][0]["function"]["arguments"] == {"city": "P"}


def test_completion_prompt_forms() -> None:
    assert parse(CompletionRequest, completion(prompt="x")).prompts() == ["x"]
    assert parse(CompletionRequest, completion(prompt=["x", "y"])).prompts() == ["x", "y"]
    assert parse(CompletionRequest, completion(prompt=[1, 2])).prompts() == [[1, 2]]
    assert parse(CompletionRequest, completion(prompt=[[1], [2, 3]])).prompts() == [[1], [2, 3]]


def test_tool_choice_none_drops_tools() -> None:
    req = parse(ChatCompletionRequest, chat(tools=[TOOL], tool_choice="none"))
    assert not req.use_tools()
