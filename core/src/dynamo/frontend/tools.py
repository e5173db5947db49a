"""Tool calls in model output, in the hermes format (Qwen, Hermes, many fine-tunes)::

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

``ToolCallStream`` works on a stream of text pieces: it holds back text that may be the start of
``<tool_call>``, buffers a call until its closing tag, and hands back each call once complete.
``parse_tool_calls`` is the same on a whole response. Text between the tags that is not a JSON
object with a ``name`` stays content, unchanged: a parser must never eat what the model said.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

START = "<tool_call>"
END = "</tool_call>"


@dataclass(frozen=True)
class ParsedToolCall:
    name: str
    #: the arguments as JSON text (what OpenAI's ``function.arguments`` carries)
    arguments: str
    id: str = field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")

    def as_openai(self, index: int | None = None) -> dict:
        function = {"name": self.name, "arguments": self.arguments}
        call: dict = {"id": self.id, "type": "function", "function": function}
        if index is not None:
            call = {"index": index, **call}
        return call


def decode_call(body: str) -> ParsedToolCall | None:
    """One call from the JSON between the tags, or ``None`` when it is not a call."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str) or not obj["name"]:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if not isinstance(args, str):
        args = json.dumps(args, ensure_ascii=False)
    return ParsedToolCall(obj["name"], args)


def _partial_start(text: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``<tool_call>``."""
    for n in range(min(len(START) - 1, len(text)), 0, -1):
        if START.startswith(text[-n:]):
            return n
    return 0


class ToolCallStream:
    """Splits streamed text into content and complete tool calls."""

    __slots__ = ("_buf", "_inside", "_seen", "_space")

    def __init__(self) -> None:
        self._buf = ""
        self._inside = False
        self._seen = False
        self._space = ""  # whitespace after a call: dropped if another call follows, kept before text

    def feed(self, text: str) -> tuple[str, list[ParsedToolCall]]:
        """Add ``text``; return ``(content safe to emit, calls completed)``."""
        buf = self._buf + text
        out: list[str] = []
        calls: list[ParsedToolCall] = []
        while True:
            if not self._inside:
                i = buf.find(START)
                if i == -1:
                    hold = _partial_start(buf)
                    out.append(buf[: len(buf) - hold])
                    buf = buf[len(buf) - hold :]
                    break
                out.append(buf[:i])
                buf = buf[i + len(START) :]
                self._inside = True
            else:
                j = buf.find(END)
                if j == -1:
                    break
                call = decode_call(buf[:j].strip())
                if call is None:
                    out.append(START + buf[: j + len(END)])
                else:
                    calls.append(call)
                buf = buf[j + len(END) :]
                self._inside = False
        self._buf = buf
        if calls:
            self._seen, self._space = True, ""
        return self._content(out), calls

    def flush(self) -> tuple[str, list[ParsedToolCall]]:
        """The end of the stream: what was held back, or a call whose closing tag never came."""
        buf, self._buf = self._buf, ""
        if not self._inside:
            text = self._content([buf])
            self._space = ""
            return text, []
        self._inside = False
        call = decode_call(buf.strip())  # a model may stop right before the closing tag
        if call is not None:
            self._seen = True
            return "", [call]
        return START + buf, []

    def _content(self, pieces: list[str]) -> str:
        text = "".join(pieces)
        if not self._seen:
            return text
        # once the model is calling tools, the newlines between calls are not content
        text = self._space + text
        if text.strip():
            self._space = ""
            return text
        self._space = text
        return ""


def parse_tool_calls(text: str) -> tuple[str | None, list[ParsedToolCall]]:
    """``(content or None, calls)`` of a whole response."""
    stream = ToolCallStream()
    content, calls = stream.feed(text)
    tail, more = stream.flush()
    calls += more
    content += tail
    if calls:
        content = content.strip()
    return (content or None) if calls else content, calls
