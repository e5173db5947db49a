"""``TrtllmEngine``: TensorRT-LLM's LLM API (PyTorch backend), in-process, behind Dynamo's contract.

``generate_async(token_ids, sampling_params, streaming=True)`` returns a result handle at once;
iterating it yields the same ``RequestOutput`` again and again, its ``outputs[0].token_ids``
**cumulative**, so ``generate`` slices off what it already streamed. TensorRT-LLM leaves the end id
out of the output and trims a matched stop token id itself (``include_stop_str_in_output=False``),
which is the contract's rule too.

There is no abort by id in the LLM API: the handle aborts (``result.abort()``), so the engine keeps a
request-id to handle map. Load comes from ``get_stats_async`` (iteration stats, needs
``enable_iter_perf_stats``), polled by a background task. KV events (``PublishesKvEvents``) come from
``get_kv_cache_events_async`` (needs ``event_buffer_max_size > 0`` and block reuse), polled by another
task and translated by ``kv_events``; both tasks stop before TensorRT-LLM shuts down.

This module never imports tensorrt_llm at import time; ``start`` does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import AsyncIterator
from typing import Any

from dynamo.plugin import (
    Delta,
    Engine,
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
from dynamo.trtllm.args import TrtllmConfig, require_tensorrt_llm
from dynamo.trtllm.kv_events import KvCacheMirror, KvEventTranslator

log = logging.getLogger(__name__)

#: our sampling field -> TensorRT-LLM's SamplingParams field (the same names today)
SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)


class TrtllmEngine(Engine):
    """One ``tensorrt_llm.LLM``; implements ``ReportsLoad`` and ``PublishesKvEvents``."""

    #: seconds one ``get_stats_async`` pass waits for a stats record; pause between passes
    stats_timeout_s: float = 0.5
    stats_interval_s: float = 0.2
    #: the same for ``get_kv_cache_events_async``
    kv_events_timeout_s: float = 0.5
    kv_events_interval_s: float = 0.05
    #: seconds ``aclose`` waits for aborted streams to end before shutting TensorRT-LLM down
    drain_timeout_s: float = 5.0

    def __init__(self, config: TrtllmConfig) -> None:
        self.config = config
        self._llm: Any = None
        self._info: ModelInfo | None = None
        self._requests: dict[str, Any] = {}  # request id -> TensorRT-LLM result handle
        self._idle = asyncio.Event()  # set while no request is in flight
        self._idle.set()
        self._aborted: set[str] = set()
        self._stats: dict[str, Any] = {}
        self._stats_task: asyncio.Task[None] | None = None
        self._kv_mirror = KvCacheMirror()
        self._kv_task: asyncio.Task[None] | None = None
        self._closed = False

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> ModelInfo:
        if self._closed or self._llm is not None:
            raise EngineError("the trtllm engine was already started")
        require_tensorrt_llm()
        from tensorrt_llm import LLM
        from tensorrt_llm.llmapi import KvCacheConfig

        kwargs = dict(self.config.llm_kwargs)
        kwargs["kv_cache_config"] = KvCacheConfig(**kwargs.get("kv_cache_config", {}))
        try:
            self._llm = LLM(model=self.config.model, **kwargs)
        except Exception as exc:
            raise EngineError(f"tensorrt_llm failed to start: {exc}") from exc
        self._info = self._model_info()
        loop = asyncio.get_running_loop()
        if kwargs.get("enable_iter_perf_stats"):
            self._stats_task = loop.create_task(self._poll_stats())
        if self.config.kv_events:
            self._kv_task = loop.create_task(self._poll_kv_events())
        return self._info

    def _model_info(self) -> ModelInfo:
        kwargs = self.config.llm_kwargs
        return ModelInfo(
            served_model_name=self.config.served_model_name or self.config.model,
            model_path=self.config.model,
            context_length=self._context_length(),
            kv_block_size=self.config.tokens_per_block,
            max_num_seqs=kwargs.get("max_batch_size"),
            max_num_batched_tokens=kwargs.get("max_num_tokens"),
        )

    def _context_length(self) -> int:
        """``max_seq_len`` as configured, else as the LLM resolved it, else the model's own."""
        length = self.config.llm_kwargs.get("max_seq_len") or getattr(self._llm.args, "max_seq_len", None)
        length = length or model_max_positions(self.config.model)
        if not length:
            raise EngineError(
                f"trtllm: cannot tell the context length of {self.config.model}; pass --max-seq-len"
            )
        return int(length)

    async def check_health(self) -> None:
        llm, _ = self._serving()
        executor = getattr(llm, "_executor", None)
        if executor is None or executor.is_shutdown():
            raise EngineError("trtllm: the executor is shut down")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._kv_mirror.sink = None
        pollers = {t for t in (self._stats_task, self._kv_task) if t is not None}
        for task in pollers:
            task.cancel()
        if pollers:
            await asyncio.wait(pollers, timeout=self.drain_timeout_s)
        llm, self._llm = self._llm, None
        if llm is None:
            return
        for request_id, result in list(self._requests.items()):
            self._aborted.add(request_id)
            abort(result)
        await self._drain()
        llm.shutdown()

    async def _drain(self) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), self.drain_timeout_s)
        except asyncio.TimeoutError:  # noqa: UP041  (Python 3.10: not the builtin)
            log.warning("shutting TensorRT-LLM down with %d stream(s) still open", len(self._requests))

    def _serving(self) -> tuple[Any, ModelInfo]:
        if self._closed:
            raise EngineShutdown("the trtllm engine is shut down")
        if self._llm is None or self._info is None:
            raise EngineError("the trtllm engine is not started")
        return self._llm, self._info

    # ---------------------------------------------------------------- requests

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        llm, info = self._serving()
        rid = request.request_id
        max_tokens = checked_max_tokens(request, info.context_length)
        if rid in self._requests:
            raise InvalidRequest(f"request id {rid!r} is already in flight", param="request_id")
        result = submit(llm, request, self.sampling_params(request, max_tokens))
        self._requests[rid] = result
        self._idle.clear()
        finished = False
        try:
            sent = 0
            while not finished:
                out = await next_output(result)
                completion = out.outputs[0]
                new = list(completion.token_ids[sent:])
                sent = max(sent, len(completion.token_ids))
                finished = bool(out.finished or completion.finish_reason)
                if not finished:
                    if new:
                        yield Delta(new)
                    continue
                usage = Usage(prompt_tokens=len(request.token_ids), completion_tokens=sent)
                yield Delta(new, self._finish_reason(completion, request), usage)
        finally:
            self._requests.pop(rid, None)
            self._aborted.discard(rid)
            if not self._requests:
                self._idle.set()
            if not finished:
                abort(result)

    def sampling_params(self, request: GenerateRequest, max_tokens: int) -> Any:
        from tensorrt_llm import SamplingParams

        stop = request.stop
        fields: dict[str, Any] = {
            "max_tokens": max_tokens,
            "ignore_eos": stop.ignore_eos,
            "detokenize": False,
        }
        for name in SAMPLING_FIELDS:
            value = getattr(request.sampling, name)
            if value is not None:
                fields[name] = value
        eos = list(request.eos_token_ids)
        if eos:  # the first is TensorRT-LLM's end id, the others stop it as well
            fields["end_id"] = eos[0]
        elif self._llm is not None and self._llm.tokenizer is None:
            # with skip_tokenizer_init TensorRT-LLM cannot look the end id up and refuses the
            # request; -1 (its "never") leaves ending to max_tokens and stop ids
            fields["end_id"] = -1
        stop_ids = list(dict.fromkeys([*stop.stop_token_ids, *eos[1:]]))
        if stop_ids:
            fields["stop_token_ids"] = stop_ids
        if stop.min_tokens:
            fields["min_tokens"] = stop.min_tokens
        return SamplingParams(**fields)

    def _finish_reason(self, completion: Any, request: GenerateRequest) -> FinishReason:
        reason = completion.finish_reason
        if reason == "length":
            return FinishReason.LENGTH
        if reason == "stop":
            stopped_by = completion.stop_reason
            if stopped_by is None or stopped_by in request.eos_token_ids:
                return FinishReason.EOS
            return FinishReason.STOP
        if reason == "cancelled":
            if request.request_id in self._aborted:
                return FinishReason.CANCELLED
            raise EngineError("trtllm: the engine cancelled the request")
        return FinishReason.ERROR  # "timeout", or finished without a reason

    async def abort(self, request_id: str) -> None:
        result = self._requests.get(request_id)
        if result is None:
            return
        self._aborted.add(request_id)
        abort(result)

    def load_metrics(self) -> LoadMetrics:
        if not self._requests:
            # stats arrive only while the engine iterates: the last record of a busy engine would
            # otherwise stay the report of an idle one
            return LoadMetrics(
                kv_total_blocks=int((self._stats.get("kvCacheStats") or {}).get("maxNumBlocks", 0))
            )
        kv = self._stats.get("kvCacheStats") or {}
        batching = self._stats.get("inflightBatchingStats") or {}
        return LoadMetrics(
            active_requests=len(self._requests),
            waiting_requests=int(self._stats.get("numQueuedRequests", 0))
            + int(batching.get("numPausedRequests", 0)),
            kv_used_blocks=int(kv.get("usedNumBlocks", 0)),
            kv_total_blocks=int(kv.get("maxNumBlocks", 0)),
        )

    async def _poll_stats(self) -> None:
        # the loop also checks _closed: a cancel that lands as a stats record arrives can be lost
        # inside asyncio.wait_for (Python 3.11)
        llm = self._llm
        while not self._closed:
            try:
                async for stats in llm.get_stats_async(timeout=self.stats_timeout_s):
                    self._stats = json.loads(stats) if isinstance(stats, str) else stats
                    if self._closed:
                        return
            except Exception:  # stats are best effort; the engine keeps serving without them
                log.debug("trtllm: get_stats_async failed", exc_info=True)
            await asyncio.sleep(self.stats_interval_s)

    async def _poll_kv_events(self) -> None:
        llm = self._llm
        translator = KvEventTranslator(self._kv_mirror, self.config.tokens_per_block)
        while not self._closed:
            try:
                async for event in llm.get_kv_cache_events_async(timeout=self.kv_events_timeout_s):
                    translator.handle(json.loads(event) if isinstance(event, str) else event)
                    if self._closed:
                        return
            except Exception:  # a bad event must not stop the others; the engine keeps serving
                log.warning("trtllm: reading KV cache events failed", exc_info=True)
            await asyncio.sleep(self.kv_events_interval_s)

    def set_kv_event_sink(self, sink: KvEventSink | None) -> None:
        """``PublishesKvEvents``: pass every prefix-cache change to ``sink`` from now on."""
        self._kv_mirror.sink = sink

    def kv_snapshot(self) -> list[KvEvent]:
        """``PublishesKvEvents``: the cache as it is now, as ``STORED`` events (parents first)."""
        return self._kv_mirror.snapshot()


