"""Serving one OpenAI request: preprocess, route, stream, postprocess.

A request becomes a ``Plan``: one engine request (``Choice``) per OpenAI choice, i.e. ``n`` per
prompt. The per-token loop (``_text_stream``) touches only the decoded ``Delta``, the detokenizer
and, for the common case of one plain choice (``_sse_one``), a pre-built byte template per SSE
chunk: no models or dicts are built per token. Log-probabilities, tool-call parsing and ``n > 1``
take a richer path (``_sse_rich``) that builds each chunk as a small dict, paid only by requests
that ask for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any

import msgspec
import orjson

from dynamo.frontend.errors import classify, error_code, sse_error
from dynamo.frontend.logprobs import LogprobCollector
from dynamo.frontend.metrics import ERROR, SUCCESS, Tracker
from dynamo.frontend.models import ModelEntry, ModelRegistry
from dynamo.frontend.postprocess import Detokenizer, StopMatcher
from dynamo.frontend.protocol import ChatCompletionRequest, CompletionRequest, ResponseFormat, _Sampling
from dynamo.frontend.tools import ParsedToolCall, ToolCallStream, parse_tool_calls
from dynamo.plugin.errors import InvalidRequest
from dynamo.plugin.types import (
    FinishReason, GenerateRequest, OutputOptions, SamplingOptions, StopConditions, Usage,
)
from dynamo.router.push import PushRouter

_OPENAI_FINISH = {
    FinishReason.EOS: "stop",
    FinishReason.STOP: "stop",
    FinishReason.LENGTH: "length",
    FinishReason.CANCELLED: "stop",
    FinishReason.ERROR: "error",
}
DONE = b"data: [DONE]\n\n"
#: chunks a fast choice may run ahead of the client when ``n > 1`` streams are merged
_MERGE_BUFFER = 256


@dataclass(slots=True)
class Outcome:
    """What one choice's stream produced."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    cached_tokens: int = 0
    logprobs: LogprobCollector | None = None


@dataclass(slots=True)
class Choice:
    """One engine request: OpenAI choice ``index``, for prompt number ``prompt_index``."""

    index: int
    prompt_index: int
    gen: GenerateRequest
    echo: str = ""
    outcome: Outcome = field(default_factory=Outcome)


@dataclass(slots=True)
class Plan:
    entry: ModelEntry
    request_id: str
    chat: bool
    choices: list[Choice]
    stops: list[str]
    include_usage: bool
    prompt_tokens: int
    #: parse hermes tool calls out of the text (chat with tools, tool_choice not "none")
    tools: bool = False
    parallel_tool_calls: bool = True
    created: int = field(default_factory=lambda: int(time.time()))
    #: ``b'{"id":...,"model":"m"'``: every chunk and response starts with it
    head: bytes = b""

    @property
    def simple(self) -> bool:
        """One choice, no log-probabilities, no tool parsing: the byte-template fast path."""
        return len(self.choices) == 1 and self.choices[0].outcome.logprobs is None and not self.tools


def _wrap_seed(seed: int) -> int:
    return (seed + 2**63) % 2**64 - 2**63


