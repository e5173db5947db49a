"""``SglangEngine``: SGLang's offline ``sglang.Engine``, in-process, behind Dynamo's engine contract.

Requests go in as token ids (``async_generate(input_ids=..., stream=True, rid=request_id)``) and
come back as SGLang chunks, turned into ``Delta``s by ``ChunkReader``:

- ``output_ids`` are disjoint with incremental streaming output (which ``args`` turns on); should an
  engine stream cumulative ids anyway, the reader slices them (SGLang then shares one growing list
  between chunks, so the slice is copied at once);
- a stop or EOS token that ends the sequence is in SGLang's ``output_ids``; the contract says it is
  not streamed, so it is dropped from the last delta (``usage.completion_tokens`` still counts it);
- SGLang's ``ignore_eos`` also switches off ``stop_token_ids``; the contract keeps stop ids under
  ``ignore_eos``, so in that case the reader applies them itself and the engine request is aborted.

Abort goes through the tokenizer manager (``abort_request(rid=...)``). Closing a stream does not abort
an SGLang request by itself, so ``generate`` aborts every request it leaves unfinished.

KV events (``PublishesKvEvents``): with ``--kv-events-config '{"publisher": "zmq", ...}'`` SGLang
publishes its prefix cache's changes over ZMQ; ``kv_events`` subscribes to each data-parallel rank's
publisher once the engine is up and mirrors them into Dynamo's ``KvEvent``s.

This module never imports sglang at import time; ``start`` does.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from dynamo.plugin import (
    Delta,
    Engine,
    EngineContext,
    EngineError,
    EngineShutdown,
    FinishReason,
    GenerateRequest,
    InvalidRequest,
    KvEvent,
    KvEventSink,
    LoadMetrics,
    ModelInfo,
    Usage,
    errors,
)
from dynamo.sglang import args
from dynamo.sglang.kv_events import KvCacheMirror, KvEventBridge, ZmqKvEventSubscriber, kv_event_sources

log = logging.getLogger(__name__)

#: our sampling field -> SGLang's sampling_params key
SAMPLING_KEYS = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "repetition_penalty": "repetition_penalty",
    "seed": "sampling_seed",
}


class SglangEngine(Engine):
    """One ``sglang.Engine``; implements ``ReportsLoad`` and ``PublishesKvEvents``."""

    #: seconds ``aclose`` waits for aborted streams to end before shutting SGLang down
    drain_timeout_s: float = 5.0

    def __init__(self, server_args: Any) -> None:
        self.server_args = server_args
        self._engine: Any = None
        self._info: ModelInfo | None = None
        self._active: set[str] = set()
        self._idle = asyncio.Event()  # set while no request is in flight
        self._idle.set()
        self._aborted: set[str] = set()
        self._closed = False
        self._kv_mirror = KvCacheMirror()
        self._kv_subscribers: list[ZmqKvEventSubscriber] = []

    @classmethod
    def from_context(cls, ctx: EngineContext) -> SglangEngine:
        return cls(args.server_args(ctx))

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> ModelInfo:
        if self._closed or self._engine is not None:
            raise EngineError("the sglang engine was already started")
        args.require_sglang()
        import sglang

        try:
            self._engine = sglang.Engine(server_args=self.server_args)
        except Exception as exc:
            raise EngineError(f"sglang failed to start: {exc}") from exc
        self._info = model_info(self._engine)
        self._start_kv_events(self._info.kv_block_size)
        return self._info

    def _start_kv_events(self, block_size: int) -> None:
        """Follow SGLang's KV-event publishers (one per data-parallel rank), if it runs any."""
        try:
            sources = kv_event_sources(self.server_args)
        except ValueError as exc:
            raise EngineError(f"sglang: {exc}") from exc
        for source in sources:
            bridge = KvEventBridge(self._kv_mirror, expected_block_size=block_size)
            subscriber = ZmqKvEventSubscriber(source, bridge)
            subscriber.start()
            self._kv_subscribers.append(subscriber)

    async def check_health(self) -> None:
        self._serving()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kv_mirror.sink = None
        subscribers, self._kv_subscribers = self._kv_subscribers, []
        for subscriber in subscribers:
            await subscriber.aclose()
        engine, self._engine = self._engine, None
        if engine is None:
            return
        for rid in list(self._active):
            self._aborted.add(rid)
            abort_in(engine, rid)
        await self._drain()
        engine.shutdown()

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), self.drain_timeout_s)
        except TimeoutError:
            log.warning("shutting SGLang down with %d stream(s) still open", len(self._active))

    def _serving(self) -> tuple[Any, ModelInfo]:
        if self._closed:
            raise EngineShutdown("the sglang engine is shut down")
        if self._engine is None or self._info is None:
            raise EngineError("the sglang engine is not started")
        return self._engine, self._info

    # ---------------------------------------------------------------- requests

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        engine, info = self._serving()
        rid = request.request_id
        max_tokens = checked_max_tokens(request, info.context_length)
        if not rid or rid in self._active:
            raise InvalidRequest(f"request id {rid!r} is empty or already in flight", param="request_id")
        reader = ChunkReader(request, incremental=incremental_output(engine.server_args))
        self._active.add(rid)
        self._idle.clear()
        stream = None
        try:
            stream = await engine.async_generate(
                input_ids=list(request.token_ids),
                sampling_params=sampling_params(request, max_tokens),
                stream=True,
                rid=rid,
            )
            resent = False
            while True:
                chunk = await next_chunk(stream)
                cancelled = rid in self._aborted
                if cancelled and not resent:
                    # an abort that came before SGLang registered the rid was a no-op there
                    abort_in(engine, rid)
                    resent = True
                delta = reader.read(chunk, cancelled=cancelled)
                if delta.token_ids or delta.finish_reason is not None:
                    yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            self._active.discard(rid)
            self._aborted.discard(rid)
            if not self._active:
                self._idle.set()
            if not reader.engine_finished:
                abort_in(engine, rid)  # a closed stream leaves the SGLang request running otherwise
            if stream is not None:
                await stream.aclose()

    async def abort(self, request_id: str) -> None:
        if self._engine is None or request_id not in self._active:
            return
        self._aborted.add(request_id)
        abort_in(self._engine, request_id)

    def load_metrics(self) -> LoadMetrics:
        # SGLang publishes scheduler metrics only with --kv-events-config; requests in flight are
        # counted here, capacity comes from the scheduler's start-up report
        total = self._info.total_kv_blocks if self._info else None
        return LoadMetrics(active_requests=len(self._active), kv_total_blocks=total or 0)

    def set_kv_event_sink(self, sink: KvEventSink | None) -> None:
        """``PublishesKvEvents``: pass every prefix-cache change to ``sink`` from now on."""
        self._kv_mirror.sink = sink

    def kv_snapshot(self) -> list[KvEvent]:
        """``PublishesKvEvents``: the cache as it is now, as ``STORED`` events (parents first)."""
        return self._kv_mirror.snapshot()


