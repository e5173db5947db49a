"""``VllmEngine``: vLLM's ``AsyncLLM`` in-process behind Dynamo's ``Engine`` contract.

Importing this module imports vLLM (and torch): only the plugin's factory does, never plugin listing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import threading
from collections.abc import AsyncIterator
from typing import Any

from dynamo.plugin.capabilities import LoadMetrics
from dynamo.plugin.engine import Engine, EngineContext
from dynamo.plugin.errors import EngineError, EngineShutdown, InvalidRequest, PluginError
from dynamo.plugin.types import Delta, FinishReason, GenerateRequest, ModelInfo, Usage
from dynamo.vllm.args import VllmArgs, build_engine_args
from dynamo.vllm.kv_events import KvCacheMirror, KvEventBridge, KvEventSource, ZmqKvEventSubscriber

# Before vLLM is imported (as Dynamo does): no usage reporting, and a spawned engine-core process
# (forking a process that already runs an event loop and threads is unsafe).
os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")

from vllm import SamplingParams, TokensPrompt  # noqa: E402
from vllm.exceptions import VLLMClientError  # noqa: E402
from vllm.sampling_params import RequestOutputKind  # noqa: E402
from vllm.usage.usage_lib import UsageContext  # noqa: E402
from vllm.v1.engine.async_llm import AsyncLLM  # noqa: E402
from vllm.v1.engine.exceptions import EngineDeadError, EngineGenerateError  # noqa: E402
from vllm.v1.metrics.loggers import StatLoggerBase  # noqa: E402

try:  # renamed across releases
    from vllm.exceptions import GracefulHTTPError  # noqa: E402
except ImportError:  # pragma: no cover
    GracefulHTTPError = VLLMClientError  # type: ignore[misc,assignment]

log = logging.getLogger(__name__)

__all__ = ["VllmEngine"]

# SamplingOptions field -> SamplingParams field, filled from the model's generation_config when unset
_SAMPLING_FIELDS = (
    "temperature",
    "top_p",
    "top_k",
    "min_p",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
)


class _LoadState:
    """The latest scheduler stats, written by vLLM's output-handler task (same event loop)."""

    __slots__ = ("running", "waiting", "kv_usage")

    def __init__(self) -> None:
        self.running = 0
        self.waiting = 0
        self.kv_usage = 0.0


class _LoadStatLogger(StatLoggerBase):
    """A vLLM stat logger that only remembers the scheduler's counts for ``load_metrics``."""

    def __init__(self, vllm_config: Any, engine_index: int = 0, *, state: _LoadState) -> None:
        self.state = state
        self.engine_index = engine_index

    def record(
        self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None, engine_idx: int = 0
    ) -> None:
        if scheduler_stats is None:
            return
        s = self.state
        s.running = int(getattr(scheduler_stats, "num_running_reqs", 0) or 0)
        s.waiting = int(getattr(scheduler_stats, "num_waiting_reqs", 0) or 0)
        usage = getattr(scheduler_stats, "kv_cache_usage", None)
        if usage is None:  # older releases
            usage = getattr(scheduler_stats, "gpu_cache_usage", 0.0)
        s.kv_usage = float(usage or 0.0)

    def log_engine_initialized(self) -> None:
        pass


def _finish_reason(out: Any, eos_ids: set[int]) -> FinishReason:
    reason = getattr(out, "finish_reason", None)
    if reason == "length":
        return FinishReason.LENGTH
    if reason == "abort":
        return FinishReason.CANCELLED
    if reason == "stop":
        stop = getattr(out, "stop_reason", None)
        if stop is None or (isinstance(stop, int) and stop in eos_ids):
            return FinishReason.EOS
        return FinishReason.STOP
    if reason == "error":
        return FinishReason.ERROR
    return FinishReason.STOP


def _is_stop_token(out: Any, token: int, eos_ids: set[int]) -> bool:
    stop = getattr(out, "stop_reason", None)
    if isinstance(stop, int) and not isinstance(stop, bool):
        return token == stop
    return stop is None and token in eos_ids


def _local_dir(name_or_path: str | None) -> str | None:
    """A local directory for a model or tokenizer: itself, or the hub cache's snapshot of it."""
    if not name_or_path:
        return None
    if os.path.isdir(name_or_path):
        return os.path.abspath(name_or_path)
    try:
        from huggingface_hub import snapshot_download

        return snapshot_download(name_or_path, local_files_only=True)
    except Exception:
        return None