class Service:
    def __init__(self, registry: ModelRegistry, push: PushRouter, tool_call_parser: str = "hermes") -> None:
        self.registry = registry
        self.push = push
        self.tool_call_parser = tool_call_parser

    # -- preprocessing -----------------------------------------------------------------------------
    def plan_chat(self, entry: ModelEntry, req: ChatCompletionRequest, request_id: str) -> Plan:
        pre = entry.ready_preprocessor()
        kwargs: dict[str, Any] = dict(req.chat_template_kwargs or {})
        tools = req.use_tools()
        if tools:
            if self.tool_call_parser == "none":
                raise InvalidRequest("tool calls are not parsed by this frontend (--tool-call-parser none)",
                                     param="tools")
            if not pre.supports_tools:
                raise InvalidRequest(f"the chat template of model {entry.name!r} does not render tools",
                                     param="tools")
            kwargs["tools"] = [t.model_dump(exclude_none=True) for t in req.tools or ()]
        prompt = pre.render_chat([m.as_template_dict() for m in req.messages], **kwargs)
        extra = _response_format(entry, req.response_format)
        plan = self._plan(entry, req, request_id, [pre.encode(prompt)], chat=True, extra=extra)
        plan.tools = tools
        plan.parallel_tool_calls = req.parallel_tool_calls is not False
        return plan

    def plan_completion(self, entry: ModelEntry, req: CompletionRequest, request_id: str) -> Plan:
        pre = entry.ready_preprocessor()
        prompts = req.prompts()
        if isinstance(prompts[0], str):
            ids = [pre.encode_prompt(p) for p in prompts]  # type: ignore[arg-type]
            echo = list(prompts) if req.echo else []
        else:
            vocab = pre.tokenizer.get_vocab_size(with_added_tokens=True)
            for p in prompts:
                if any(t >= vocab for t in p):  # type: ignore[operator, union-attr]
                    raise InvalidRequest(f"prompt token ids must be in [0, {vocab})", param="prompt")
            ids = [list(p) for p in prompts]  # type: ignore[arg-type]
            echo = [pre.decode(p) for p in ids] if req.echo else []
        return self._plan(entry, req, request_id, ids, chat=False, echo=echo)

    def _plan(self, entry: ModelEntry, req: _Sampling, request_id: str, prompts: list[list[int]], *,
              chat: bool, echo: list[str] | None = None, extra: dict[str, Any] | None = None) -> Plan:
        max_tokens = req.effective_max_tokens()
        for ids in prompts:
            _check_length(entry, ids, max_tokens, "messages" if chat else "prompt")
        pre = entry.ready_preprocessor()
        sampling = SamplingOptions(
            temperature=req.temperature, top_p=req.top_p, top_k=req.top_k, min_p=req.min_p, seed=req.seed,
            presence_penalty=req.presence_penalty, frequency_penalty=req.frequency_penalty,
            repetition_penalty=req.repetition_penalty,
        )
        stop = StopConditions(max_tokens=max_tokens, min_tokens=req.min_tokens,
                              stop_token_ids=req.stop_token_ids or [], ignore_eos=req.ignore_eos)
        top = req.top_logprobs_count()  # type: ignore[attr-defined]
        output = OutputOptions(logprobs=top)
        n = req.n
        base_seed = req.seed if req.seed is not None else random.getrandbits(63)
        total = len(prompts) * n
        choices = []
        for p, ids in enumerate(prompts):
            for j in range(n):
                index = p * n + j
                gen = GenerateRequest(
                    request_id=request_id if total == 1 else f"{request_id}-{index}",
                    token_ids=ids if j == 0 else list(ids), model=entry.name,
                    # n samples of one prompt differ by seed; a seeded request stays reproducible
                    sampling=sampling if n == 1 else msgspec.structs.replace(sampling,
                                                                             seed=_wrap_seed(base_seed + j)),
                    stop=stop, output=output, eos_token_ids=pre.eos_token_ids, extra=extra or {},
                )
                offset = len(echo[p]) if echo else 0
                lp = None if top is None else LogprobCollector(pre.token_text, top, chat, offset)
                choices.append(Choice(index, p, gen, echo[p] if echo else "", Outcome(logprobs=lp)))
        plan = Plan(entry, request_id, chat, choices, req.stop_strings(), req.include_usage(),
                    sum(len(ids) for ids in prompts))
        plan.head = orjson.dumps({
            "id": request_id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": plan.created, "model": entry.name,
        })[:-1]
        return plan

    # -- the token loop ----------------------------------------------------------------------------
    async def _text_stream(self, plan: Plan, choice: Choice, tracker: Tracker) -> AsyncIterator[str]:
        """Yield one choice's text pieces; fill its ``outcome`` when the stream ends."""
        entry = plan.entry
        outcome = choice.outcome
        feed = Detokenizer(entry.ready_preprocessor().tokenizer).feed
        matcher = StopMatcher(plan.stops) if plan.stops else None
        lp = outcome.logprobs
        usage: Usage | None = None
        stream = self.push.generate(entry.name, entry.router, entry.worker_list, choice.gen,
                                  on_worker=tracker.on_worker)
        try:
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for delta in stream:
                    ids = delta.token_ids
                    if ids:
                        if not outcome.completion_tokens:
                            tracker.first_token()
                        outcome.completion_tokens += len(ids)
                        if lp is not None:
                            lp.add(delta)
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
        finally:
            tracker.completion_tokens += outcome.completion_tokens
            tracker.cached_tokens += outcome.cached_tokens

    @staticmethod
    def usage_dict(plan: Plan) -> dict:
        completion = sum(c.outcome.completion_tokens for c in plan.choices)
        cached: dict[int, int] = {}
        for c in plan.choices:  # a prompt is counted once, however many samples it has
            cached[c.prompt_index] = max(cached.get(c.prompt_index, 0), c.outcome.cached_tokens)
        return {
            "prompt_tokens": plan.prompt_tokens,
            "completion_tokens": completion,
            "total_tokens": plan.prompt_tokens + completion,
            "prompt_tokens_details": {"cached_tokens": sum(cached.values())},
        }

    # -- non-streaming -----------------------------------------------------------------------------
    async def complete(self, plan: Plan, tracker: Tracker) -> bytes:
        """The whole response body (all choices run concurrently)."""
        if len(plan.choices) == 1:
            await self._collect(plan, plan.choices[0], tracker)
        else:
            await _all([self._collect(plan, c, tracker) for c in plan.choices])
        choices = [self._choice_body(plan, c) for c in plan.choices]
        return orjson.dumps({
            "id": plan.request_id, "object": "chat.completion" if plan.chat else "text_completion",
            "created": plan.created, "model": plan.entry.name, "choices": choices,
            "usage": self.usage_dict(plan),
        })

    async def _collect(self, plan: Plan, choice: Choice, tracker: Tracker) -> None:
        choice.outcome.text = "".join([piece async for piece in self._text_stream(plan, choice, tracker)])

    def _choice_body(self, plan: Plan, choice: Choice) -> dict:
        out = choice.outcome
        logprobs = None if out.logprobs is None else (out.logprobs.take() or out.logprobs.empty())
        if not plan.chat:
            return {"index": choice.index, "text": choice.echo + out.text, "logprobs": logprobs,
                    "finish_reason": out.finish_reason}
        message: dict[str, Any] = {"role": "assistant", "content": out.text}
        finish = out.finish_reason
        if plan.tools:
            content, calls = parse_tool_calls(out.text)
            if calls:
                calls = calls if plan.parallel_tool_calls else calls[:1]
                message["content"] = content
                message["tool_calls"] = [c.as_openai() for c in calls]
                finish = "tool_calls" if finish == "stop" else finish
        return {"index": choice.index, "message": message, "logprobs": logprobs, "finish_reason": finish}

    # -- streaming ---------------------------------------------------------------------------------
    def sse(self, plan: Plan, tracker: Tracker) -> AsyncIterator[bytes]:
        """SSE chunks of a chat or text completion, ending with ``[DONE]``.

        Nothing is yielded before the first text arrives, so errors before the first token (no
        worker, invalid request) reach the caller as exceptions, i.e. HTTP errors. Errors after it
        end the stream with an error event and ``[DONE]``.
        """
        return self._sse_one(plan, tracker) if plan.simple else self._sse_rich(plan, tracker)

    def _tail(self, plan: Plan, tracker: Tracker) -> bytes:
        tracker.finish(SUCCESS, 200)
        if not plan.include_usage:
            return DONE
        usage = orjson.dumps(self.usage_dict(plan))
        return b"data: " + plan.head + b',"choices":[],"usage":' + usage + b"}\n\n" + DONE

    @staticmethod
    def _failed(exc: Exception, tracker: Tracker) -> bytes:
        _, body, _ = classify(exc)
        tracker.finish(ERROR, 200, error_code(body))
        return sse_error(exc) + DONE

    async def _sse_one(self, plan: Plan, tracker: Tracker) -> AsyncIterator[bytes]:
        choice = plan.choices[0]
        texts = self._text_stream(plan, choice, tracker)
        head = plan.head
        async with contextlib.aclosing(texts):  # type: ignore[type-var]
            first: str | None
            try:
                first = await anext(texts)
            except StopAsyncIteration:
                first = None
            dumps = orjson.dumps
            if plan.chat:
                prefix = b"data: " + head + b',"choices":[{"index":0,"delta":{"content":'
                suffix = b'},"logprobs":null,"finish_reason":null}]}\n\n'
                final = (b"data: " + head
                         + b',"choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":')
                yield (b"data: " + head + b',"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
                       b'"logprobs":null,"finish_reason":null}]}\n\n')
            else:
                prefix = b"data: " + head + b',"choices":[{"index":0,"text":'
                suffix = b',"logprobs":null,"finish_reason":null}]}\n\n'
                final = (b"data: " + head
                         + b',"choices":[{"index":0,"text":"","logprobs":null,"finish_reason":')
                if choice.echo:
                    yield prefix + dumps(choice.echo) + suffix
            if first is not None:
                yield prefix + dumps(first) + suffix
                try:
                    async for text in texts:
                        yield prefix + dumps(text) + suffix
                except Exception as exc:
                    yield self._failed(exc, tracker)
                    return
        yield final + dumps(choice.outcome.finish_reason) + b"}]}\n\n"
        yield self._tail(plan, tracker)

    async def _sse_rich(self, plan: Plan, tracker: Tracker) -> AsyncIterator[bytes]:
        streams = [self._choice_chunks(plan, c, tracker) for c in plan.choices]
        merged = streams[0] if len(streams) == 1 else _merge(streams)
        async with contextlib.aclosing(merged):  # type: ignore[type-var]
            try:
                first = await anext(merged)
            except StopAsyncIteration:
                first = None
            if first is not None:
                yield first
                try:
                    async for chunk in merged:
                        yield chunk
                except Exception as exc:
                    yield self._failed(exc, tracker)
                    return
        yield self._tail(plan, tracker)

    async def _choice_chunks(self, plan: Plan, choice: Choice, tracker: Tracker) -> AsyncIterator[bytes]:
        """One choice's chunks: opening, content (with log-probabilities), tool calls, finish."""
        lp = choice.outcome.logprobs
        parser = ToolCallStream() if plan.tools else None
        calls: list[ParsedToolCall] = []
        started = False
        texts = self._text_stream(plan, choice, tracker)
        async with contextlib.aclosing(texts):  # type: ignore[type-var]
            async for text in texts:
                if not started:
                    started = True
                    if opening := self._opening(plan, choice):
                        yield opening
                new: list[ParsedToolCall] = []
                if parser is not None:
                    text, new = parser.feed(text)
                if text or lp:
                    yield self._chunk(plan, choice.index, text, lp.take() if lp is not None else None)
                for chunk in self._calls(plan, choice, calls, new):
                    yield chunk
        if not started and (opening := self._opening(plan, choice)):
            yield opening
        if parser is not None:
            text, new = parser.flush()
            if text:
                yield self._chunk(plan, choice.index, text, None)
            for chunk in self._calls(plan, choice, calls, new):
                yield chunk
        finish = choice.outcome.finish_reason
        if calls and finish == "stop":
            finish = "tool_calls"
        yield self._chunk(plan, choice.index, None, lp.take() if lp is not None else None, finish)

    def _opening(self, plan: Plan, choice: Choice) -> bytes:
        if plan.chat:
            return self._chunk(plan, choice.index, None, None, delta={"role": "assistant", "content": ""})
        return self._chunk(plan, choice.index, choice.echo, None) if choice.echo else b""

    def _calls(self, plan: Plan, choice: Choice, sent: list[ParsedToolCall],
               new: list[ParsedToolCall]) -> list[bytes]:
        out = []
        for call in new:
            if sent and not plan.parallel_tool_calls:
                break
            out.append(self._chunk(plan, choice.index, None, None, delta={
                "tool_calls": [call.as_openai(index=len(sent))]}))
            sent.append(call)
        return out

    @staticmethod
    def _chunk(plan: Plan, index: int, text: str | None, logprobs: dict | None, finish: str | None = None,
               delta: dict | None = None) -> bytes:
        if plan.chat:
            if delta is None:
                delta = {} if text is None else {"content": text}
            body: dict[str, Any] = {"index": index, "delta": delta, "logprobs": logprobs,
                                    "finish_reason": finish}
        else:
            body = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish}
        return b"data: " + plan.head + b',"choices":[' + orjson.dumps(body) + b"]}\n\n"


