"""OpenAI request models (validated once per request, never per token).

Every field is either honoured or refused. Fields not listed here are a 400 naming them (unless the
frontend runs with ``--ignore-unknown-fields``); fields listed here but only partly servable
(``logit_bias``, ``suffix``, ``best_of``, ``tool_choice: "required"``) are refused by ``check()``
with a 400 naming them. Typing is strict JSON: ``"10"`` is not an integer and ``1.5`` is not one
either. This module must never leak pydantic's internals into an error message.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dynamo.plugin.errors import InvalidRequest

#: upper bound of token counts and ids (they cross the request plane as 32-bit-friendly ints)
MAX_TOKENS = 2**31 - 1
INT64 = 2**63
#: the most engine requests one HTTP request may fan out to (``n`` x prompts)
MAX_CHOICES = 128
MAX_TOP_LOGPROBS = 20
#: chat template variables the frontend sets itself
RESERVED_TEMPLATE_VARIABLES = frozenset({"messages", "tools", "add_generation_prompt"})

TokenCount = Annotated[int, Field(ge=1, le=MAX_TOKENS)]
TokenId = Annotated[int, Field(ge=0, le=MAX_TOKENS)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True)


# -- messages ------------------------------------------------------------------------------------


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class FunctionCall(_Strict):
    name: str
    #: a JSON object encoded as a string, as OpenAI sends it
    arguments: str = "{}"


class ToolCall(_Strict):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None

    def text(self) -> str:
        content = self.content
        if isinstance(content, list):  # templates see plain text; parts are joined
            return "".join(p.text for p in content)
        return content or ""

    def as_template_dict(self) -> dict[str, Any]:
        msg: dict[str, Any] = {"role": self.role, "content": self.text()}
        if self.name is not None:
            msg["name"] = self.name
        if self.tool_call_id is not None:
            msg["tool_call_id"] = self.tool_call_id
        if self.tool_calls:
            msg["tool_calls"] = [_template_tool_call(c) for c in self.tool_calls]
        return msg


def _template_tool_call(call: ToolCall) -> dict[str, Any]:
    """Templates expect ``arguments`` as an object (vLLM and HF do the same decoding)."""
    arguments: Any = call.function.arguments
    try:
        arguments = json.loads(arguments)
    except ValueError:
        pass
    function = {"name": call.function.name, "arguments": arguments}
    return {"id": call.id, "type": call.type, "function": function}


# -- tools and structured output -----------------------------------------------------------------


class FunctionDefinition(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.:-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class ToolChoiceFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: ToolChoiceFunction


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


# -- requests ------------------------------------------------------------------------------------


class _Sampling(_Strict):
    model: str = Field(min_length=1)
    max_tokens: TokenCount | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=MAX_TOKENS, description="extension: the k likeliest tokens")
    min_p: float | None = Field(None, ge=0, le=1, description="extension")
    seed: int | None = Field(None, ge=-INT64, lt=INT64)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=2, description="extension")
    n: int = Field(1, ge=1, le=MAX_CHOICES, description="choices to generate (one engine request each)")
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=256, description="end-user id; written to the request log")
    logit_bias: dict[str, float] | None = Field(None, description="refused unless empty")
    ignore_eos: bool = Field(False, description="extension: keep generating past EOS")
    min_tokens: int | None = Field(None, ge=0, le=MAX_TOKENS, description="extension")
    stop_token_ids: Annotated[list[TokenId], Field(max_length=64)] | None = Field(
        None, description="extension: token ids that end generation"
    )

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    def check(self) -> None:
        """Cross-field rules the schema cannot express; raise ``InvalidRequest`` naming the field."""
        if self.logit_bias:
            raise InvalidRequest("logit_bias is not supported", param="logit_bias")
        if self.stream_options is not None and not self.stream:
            raise InvalidRequest("stream_options is only allowed when stream is true", param="stream_options")
        limit = self.effective_max_tokens()
        if self.min_tokens is not None and limit is not None and self.min_tokens > limit:
            raise InvalidRequest(f"min_tokens ({self.min_tokens}) exceeds max_tokens ({limit})",
                                 param="min_tokens")

    def effective_max_tokens(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: TokenCount | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    tools: Annotated[list[Tool], Field(max_length=128)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    chat_template_kwargs: dict[str, Any] | None = Field(None, description="extension: template variables")

    def effective_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def top_logprobs_count(self) -> int | None:
        """``OutputOptions.logprobs``: None when not asked for."""
        return (self.top_logprobs or 0) if self.logprobs else None

    def use_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    def check(self) -> None:
        super().check()
        if self.top_logprobs is not None and not self.logprobs:
            raise InvalidRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
        if self.tool_choice is not None and self.tool_choice != "none" and not self.tools:
            raise InvalidRequest("tool_choice requires tools", param="tool_choice")
        if self.tool_choice == "required" or isinstance(self.tool_choice, NamedToolChoice):
            raise InvalidRequest(
                "tool_choice 'required' or a named function cannot be enforced; use 'auto' or 'none'",
                param="tool_choice",
            )
        for i, msg in enumerate(self.messages):
            _check_message(i, msg)
        reserved = sorted(RESERVED_TEMPLATE_VARIABLES & set(self.chat_template_kwargs or ()))
        if reserved:
            raise InvalidRequest(f"chat_template_kwargs may not set {', '.join(reserved)}",
                                 param="chat_template_kwargs")
        fmt = self.response_format
        if fmt is not None and fmt.type == "json_schema" and fmt.json_schema is None:
            raise InvalidRequest("response_format json_schema needs a 'json_schema' object",
                                 param="response_format.json_schema")


def _check_message(i: int, msg: ChatMessage) -> None:
    where = f"messages.{i}"
    if msg.role == "tool" and msg.tool_call_id is None:
        raise InvalidRequest("a 'tool' message needs 'tool_call_id'", param=f"{where}.tool_call_id")
    if msg.tool_calls is not None and msg.role != "assistant":
        raise InvalidRequest("only 'assistant' messages may carry 'tool_calls'", param=f"{where}.tool_calls")
    if msg.content is None and not (msg.role == "assistant" and msg.tool_calls):
        raise InvalidRequest(f"a {msg.role!r} message needs 'content'", param=f"{where}.content")


PromptIds = Annotated[list[TokenId], Field(min_length=1)]


class CompletionRequest(_Sampling):
    prompt: (
        Annotated[str, Field(min_length=1)]
        | Annotated[list[Annotated[str, Field(min_length=1)]], Field(min_length=1, max_length=MAX_CHOICES)]
        | PromptIds
        | Annotated[list[PromptIds], Field(min_length=1, max_length=MAX_CHOICES)]
    )
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    suffix: str | None = Field(None, description="refused unless empty")
    best_of: int | None = Field(None, ge=1, le=MAX_CHOICES, description="accepted only when equal to n")

    def effective_max_tokens(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else 16  # OpenAI's completions default

    def prompts(self) -> list[str] | list[list[int]]:
        """The prompts as a list: strings, or token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [p]  # type: ignore[list-item]
        return p  # type: ignore[return-value]

    def top_logprobs_count(self) -> int | None:
        return self.logprobs

    def check(self) -> None:
        super().check()
        if self.suffix:
            raise InvalidRequest("suffix is not supported", param="suffix")
        if self.best_of is not None and self.best_of != self.n:
            raise InvalidRequest("best_of other than n is not supported", param="best_of")
        if self.echo and self.logprobs is not None:
            raise InvalidRequest("echo with logprobs (prompt log-probabilities) is not supported",
                                 param="echo")
        if len(self.prompts()) * self.n > MAX_CHOICES:
            raise InvalidRequest(f"prompts x n must not exceed {MAX_CHOICES}", param="n")