class VllmEngine(Engine):
    """vLLM's ``AsyncLLM`` in this process (its engine core runs in a child process it spawns)."""

    def __init__(self, ctx: EngineContext, args: VllmArgs | None = None) -> None:
        self.ctx = ctx
        self.args = args or build_engine_args(
            ctx.argv, model_path=ctx.model_path, model_name=ctx.model_name, kv_block_size=ctx.kv_block_size
        )
        self.llm: AsyncLLM | None = None
        self.vllm_config: Any = None
        self.info: ModelInfo | None = None
        self._load = _LoadState()
        self._closed = False
        self._close_lock = threading.Lock()
        self._defaults: dict[str, Any] = {}
        self._eos_ids: set[int] = set()
        self._kv_mirror = KvCacheMirror()
        self._kv_subscribers: list[ZmqKvEventSubscriber] = []
        #: request ids streaming now (aborted when the engine closes under them)
        self._active: set[str] = set()

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> ModelInfo:
        if self.info is not None:
            return self.info
        if self._closed:
            raise EngineShutdown("the vLLM engine was closed")
        engine_args = self.args.engine_args
        try:
            vllm_config = engine_args.create_engine_config(UsageContext.OPENAI_API_SERVER)
        except (ValueError, TypeError) as exc:  # bad values: a start-up error, not an engine crash
            raise PluginError(f"invalid vLLM configuration: {exc}") from exc
        state = self._load

        def stat_logger(config: Any, engine_index: int = 0) -> _LoadStatLogger:
            return _LoadStatLogger(config, engine_index, state=state)

        self.vllm_config = vllm_config
        self.llm = AsyncLLM.from_vllm_config(
            vllm_config,
            usage_context=UsageContext.OPENAI_API_SERVER,
            stat_loggers=[stat_logger],
            enable_log_requests=bool(getattr(engine_args, "enable_log_requests", False)),
            disable_log_stats=bool(getattr(engine_args, "disable_log_stats", False)),
        )
        self.info = self._model_info()
        self._defaults = self._sampling_defaults()
        self._eos_ids = self._model_eos_ids()
        self._start_kv_events()
        return self.info

    def _start_kv_events(self) -> None:
        """Follow vLLM's KV-event publisher(s) from now on, into the cache mirror (and its sink)."""
        assert self.info is not None
        for source in self.kv_event_sources():
            bridge = KvEventBridge(self._kv_mirror, expected_block_size=self.info.kv_block_size)
            sub = ZmqKvEventSubscriber(source, self._kv_mirror, bridge=bridge)
            sub.start()
            self._kv_subscribers.append(sub)

    def _model_info(self) -> ModelInfo:
        cfg = self.llm.vllm_config if self.llm is not None else self.vllm_config
        model_config, cache_config, sched = cfg.model_config, cfg.cache_config, cfg.scheduler_config
        served = model_config.served_model_name
        if isinstance(served, (list, tuple)):
            served = served[0] if served else None
        model_path = (
            _local_dir(getattr(model_config, "tokenizer", None))
            or _local_dir(model_config.model)
            or model_config.model
        )
        blocks = getattr(cache_config, "num_gpu_blocks", None)
        return ModelInfo(
            served_model_name=str(served or self.ctx.model_name or model_config.model),
            model_path=str(model_path),
            context_length=int(model_config.max_model_len),
            kv_block_size=int(cache_config.block_size),
            total_kv_blocks=int(blocks) if blocks else None,
            max_num_seqs=getattr(sched, "max_num_seqs", None),
            max_num_batched_tokens=getattr(sched, "max_num_batched_tokens", None),
        )

    def _sampling_defaults(self) -> dict[str, Any]:
        """The model's generation_config sampling defaults, applied where a request sets nothing."""
        try:
            diff = self.vllm_config.model_config.get_diff_sampling_param() or {}
        except Exception:  # pragma: no cover - depends on the model files
            return {}
        return {k: v for k, v in diff.items() if k in _SAMPLING_FIELDS}

    def _model_eos_ids(self) -> set[int]:
        ids: set[int] = set()
        try:
            tok = self.llm.get_tokenizer() if self.llm is not None else None
            if tok is not None and getattr(tok, "eos_token_id", None) is not None:
                ids.add(int(tok.eos_token_id))
        except Exception:  # pragma: no cover
            pass
        try:
            gen = self.vllm_config.model_config.try_get_generation_config() or {}
            eos = gen.get("eos_token_id")
            ids.update([eos] if isinstance(eos, int) else list(eos or []))
        except Exception:  # pragma: no cover
            pass
        return ids

    async def check_health(self) -> None:
        llm = self._require()
        try:
            await llm.check_health()
        except Exception as exc:
            raise EngineError(f"vLLM engine is unhealthy: {exc or type(exc).__name__}") from exc

    async def aclose(self) -> None:
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
        llm = self.llm
        if llm is not None and self._active:
            # Streams still open (the host's drain timed out): end them as EngineShutdown, so the
            # frontend may migrate them, rather than leave them hanging on a dead engine.
            try:
                await llm.abort(list(self._active))
                await asyncio.sleep(0)  # let them see their abort before the engine goes
            except Exception:  # pragma: no cover
                log.debug("aborting in-flight requests failed", exc_info=True)
        subs, self._kv_subscribers = self._kv_subscribers, []
        self._kv_mirror.sink = None
        for sub in subs:
            try:
                await sub.aclose()
            except Exception:  # pragma: no cover
                log.exception("closing the KV event subscriber failed")
        llm, self.llm = self.llm, None
        if llm is not None:
            try:
                llm.shutdown()
            except Exception:  # pragma: no cover - best effort
                log.exception("vLLM shutdown failed")
        if self.args.ipc_dir:
            shutil.rmtree(self.args.ipc_dir, ignore_errors=True)

    def _require(self) -> AsyncLLM:
        if self._closed:
            raise EngineShutdown("the vLLM engine is shut down")
        if self.llm is None:
            raise EngineError("the vLLM engine is not started")
        return self.llm

    # -- requests ---------------------------------------------------------------------------------

    def _sampling_params(self, request: GenerateRequest) -> SamplingParams:
        s, stop, out = request.sampling, request.stop, request.output
        kw: dict[str, Any] = dict(self._defaults)
        for name in _SAMPLING_FIELDS:
            value = getattr(s, name)
            if value is not None:
                kw[name] = value
        if stop.max_tokens is not None:
            kw["max_tokens"] = stop.max_tokens
        else:
            kw["max_tokens"] = None  # vLLM: up to the context length
        if stop.min_tokens is not None:
            kw["min_tokens"] = stop.min_tokens
        stop_ids = list(stop.stop_token_ids)
        if not stop.ignore_eos:
            # EOS ids the frontend knows of but the engine may not (e.g. a chat template's end token)
            stop_ids += [t for t in request.eos_token_ids if t not in self._eos_ids and t not in stop_ids]
        if stop_ids:
            kw["stop_token_ids"] = stop_ids
        if stop.ignore_eos:
            kw["ignore_eos"] = True
        if out.logprobs is not None:
            kw["logprobs"] = out.logprobs
        try:
            return SamplingParams(
                **kw, output_kind=RequestOutputKind.DELTA, detokenize=False, skip_special_tokens=False
            )
        except (ValueError, TypeError) as exc:
            raise InvalidRequest(f"invalid sampling options: {exc}") from exc

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:  # type: ignore[override]
        llm = self._require()
        if not request.token_ids:
            raise InvalidRequest("the prompt has no tokens", param="token_ids")
        prompt_tokens = len(request.token_ids)
        context = self.info.context_length if self.info else 0
        if context and prompt_tokens >= context:
            raise InvalidRequest(
                f"the prompt has {prompt_tokens} tokens but the context length is {context}",
                param="messages",
            )
        max_tokens = request.stop.max_tokens
        if max_tokens is not None and context and prompt_tokens + max_tokens > context:
            raise InvalidRequest(
                f"max_tokens={max_tokens} does not fit: the prompt has {prompt_tokens} tokens "
                f"and the context length is {context}",
                param="max_tokens",
            )
        sp = self._sampling_params(request)
        eos_ids = self._eos_ids | set(request.eos_token_ids)
        completion = 0
        finished = False
        stream: Any = None
        self._active.add(request.request_id)
        try:
            prompt = await self._engine_input(llm, request.token_ids)
            stream = llm.generate(prompt, sp, request.request_id)
            async for res in stream:
                if not res.outputs:
                    continue
                out = res.outputs[0]
                ids = list(out.token_ids)
                reason = _finish_reason(out, eos_ids) if res.finished else None
                stopped = reason in (FinishReason.STOP, FinishReason.EOS)
                if stopped and ids and _is_stop_token(out, ids[-1], eos_ids):
                    ids.pop()  # the matched stop/EOS token is not output (vLLM's text leaves it out too)
                completion += len(ids)
                delta = Delta(ids)
                if out.logprobs and sp.logprobs is not None:
                    delta.logprobs, top = self._logprobs(ids, out.logprobs)
                    if sp.logprobs > 0:
                        delta.top_logprobs = top
                if res.finished:
                    finished = True
                    if reason is FinishReason.CANCELLED and self._closed:
                        raise EngineShutdown("the vLLM engine shut down during the request")
                    delta.finish_reason = reason
                    delta.usage = Usage(
                        prompt_tokens=len(res.prompt_token_ids or ()) or prompt_tokens,
                        completion_tokens=completion,
                        cached_tokens=int(res.num_cached_tokens or 0),
                    )
                    yield delta
                    return
                if ids:
                    yield delta
        except EngineShutdown:
            raise
        except EngineDeadError as exc:
            raise EngineShutdown(f"the vLLM engine died: {exc}") from exc
        except (VLLMClientError, GracefulHTTPError, ValueError) as exc:
            raise InvalidRequest(str(exc)) from exc
        except EngineGenerateError as exc:
            raise EngineError(f"vLLM failed the request: {exc.__cause__ or exc}") from exc
        finally:
            self._active.discard(request.request_id)
            # The consumer stopped early (GeneratorExit / CancelledError): release the request.
            if not finished and stream is not None:
                await self._release(stream, request.request_id)

    async def _engine_input(self, llm: AsyncLLM, token_ids: list[int]) -> Any:
        """The prompt as vLLM's renderer makes it (validated against the context length).

        Newer vLLM deprecates handing raw prompts to ``generate``; older releases have no
        renderer, and take the ``TokensPrompt`` itself.
        """
        prompt = TokensPrompt(prompt_token_ids=list(token_ids))
        render = getattr(getattr(llm, "renderer", None), "render_cmpl_async", None)
        if render is None:
            return prompt
        (engine_input,) = await render([prompt])
        return engine_input

    async def _release(self, stream: Any, request_id: str) -> None:
        try:
            await stream.aclose()  # vLLM's generate aborts the request itself on GeneratorExit
        except Exception:  # pragma: no cover
            pass
        llm = self.llm
        if llm is not None:
            try:
                await asyncio.shield(llm.abort(request_id))
            except Exception:  # pragma: no cover - unknown ids are fine
                pass

    @staticmethod
    def _logprobs(ids: list[int], positions: Any) -> tuple[list[float], list[dict[int, float]]]:
        sampled: list[float] = []
        top: list[dict[int, float]] = []
        for tok, pos in zip(ids, positions, strict=False):  # positions may hold the dropped stop token
            entries = {int(t): float(lp.logprob) for t, lp in (pos or {}).items()}
            sampled.append(entries.get(tok, float("nan")))
            top.append(entries)
        return sampled, top

    async def abort(self, request_id: str) -> None:
        llm = self.llm
        if llm is None or self._closed:
            return
        try:
            await llm.abort(request_id)
        except Exception:  # unknown or finished ids are ignored
            log.debug("abort of %s failed", request_id, exc_info=True)

    # -- capabilities -----------------------------------------------------------------------------

    def load_metrics(self) -> LoadMetrics:
        """Running/waiting counts from vLLM's scheduler stats, KV usage in blocks.

        Stats arrive with engine outputs; after the last request ends (or is aborted) the scheduler
        may send no further stats, so when vLLM's output processor tracks no request the engine is
        idle whatever the last stats said.
        """
        llm = self.llm
        total = (self.info.total_kv_blocks or 0) if self.info else 0
        s = self._load
        if llm is None:
            return LoadMetrics(kv_total_blocks=total)
        unfinished = llm.get_num_unfinished_requests()
        if unfinished == 0:
            running = waiting = 0
        else:
            running = min(s.running, unfinished)
            waiting = min(s.waiting, unfinished - running)
            if running + waiting == 0:  # admitted but not yet seen by the scheduler
                waiting = unfinished
        return LoadMetrics(
            active_requests=running,
            waiting_requests=waiting,
            kv_used_blocks=int(round(total * s.kv_usage)),
            kv_total_blocks=total,
        )

    def set_kv_event_sink(self, sink: Any) -> None:
        """``PublishesKvEvents``: pass every prefix-cache change to ``sink`` from now on."""
        self._kv_mirror.sink = sink

    def kv_snapshot(self) -> list[Any]:
        """``PublishesKvEvents``: the cache as it is now, as ``STORED`` events (parents first)."""
        return self._kv_mirror.snapshot()

    def kv_event_sources(self) -> list[KvEventSource]:
        """Where this engine's KV events can be read: one SUB endpoint per data-parallel rank."""
        llm = self.llm
        if llm is None:
            return []
        try:
            sources = llm.get_kv_event_sources()
        except AttributeError:  # older vLLM: derive from our own config
            cfg = self.args.engine_args.kv_events_config
            sources = {0: cfg} if cfg is not None and cfg.enable_kv_cache_events else {}
        result = []
        for rank, cfg in sorted(sources.items()):
            if cfg is None or not cfg.enable_kv_cache_events or cfg.publisher != "zmq":
                continue
            result.append(
                KvEventSource(
                    endpoint=_connectable(cfg.endpoint),
                    topic=cfg.topic or "",
                    replay_endpoint=_connectable(cfg.replay_endpoint) if cfg.replay_endpoint else None,
                    dp_rank=int(rank),
                )
            )
        return result


def _connectable(endpoint: str) -> str:
    """A bind address (``tcp://*:5557``) as one this host can connect to."""
    return endpoint.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")