def _check_length(entry: ModelEntry, token_ids: list[int], max_tokens: int | None, param: str) -> None:
    ctx = entry.card.context_length
    prompt_len = len(token_ids)
    if prompt_len == 0:
        raise InvalidRequest("the prompt is empty", param=param)
    if prompt_len >= ctx:
        raise InvalidRequest(
            f"this model's maximum context length is {ctx} tokens, but the prompt has {prompt_len} tokens",
            param=param,
        )
    if max_tokens is not None and prompt_len + max_tokens > ctx:
        raise InvalidRequest(
            f"this model's maximum context length is {ctx} tokens; you requested {prompt_len + max_tokens} "
            f"tokens ({prompt_len} in the prompt, {max_tokens} for the completion)",
            param="max_tokens",
        )


def _response_format(entry: ModelEntry, fmt: ResponseFormat | None) -> dict[str, Any]:
    """``GenerateRequest.extra`` for a response format the model's engine declared it enforces."""
    if fmt is None or fmt.type == "text":
        return {}
    supported = entry.card.response_formats
    if fmt.type not in supported:
        can = f"it supports {', '.join(supported)}" if supported else "it enforces none"
        raise InvalidRequest(
            f"response_format {fmt.type!r} is not supported by model {entry.name!r} "
            f"(engine {entry.card.engine or 'unknown'}: {can})",
            param="response_format",
        )
    return {"response_format": fmt.model_dump(by_alias=True, exclude_none=True)}


async def _all(coros: list[Coroutine[Any, Any, None]]) -> None:
    """Run concurrently; the first failure cancels the rest (so no engine request leaks)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


_END = object()


async def _merge(streams: list[AsyncIterator[bytes]]) -> AsyncIterator[bytes]:
    """Interleave several chunk streams as they produce; the first failure ends (and cancels) all."""
    queue: asyncio.Queue[object] = asyncio.Queue(_MERGE_BUFFER)

    async def pump(stream: AsyncIterator[bytes]) -> None:
        try:
            async with contextlib.aclosing(stream):  # type: ignore[type-var]
                async for chunk in stream:
                    await queue.put(chunk)
        except Exception as exc:
            await queue.put(exc)
        else:
            await queue.put(_END)

    tasks = [asyncio.ensure_future(pump(s)) for s in streams]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is _END:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            elif item:
                yield item  # type: ignore[misc]
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
