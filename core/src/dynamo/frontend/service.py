"""Serving one OpenAI request: preprocess, route, stream, postprocess.

The per-token loop (``_text_stream``) touches only the decoded ``Delta``, the detokenizer and a
pre-built byte template for the SSE chunk; no models or dicts are built per token.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import orjson

from dynamo.frontend.errors import sse_error
from dynamo.frontend.models import ModelEntry, ModelRegistry
from dynamo.frontend.postprocess import Detokenizer, StopMatcher
from dynamo.frontend.protocol import ChatCompletionRequest, CompletionRequest, _Sampling
from dynamo.plugin.errors import InvalidRequest
from dynamo.plugin.types import (
    FinishReason, GenerateRequest, SamplingOptions, StopConditions, Usage,
)
from dynamo.router.push import PushRouter

log = logging.getLogger(__name__)

_OPENAI_FINISH = {
    FinishReason.EOS: "stop",
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "stop",
    FinishReason.ERROR: "error",
}
DONE = b"data: [DONE]\n\n"


@dataclass
class Outcome:
    """What a finished stream produced, for the final chunk / response."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0


class Service:
    def __init__(self, registry: ModelRegistry, push: PushRouter) -> None:
        self.registry = registry
        self.push = push

    # -- preprocessing -----------------------------------------------------------------------------
    def _build(self, entry: ModelEntry, req: _Sampling, token_ids: list[int], max_tokens: int | None,
               request_id: str) -> GenerateRequest:
        ctx = entry.card.context_length
        prompt_len = len(token_ids)
        if prompt_len == 0:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if prompt_len >= ctx:
            raise InvalidRequest(
                f"this model's maximum context length is {ctx} tokens, but the prompt has {prompt_len} tokens",
                param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
            )
        if max_tokens is not None and prompt_len + max_tokens > ctx:
            raise InvalidRequest(
                f"this model's maximum context length is {ctx} tokens; you requested {prompt_len + max_tokens} "
                f"tokens ({prompt_len} in the prompt, {max_tokens} for the completion)",
                param="max_tokens",
            )
        pre = entry.ready_preprocessor()
        return GenerateRequest(
            request_id=request_id,
            token_ids=token_ids,
            model=entry.name,
            sampling=SamplingOptions(
                temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p, seed=req.seed,
                presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
                repetition_penalty=req.repetition_penalty,
            ),
            stop=StopConditions(
                max_tokens=max_tokens, min_tokens=req.min_tokens, stop_token_ids=req.stop_token_ids or [],
                ignore_eos=req.ignore_eos,
            ),
            eos_token_ids=pre.eos_token_ids,
        )

    def prepare_chat(self, req: ChatCompletionRequest) -> tuple[ModelEntry, GenerateRequest]:
        entry = self.registry.get(req.model)
        pre = entry.ready_preprocessor()
        prompt = pre.render_chat([m.as_template_dict() for m in req.messages])
        token_ids = pre.encode(prompt)
        rid = f"chatcmpl-{uuid.uuid4().hex}"
        return entry, self._build(entry, req, token_ids, req.effective_max_tokens(), rid)

    def prepare_completion(self, req: CompletionRequest) -> tuple[ModelEntry, GenerateRequest]:
        entry = self.registry.get(req.model)
        pre = entry.ready_preprocessor()
        prompt = req.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
            prompt = prompt[0]
        if isinstance(prompt, str):
            token_ids = pre.encode_prompt(prompt)
        else:
            vocab = pre.tokenizer.get_vocab_size(with_added_tokens=True)
            if any(t < 0 or t >= vocab for t in prompt):  # type: ignore[operator]
                raise InvalidRequest(f"prompt token ids must be in [0, {vocab})", param="prompt")
            token_ids = list(prompt)  # type: ignore[arg-type]
        rid = f"cmpl-{uuid.uuid4().hex}"
        return entry, self._build(entry, req, token_ids, req.effective_max_tokens(), rid)

    # -- the token loop ----------------------------------------------------------------------------
    async def _text_stream(self, entry: ModelEntry, gen: GenerateRequest, stops: list[str],
                           outcome: Outcome) -> AsyncIterator[str]:
        """Yield text pieces; fill ``outcome`` when the stream ends."""
        detok = Detokenizer(entry.ready_preprocessor().tokenizer)
        feed = detok.feed
        matcher = StopMatcher(stops) if stops else None
        usage: Usage | None = None
        stream = self.push.generate(entry.name, entry.router, entry.worker_list, gen)
        async with contextlib.aclosing(stream):
            async for delta in stream:
                ids = delta.token_ids
                if ids:
                    outcome.completion_tokens += len(ids)
                    text = feed(ids)
                    if matcher is not None:
                        text, stopped = matcher.feed(text)
                        if stopped:
                            if text:
                                yield text
                            outcome.finish_reason = "stop"
                            return  # closing the stream cancels the engine request
                    if text:
                        yield text
                if delta.finish_reason is not None:
                    outcome.finish_reason = _OPENAI_FINISH.get(delta.finish_reason, "stop")
                    usage = delta.usage
                    break
        if matcher is not None:
            tail = matcher.flush()
            if tail:
                yield tail
        if usage is not None:
            outcome.cached_tokens = usage.cached_tokens
            outcome.completion_tokens = max(outcome.completion_tokens, usage.completion_tokens)
        if outcome.finish_reason is None:
            outcome.finish_reason = "stop"

    @staticmethod
    def usage_dict(prompt_tokens: int, outcome: Outcome) -> dict:
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": outcome.completion_tokens,
            "total_tokens": prompt_tokens + outcome.completion_tokens,
        }
        usage["prompt_tokens_details"] = {"cached_tokens": outcome.cached_tokens}
        return usage

    # -- non-streaming -----------------------------------------------------------------------------
    async def complete(self, entry: ModelEntry, gen: GenerateRequest, stops: list[str]) -> Outcome:
        outcome = Outcome()
        pieces = [piece async for piece in self._text_stream(entry, gen, stops, outcome)]
        outcome.text = "".join(pieces)
        return outcome

    def chat_response(self, entry: ModelEntry, gen: GenerateRequest, outcome: Outcome) -> bytes:
        return orjson.dumps({
            "id": gen.request_id, "object": "chat.completion", "created": int(time.time()), "model": entry.name,
            "choices": [{
                "index": 0, "message": {"role": "assistant", "content": outcome.text},
                "logprobs": None, "finish_reason": outcome.finish_reason,
            }],
            "usage": self.usage_dict(len(gen.token_ids), outcome),
        })

    def completion_response(self, entry: ModelEntry, gen: GenerateRequest, outcome: Outcome, prefix: str) -> bytes:
        return orjson.dumps({
            "id": gen.request_id, "object": "text_completion", "created": int(time.time()), "model": entry.name,
            "choices": [{"index": 0, "text": prefix + outcome.text, "logprobs": None,
                         "finish_reason": outcome.finish_reason}],
            "usage": self.usage_dict(len(gen.token_ids), outcome),
        })

    # -- streaming ---------------------------------------------------------------------------------
    async def sse(self, entry: ModelEntry, gen: GenerateRequest, stops: list[str], include_usage: bool,
                  chat: bool, echo: str = "") -> AsyncIterator[bytes]:
        """SSE chunks of a chat or text completion, ending with ``[DONE]``.

        The first item is produced only once the first text arrives, so errors before the first
        token (no worker, invalid request) reach the caller as exceptions, i.e. HTTP errors.
        """
        outcome = Outcome()
        texts = self._text_stream(entry, gen, stops, outcome)
        async with contextlib.aclosing(texts):
            first: str | None
            try:
                first = await anext(texts)
            except StopAsyncIteration:
                first = None
            head = orjson.dumps({
                "id": gen.request_id, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": entry.name,
            })[:-1]  # '{"id":...,"model":"m"' : every chunk starts with it
            dumps = orjson.dumps
            if chat:
                prefix = b"data: " + head + b',"choices":[{"index":0,"delta":{"content":'
                suffix = b'},"logprobs":null,"finish_reason":null}]}\n\n'
                final = b"data: " + head + b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":'
                yield (b"data: " + head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                       b'"logprobs":null,"finish_reason":null}]}\n\n')
            else:
                prefix = b"data: " + head + b',"choices":[{"index":0,"text":'
                suffix = b',"logprobs":null,"finish_reason":null}]}\n\n'
                final = b"data: " + head + b',"choices":[{"index":0,"text":"","logprobs":null,"finish_reason":'
                if echo:
                    yield prefix + dumps(echo) + suffix
            if first is not None:
                yield prefix + dumps(first) + suffix
                try:
                    async for text in texts:
                        yield prefix + dumps(text) + suffix
                except Exception as exc:
                    yield sse_error(exc)
                    yield DONE
                    return
        yield final + dumps(outcome.finish_reason) + b"}]}\n\n"
        if include_usage:
            yield b"data: " + head + b',"choices":[],"usage":' \
                + dumps(self.usage_dict(len(gen.token_ids), outcome)) + b"}\n\n"
        yield DONE


def echo_text(entry: ModelEntry, req: CompletionRequest, gen: GenerateRequest) -> str:
    if not req.echo:
        return ""
    if isinstance(req.prompt, str):
        return req.prompt
    if req.prompt and isinstance(req.prompt[0], str):
        return str(req.prompt[0])
    return entry.ready_preprocessor().decode(gen.token_ids)
