"""Hermes tool-call parsing: whole responses, and streams split at every possible place."""

from __future__ import annotations

import json

import pytest

from dynamo.frontend.tools import ToolCallStream, decode_call, parse_tool_calls

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "C"}}\n</tool_call>'


def _stream(pieces: list[str]) -> tuple[str, list]:
    s = ToolCallStream()
    content, calls = [], []
    for piece in pieces:
        text, new = s.feed(piece)
        content.append(text)
        calls += new
    text, new = s.flush()
    return "".join(content) + text, calls + new


def test_one_call_no_content() -> None:
    content, calls = parse_tool_calls(CALL)
    assert content is None
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("get_weather", {"city": "Paris", "unit": "C"})]
    assert calls[0].id.startswith("call_")


def test_content_before_and_two_calls() -> None:
    text = "Let me check.\n" + CALL + "\n" + CALL.replace("Paris", "Oslo")
    content, calls = parse_tool_calls(text)
    assert content == "Let me check."
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Oslo"]
    assert calls[0].id != calls[1].id


def test_plain_text_is_untouched() -> None:
    assert parse_tool_calls("no tools here <tool") == ("no tools here <tool", [])


@pytest.mark.parametrize("body", ["not json", '["a list"]', '{"arguments": {}}', '{"name": ""}'])
def test_invalid_call_stays_content(body: str) -> None:
    text = f"before <tool_call>{body}</tool_call> after"
    assert parse_tool_calls(text) == (text, [])


def test_arguments_given_as_string_pass_through() -> None:
    call = decode_call('{"name": "f", "arguments": "{\\"x\\": 1}"}')
    assert call is not None and call.arguments == '{"x": 1}'


def test_parameters_is_accepted_as_arguments() -> None:
    call = decode_call('{"name": "f", "parameters": {"x": 1}}')
    assert call is not None and json.loads(call.arguments) == {"x": 1}


def test_unterminated_call_at_end_of_stream() -> None:
    content, calls = parse_tool_calls('<tool_call>{"name": "f", "arguments": {}}')
    assert content is None and [c.name for c in calls] == ["f"]
    cut = '<tool_call>{"name": "f", "argu'  # max_tokens hit mid-call: the text is kept
    assert parse_tool_calls(cut) == (cut, [])


@pytest.mark.parametrize("size", [1, 2, 3, 5, 7, 11])
def test_any_split_gives_the_same_result(size: int) -> None:
    text = "Sure!" + CALL + "\n" + CALL + " done"
    pieces = [text[i:i + size] for i in range(0, len(text), size)]
    content, calls = _stream(pieces)
    assert content == "Sure! done"
    assert [c.name for c in calls] == ["get_weather", "get_weather"]


def test_stream_holds_back_only_a_possible_start_tag() -> None:
    s = ToolCallStream()
    assert s.feed("Hello <tool") == ("Hello ", [])
    assert s.feed("box>") == ("<toolbox>", [])
    assert s.feed("<") == ("", [])
    assert s.flush() == ("<", [])


def test_call_is_emitted_as_soon_as_it_closes() -> None:
    s = ToolCallStream()
    assert s.feed('<tool_call>{"name": "f", ') == ("", [])
    text, calls = s.feed('"arguments": {}}</tool_call>')
    assert text == "" and [c.name for c in calls] == ["f"]
    assert s.feed("\n") == ("", [])  # whitespace between calls is not content


def test_openai_shape() -> None:
    _, [call] = parse_tool_calls(CALL)
    assert call.as_openai(index=0) == {"index": 0, "id": call.id, "type": "function",
                                       "function": {"name": "get_weather", "arguments": call.arguments}}
