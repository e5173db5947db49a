"""The mocker: a simulated engine that needs no GPU and no weights.

It behaves like a vLLM engine from the outside: a scheduler with continuous batching and chunked
prefill (``scheduler.py``) over a paged KV cache with prefix caching (``kv_manager.py``), at the
speed of Dynamo's timing model divided by ``--speedup-ratio``. It reports cached prompt tokens,
publishes real KV events (``PublishesKvEvents``) and its load (``ReportsLoad``).

Tokens are deterministic from the request's seed (or its prompt) and drawn from the tokenizer's
word tokens, so responses read like (meaningless) words; max_tokens, min_tokens, stop token ids,
EOS and cancellation behave as the engine contract says.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import xxhash
from dynamo.mocker.config import DEFAULT_MODEL_PATH, MockerConfig
from dynamo.mocker.kv_manager import KvManager
from dynamo.mocker.scheduler import Scheduler, SchedulerConfig, Sequence
from dynamo.plugin.capabilities import KvEvent, KvEventSink, LoadMetrics
from dynamo.plugin.engine import Engine, EngineContext
from dynamo.plugin.errors import EngineError, EngineShutdown, InvalidRequest
from dynamo.plugin.types import Delta, GenerateRequest, ModelInfo

_WORD = re.compile(r"^Ġ[a-z]{2,}$")


def _word_token_ids(model_path: Path) -> tuple[list[int], int]:
    """(ids of plain word tokens, vocab size) read from ``tokenizer.json``."""
    data = json.loads((model_path / "tokenizer.json").read_text())
    vocab: dict[str, int] = data.get("model", {}).get("vocab", {})
    words = sorted(i for tok, i in vocab.items() if _WORD.match(tok))
    size = max(vocab.values(), default=0) + 1
    return (words or list(range(min(size, 1000)))), size


def _context_length(model_path: Path) -> int:
    try:
        cfg = json.loads((model_path / "config.json").read_text())
    except FileNotFoundError:
        return 8192
    text_cfg = cfg.get("text_config", {})
    return int(cfg.get("max_position_embeddings") or text_cfg.get("max_position_embeddings") or 8192)


class MockerEngine(Engine):
    def __init__(self, ctx: EngineContext) -> None:
        self.config = cfg = MockerConfig.from_argv(ctx.argv, ctx.kv_block_size)
        self.model_path = Path(ctx.model_path or DEFAULT_MODEL_PATH).resolve()
        default = ctx.model_path is None
        self.model_name = ctx.model_name or ("mocker" if default else self.model_path.name)
        self.kv = KvManager(cfg.num_gpu_blocks_override, cfg.block_size, cfg.enable_prefix_caching)
        self.scheduler = Scheduler(
            SchedulerConfig(
                max_num_seqs=cfg.max_num_seqs, max_num_batched_tokens=cfg.max_num_batched_tokens,
                watermark=cfg.watermark, speedup_ratio=cfg.speedup_ratio,
                decode_speedup_ratio=cfg.decode_speedup_ratio,
            ),
            self.kv,
        )
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._words: list[int] = []
        self.context_length = 0

    async def start(self) -> ModelInfo:
        if not (self.model_path / "tokenizer.json").is_file():
            raise EngineError(f"model directory {self.model_path} has no tokenizer.json")
        self._words, _ = _word_token_ids(self.model_path)
        self.context_length = _context_length(self.model_path)
        if self.config.startup_time:
            await asyncio.sleep(self.config.startup_time)
        self._task = asyncio.get_running_loop().create_task(self.scheduler.run(), name="mocker-scheduler")
        cfg = self.config
        return ModelInfo(
            served_model_name=self.model_name,
            model_path=str(self.model_path),
            context_length=self.context_length,
            kv_block_size=cfg.block_size,
            total_kv_blocks=cfg.num_gpu_blocks_override,
            max_num_seqs=cfg.max_num_seqs,
            max_num_batched_tokens=cfg.max_num_batched_tokens,
        )

    # -- the contract --------------------------------------------------------------------------
    def _validate(self, request: GenerateRequest) -> int:
        """The most tokens ``request`` may generate; raise ``InvalidRequest`` if it cannot be served."""
        prompt_len = len(request.token_ids)
        if prompt_len == 0:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if prompt_len >= self.context_length:
            raise InvalidRequest(
                f"the prompt has {prompt_len} tokens but the context length is {self.context_length}",
                param="messages",
            )
        if self.kv.blocks_for(prompt_len + 1) > self.kv.num_blocks:
            raise InvalidRequest(
                f"the prompt needs {self.kv.blocks_for(prompt_len + 1)} KV blocks but the cache has "
                f"{self.kv.num_blocks}", param="messages",
            )
        room = self.context_length - prompt_len
        max_tokens = request.stop.max_tokens
        if max_tokens is None:
            return room
        if max_tokens < 0:
            raise InvalidRequest("max_tokens must be non-negative", param="max_tokens")
        if max_tokens > room:
            raise InvalidRequest(
                f"the prompt has {prompt_len} tokens and max_tokens is {max_tokens}, beyond the context "
                f"length of {self.context_length}",
                param="max_tokens",
            )
        return max_tokens

    def _rng(self, request: GenerateRequest) -> random.Random:
        seed = request.sampling.seed
        if seed is None:  # same prompt, same answer: deterministic without a seed too
            tail = b"".join(t.to_bytes(4, "little") for t in request.token_ids[-64:])
            seed = xxhash.xxh3_64_intdigest(tail)
        return random.Random(seed)

    def _sequence(self, request: GenerateRequest, limit: int) -> Sequence:
        rng = self._rng(request)
        cfg, stop, top, words = self.config, request.stop, request.output.logprobs, self._words
        with_logprobs = None if top is None else (lambda token, step: _logprob_delta(token, step, top, words))
        return Sequence(
            request_id=request.request_id, tokens=list(request.token_ids), rng=rng, words=words, limit=limit,
            natural_len=rng.randint(cfg.min_output_len, cfg.max_output_len), min_tokens=stop.min_tokens or 0,
            ignore_eos=stop.ignore_eos, stop_ids=frozenset(stop.stop_token_ids), token_delta=with_logprobs,
        )

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if self._closed:
            raise EngineShutdown("the mocker engine is closed")
        seq = self._sequence(request, self._validate(request))
        if seq.request_id in self.scheduler.by_id:
            raise InvalidRequest(f"request id {seq.request_id!r} is already running", param="request_id")
        self.scheduler.add(seq)
        try:
            while True:
                delta = await seq.out.get()
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            if not seq.finished:  # the consumer went away: release the request
                self.scheduler.abort(seq.request_id)

    async def abort(self, request_id: str) -> None:
        self.scheduler.abort(request_id)

    async def check_health(self) -> None:
        if self._closed:
            raise EngineShutdown("the mocker engine is closed")
        if self._task is not None and self._task.done():
            raise EngineError("the mocker's scheduler stopped")

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self.scheduler.aclose()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    # -- optional abilities ---------------------------------------------------------------------
    def load_metrics(self) -> LoadMetrics:
        sched = self.scheduler
        return LoadMetrics(
            active_requests=sched.active, waiting_requests=len(sched.waiting),
            kv_used_blocks=self.kv.active_blocks, kv_total_blocks=self.kv.num_blocks,
        )

    def set_kv_event_sink(self, sink: KvEventSink | None) -> None:
        self.kv.sink = sink

    def kv_snapshot(self) -> list[KvEvent]:
        return self.kv.snapshot()


def _logprob_delta(token: int, step: int, top: int, words: list[int]) -> Delta:
    """Made-up but deterministic log-probabilities: the sampled token is the most likely one."""
    h = xxhash.xxh3_64_intdigest(token.to_bytes(4, "little") + step.to_bytes(4, "little"))
    lp = -round(0.01 + (h % 4000) / 1000, 3)
    alternatives = {token: lp}
    for i in range(1, 4 * top):
        if len(alternatives) >= top:
            break
        alternatives.setdefault(
            words[(h >> (i % 8 * 8)) % len(words) - i], round(lp - 0.5 * len(alternatives), 3)
        )
    return Delta([token], logprobs=[lp], top_logprobs=[alternatives] if top else None)
