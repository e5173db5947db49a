"""OpenAI request models (validated once per request, never per token).

Every field is either honoured or refused: unknown fields are a 400 naming them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from dynamo.plugin.errors import InvalidRequest


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None

    def as_template_dict(self) -> dict[str, Any]:
        content: Any = self.content
        if isinstance(content, list):  # templates see plain text; parts are joined
            content = "".join(p.text for p in content)
        msg: dict[str, Any] = {"role": self.role, "content": content if content is not None else ""}
        if self.name is not None:
            msg["name"] = self.name
        if self.tool_call_id is not None:
            msg["tool_call_id"] = self.tool_call_id
        return msg


class StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, description="extension: sample among the k most likely tokens")
    min_p: float | None = Field(None, ge=0, le=1, description="extension")
    seed: int | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    repetition_penalty: float | None = Field(None, gt=0, le=2, description="extension")
    n: int = Field(1, ge=1, le=1, description="only n=1 is supported")
    stop: str | Annotated[list[str], Field(max_length=16)] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    ignore_eos: bool = Field(False, description="extension: keep generating past EOS")
    min_tokens: int | None = Field(None, ge=0, description="extension")
    stop_token_ids: list[int] | None = Field(None, description="extension: token ids that end generation")

    def stop_strings(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: Literal[False] | None = Field(None, description="log-probabilities are not supported yet")

    def effective_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[int], Field(min_length=1)] | Annotated[list[str], Field(min_length=1, max_length=1)]
    echo: bool = False
    logprobs: None = Field(None, description="log-probabilities are not supported yet")

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v: Any) -> Any:
        if isinstance(v, str) and not v:
            raise ValueError("prompt must not be empty")
        return v

    def effective_max_tokens(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else 16  # OpenAI's completions default


def _describe(error: dict[str, Any]) -> tuple[str, str]:
    loc = [str(p) for p in error.get("loc", ()) if not str(p).startswith(("function-", "constrained-"))]
    # union members show up as loc parts like "str" / "list[int]": keep only field names and indices
    parts = [p for p in loc if not any(ch in p for ch in "[]") and p not in ("str", "int", "float", "bool")]
    param = ".".join(parts) or "body"
    if error.get("type") == "extra_forbidden":
        return param, f"unsupported field {param!r}"
    if error.get("type") == "missing":
        return param, f"{param!r} is required"
    msg = str(error.get("msg", "invalid value"))
    return param, f"invalid value for {param!r}: {msg}"


def parse(model: type[_Sampling], body: bytes) -> Any:
    """Validate a JSON body; raise ``InvalidRequest`` naming the offending field."""
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors and errors[0].get("type") in ("json_invalid", "json_type"):
            raise InvalidRequest(f"request body is not valid JSON: {errors[0].get('msg')}", param="body") from None
        if errors and errors[0].get("type") == "model_type":
            raise InvalidRequest("request body must be a JSON object", param="body") from None
        param, message = _describe(errors[0]) if errors else ("body", "invalid request")
        raise InvalidRequest(message, param=param) from None