class ChunkReader:
    """Turns one request's SGLang chunks into ``Delta``s."""

    def __init__(self, request: GenerateRequest, *, incremental: bool) -> None:
        self.request = request
        self.incremental = incremental
        self.received = 0  # output ids received (the slice offset in cumulative mode)
        self.streamed = 0  # output ids passed on
        stop = request.stop
        self.own_stops = set(stop.stop_token_ids) if stop.ignore_eos else set()
        self.engine_finished = False

    def read(self, chunk: dict[str, Any], *, cancelled: bool) -> Delta:
        ids = chunk.get("output_ids") or []
        new = list(ids) if self.incremental else list(ids[self.received :])
        self.received += len(new)
        meta = chunk.get("meta_info") or {}
        reason = meta.get("finish_reason")
        self.engine_finished = reason is not None
        cut = next((i for i, t in enumerate(new) if t in self.own_stops), None)
        if cut is not None:
            return self.final(new[:cut], FinishReason.STOP, meta, generated=self.streamed + cut + 1)
        if reason is None:
            self.streamed += len(new)
            return Delta(new)
        finish = self.finish_reason(reason, cancelled)
        matched = reason.get("matched")
        if finish in (FinishReason.STOP, FinishReason.EOS) and new and new[-1] == matched:
            new = new[:-1]
        return self.final(new, finish, meta)

    def final(
        self, new: list[int], finish: FinishReason, meta: dict[str, Any], generated: int | None = None
    ) -> Delta:
        self.streamed += len(new)
        usage = Usage(
            prompt_tokens=meta.get("prompt_tokens") or len(self.request.token_ids),
            completion_tokens=generated
            if generated is not None
            else meta.get("completion_tokens", self.streamed),
            cached_tokens=meta.get("cached_tokens") or 0,
        )
        return Delta(new, finish, usage)

    def finish_reason(self, reason: dict[str, Any], cancelled: bool) -> FinishReason:
        kind = reason.get("type")
        if kind == "length":
            return FinishReason.LENGTH
        if kind == "stop":
            matched = reason.get("matched")
            if isinstance(matched, str) or matched in self.request.stop.stop_token_ids:
                return FinishReason.STOP
            return FinishReason.EOS
        if kind == "abort" and cancelled:
            return FinishReason.CANCELLED
        message = f"sglang: {reason.get('message') or reason}"
        if kind == "abort" and reason.get("status_code") == 400:
            raise InvalidRequest(message)
        raise EngineError(message)