# -- parsing -------------------------------------------------------------------------------------

_TYPE_TAGS = {"str", "int", "float", "bool", "none", "dict", "list"}


def _clean_loc(loc: tuple[Any, ...]) -> tuple[str, ...]:
    """Field names and indices only: drop union-branch tags such as ``str`` or ``list[int]``."""
    parts = []
    for p in loc:
        s = str(p)
        if isinstance(p, str) and (s in _TYPE_TAGS or any(ch in s for ch in "[]-") and not s.isidentifier()):
            continue
        parts.append(s)
    return tuple(parts)


def _message(msg: str) -> str:
    msg = msg.removeprefix("Value error, ").replace(" after validation", "")
    return msg[:1].lower() + msg[1:]


def _is_type_error(kind: str) -> bool:
    """The input was not of this (union branch's) type at all, as opposed to a bad value of it."""
    return kind.endswith("_type") or kind in ("is_instance_of", "union_tag_invalid")


def describe(errors: list[Any]) -> tuple[str, str]:
    """``(param, message)`` for the most telling of pydantic's errors.

    A union reports one error per branch; a branch that failed on a value (too short, out of
    range, an unknown field) is the one the client meant, so value errors win over type errors.
    Among type errors at one place, the message lists what each branch expected.
    """
    if not errors:
        return "body", "invalid request"
    cleaned = [(_clean_loc(tuple(e.get("loc", ()))), e) for e in errors]
    values = [c for c in cleaned if not _is_type_error(str(c[1].get("type", "")))]
    loc, err = max(values or cleaned, key=lambda c: len(c[0]))  # the first of the deepest
    param = ".".join(loc) or "body"
    kind = err.get("type")
    if kind == "extra_forbidden":
        return param, f"unsupported field {param!r}"
    if kind == "missing":
        return param, f"{param!r} is required"
    if not values:
        expected = [_message(str(e.get("msg", ""))) for c, e in cleaned if c == loc]
        unique = list(dict.fromkeys(m.removeprefix("input should be ") for m in expected))
        if len(unique) > 1:
            return param, f"invalid value for {param!r}: should be " + " or ".join(unique)
    return param, f"invalid value for {param!r}: {_message(str(err.get('msg', 'invalid value')))}"


def parse(model: type[_Sampling], body: bytes, *, ignore_unknown: bool = False) -> Any:
    """Validate a JSON body; raise ``InvalidRequest`` naming the offending field."""
    try:
        req = model.model_validate_json(body, extra="ignore" if ignore_unknown else None)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False, include_context=False)
        first = errors[0].get("type") if errors else None
        if first in ("json_invalid", "json_type"):
            msg = str(errors[0].get("msg", "")).removeprefix("Invalid JSON: ")
            raise InvalidRequest(f"request body is not valid JSON: {msg}", param="body") from None
        if first == "model_type":
            raise InvalidRequest("request body must be a JSON object", param="body") from None
        param, message = describe(errors)
        raise InvalidRequest(message, param=param) from None
    req.check()
    return req
