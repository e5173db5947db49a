"""The mocker: a simulated engine that needs no GPU and no weights.

It produces tokens deterministically from the request's seed (or its prompt), at the speed of a
simple timing model divided by ``--speedup-ratio``, and honours max_tokens, min_tokens, stop token
ids, EOS, cancellation and many concurrent requests. Tokens are drawn from the tokenizer's word
tokens, so responses read like (meaningless) words.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator
from pathlib import Path

import xxhash

from dynamo.plugin.capabilities import LoadMetrics
from dynamo.plugin.engine import Engine, EngineContext
from dynamo.plugin.errors import EngineError, InvalidRequest
from dynamo.plugin.types import Delta, FinishReason, GenerateRequest, ModelInfo, Usage
from dynamo.mocker import timing
from dynamo.mocker.config import DEFAULT_MODEL_PATH, MockerConfig

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
        self.config = MockerConfig.from_argv(ctx.argv, ctx.kv_block_size)
        self.model_path = Path(ctx.model_path or DEFAULT_MODEL_PATH).resolve()
        default = ctx.model_path is None
        self.model_name = ctx.model_name or ("mocker" if default else self.model_path.name)
        self._active: dict[str, asyncio.Event] = {}
        self._kv_tokens = 0
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
        prompt_len = len(request.token_ids)
        if prompt_len == 0:
            raise InvalidRequest("the prompt is empty", param="prompt")
        if prompt_len >= self.context_length:
            raise InvalidRequest(
                f"the prompt has {prompt_len} tokens but the context length is {self.context_length}",
                param="messages",
            )
        room = self.context_length - prompt_len
        max_tokens = request.stop.max_tokens
        if max_tokens is None:
            return room
        if max_tokens < 0:
            raise InvalidRequest("max_tokens must be non-negative", param="max_tokens")
        return min(max_tokens, room)

    def _rng(self, request: GenerateRequest) -> random.Random:
        seed = request.sampling.seed
        if seed is None:  # same prompt, same answer: deterministic without a seed too
            seed = xxhash.xxh3_64_intdigest(b"".join(t.to_bytes(4, "little") for t in request.token_ids[-64:]))
        return random.Random(seed)

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        if self._closed:
            raise EngineError("the mocker engine is closed")
        limit = self._validate(request)
        rid = request.request_id
        stop_ids = set(request.stop.stop_token_ids)
        rng = self._rng(request)
        cfg = self.config
        natural_len = rng.randint(cfg.min_output_len, cfg.max_output_len)
        min_tokens = request.stop.min_tokens or 0
        ignore_eos = request.stop.ignore_eos
        prompt_len = len(request.token_ids)
        cancel = asyncio.Event()
        self._active[rid] = cancel
        self._kv_tokens += prompt_len
        generated = 0
        finish: FinishReason | None = None
        try:
            await self._sleep(timing.prefill_seconds(prompt_len) / cfg.speedup_ratio)
            while finish is None:
                if cancel.is_set():
                    finish = FinishReason.CANCELLED
                    break
                if generated >= limit:
                    finish = FinishReason.LENGTH
                    break
                if generated >= natural_len and generated >= min_tokens and not ignore_eos:
                    finish = FinishReason.EOS
                    break
                token = self._words[rng.randrange(len(self._words))]
                if token in stop_ids and generated >= min_tokens:
                    finish = FinishReason.STOP
                    break
                generated += 1
                self._kv_tokens += 1
                yield Delta([token])
                step = timing.decode_step_seconds(self._kv_utilisation())
                await self._sleep(step / (cfg.speedup_ratio * cfg.decode_speedup_ratio))
            yield Delta([], finish, Usage(prompt_tokens=prompt_len, completion_tokens=generated))
        finally:
            self._kv_tokens -= prompt_len + generated
            self._active.pop(rid, None)

    @staticmethod
    async def _sleep(seconds: float) -> None:
        # below ~50 us a timer costs more than it simulates: just yield to the loop
        await asyncio.sleep(seconds if seconds > 5e-5 else 0)

    def _kv_utilisation(self) -> float:
        total = self.config.num_gpu_blocks_override * self.config.block_size
        return self._kv_tokens / total if total else 0.0

    async def abort(self, request_id: str) -> None:
        event = self._active.get(request_id)
        if event is not None:
            event.set()

    async def check_health(self) -> None:
        if self._closed:
            raise EngineError("the mocker engine is closed")

    async def aclose(self) -> None:
        self._closed = True
        for event in self._active.values():
            event.set()

    # -- optional abilities ---------------------------------------------------------------------
    def load_metrics(self) -> LoadMetrics:
        cfg = self.config
        used = -(-self._kv_tokens // cfg.block_size)
        return LoadMetrics(
            active_requests=len(self._active), waiting_requests=0,
            kv_used_blocks=used, kv_total_blocks=cfg.num_gpu_blocks_override,
        )