async def next_chunk(stream: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    """The next SGLang chunk, with SGLang's exceptions in Dynamo's vocabulary."""
    try:
        return await stream.__anext__()
    except StopAsyncIteration:
        raise EngineError("sglang: the stream ended without a finish reason") from None
    except ValueError as exc:  # SGLang's validation errors (prompt too long, bad sampling value)
        raise InvalidRequest(f"sglang: {exc}") from exc
    except errors.DynamoError:
        raise
    except Exception as exc:
        raise EngineError(f"sglang: {exc}") from exc


def checked_max_tokens(request: GenerateRequest, context_length: int) -> int:
    """``max_tokens`` to ask for; SGLang needs prompt + max_tokens < context length."""
    n = len(request.token_ids)
    if n == 0:
        raise InvalidRequest("the prompt is empty", param="prompt")
    room = context_length - 1 - n
    if room < 1:
        raise InvalidRequest(
            f"the prompt has {n} tokens; the context length is {context_length}", param="prompt"
        )
    wanted = request.stop.max_tokens
    if wanted is None:
        return room
    if wanted < 1 or wanted > room:
        raise InvalidRequest(
            f"max_tokens={wanted} does not fit: prompt {n} tokens, context length {context_length}",
            param="max_tokens",
        )
    return wanted


def sampling_params(request: GenerateRequest, max_tokens: int) -> dict[str, Any]:
    """SGLang's ``sampling_params`` dict for ``request``."""
    stop = request.stop
    params: dict[str, Any] = {"max_new_tokens": max_tokens, "ignore_eos": stop.ignore_eos}
    for ours, theirs in SAMPLING_KEYS.items():
        value = getattr(request.sampling, ours)
        if value is not None:
            params[theirs] = value
    if not stop.ignore_eos:  # under ignore_eos SGLang ignores them; ChunkReader applies them
        stop_ids = dict.fromkeys([*stop.stop_token_ids, *request.eos_token_ids])
        if stop_ids:
            params["stop_token_ids"] = list(stop_ids)
    if stop.min_tokens:
        params["min_new_tokens"] = stop.min_tokens
    return params


def incremental_output(server_args: Any) -> bool:
    return bool(
        getattr(server_args, "incremental_streaming_output", None)
        or getattr(server_args, "stream_output", False)
    )


def abort_in(engine: Any, rid: str) -> None:
    try:
        engine.tokenizer_manager.abort_request(rid=rid, abort_all=False)
    except Exception:  # best effort: the engine may be going down
        log.warning("sglang: could not abort request %s", rid, exc_info=True)


def scheduler_info(engine: Any) -> dict[str, Any]:
    """The first scheduler's start-up report (capacity); its home moved between releases."""
    result = getattr(engine, "_scheduler_init_result", None)
    infos = getattr(result, "scheduler_infos", None)
    if infos:
        return dict(infos[0])
    return dict(getattr(engine, "scheduler_info", None) or {})


def resolved(server_args: Any) -> dict[str, Any]:
    """``ServerArgs`` after SGLang filled in its defaults; 0.5.2x keeps those off the fields."""
    if hasattr(server_args, "resolved_dict"):
        return dict(server_args.resolved_dict())
    return dict(vars(server_args))


def model_info(engine: Any) -> ModelInfo:
    server = resolved(engine.server_args)
    info = scheduler_info(engine)
    page = server.get("page_size") or 1
    total_tokens = info.get("max_total_num_tokens")
    chunked = server.get("chunked_prefill_size")
    return ModelInfo(
        served_model_name=server.get("served_model_name") or server["model_path"],
        model_path=server.get("tokenizer_path") or server["model_path"],
        context_length=engine.tokenizer_manager.context_len,
        kv_block_size=page,
        total_kv_blocks=total_tokens // page if total_tokens else None,
        max_num_seqs=info.get("max_running_requests") or server.get("max_running_requests"),
        max_num_batched_tokens=chunked if chunked and chunked > 0 else None,
    )