def submit(llm: Any, request: GenerateRequest, params: Any) -> Any:
    """``llm.generate_async``, with its exceptions in Dynamo's vocabulary."""
    try:
        return llm.generate_async(list(request.token_ids), sampling_params=params, streaming=True)
    except ValueError as exc:  # TensorRT-LLM's argument checks
        raise InvalidRequest(f"trtllm: {exc}") from exc
    except RuntimeError as exc:
        if "shutting down" in str(exc):
            raise EngineShutdown(f"trtllm: {exc}") from exc
        raise EngineError(f"trtllm: {exc}") from exc


async def next_output(result: Any) -> Any:
    """The next update of a result handle, with TensorRT-LLM's exceptions in Dynamo's vocabulary."""
    try:
        return await result.__anext__()
    except StopAsyncIteration:
        raise EngineError("trtllm: the stream ended without a finish reason") from None
    except errors.DynamoError:
        raise
    except Exception as exc:  # RequestError and the like: the executor failed this request
        raise EngineError(f"trtllm: {exc}") from exc


def abort(result: Any) -> None:
    try:
        result.abort()
    except Exception:  # best effort: the engine may be going down
        log.warning("trtllm: could not abort a request", exc_info=True)


def checked_max_tokens(request: GenerateRequest, context_length: int) -> int:
    """``max_tokens`` to ask for; prompt + max_tokens must fit ``max_seq_len``."""
    n = len(request.token_ids)
    if n == 0:
        raise InvalidRequest("the prompt is empty", param="prompt")
    room = context_length - n
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


def model_max_positions(model: str) -> int | None:
    """``max_position_embeddings`` from a local model directory's ``config.json``."""
    path = os.path.join(model, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if value else None
