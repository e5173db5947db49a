"""The mocker's scheduler: vLLM-style continuous batching over a simulated KV cache.

Each step has a token budget (``--max-num-batched-tokens``). Running sequences are served first,
in arrival order: a decoding sequence takes one token, a prefilling one a chunk of its remaining
prompt (chunked prefill). If the cache cannot hold a running sequence's next tokens, the most
recently admitted running sequence is preempted (its blocks released, recomputed later) until it
fits. Then, if nothing was preempted, waiting sequences are admitted in order while budget, the
``--max-num-seqs`` limit and memory (keeping a small watermark free) allow; admitting one first
takes its longest cached prefix, which it then does not compute.

A step lasts what the timing model says for its uncached prefill tokens and its decodes (at the
current KV utilisation), divided by the speed-up ratio; then every sequence whose known tokens
are all computed samples one token.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from dynamo.mocker import timing
from dynamo.mocker.kv_manager import BlockTable, KvManager
from dynamo.plugin.types import Delta, FinishReason, Usage

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Sequence:
    """One request inside the mocker: its tokens so far and how it samples the next one."""

    request_id: str
    tokens: list[int]
    rng: random.Random
    #: token ids it samples from
    words: list[int]
    #: the most tokens it may generate (max_tokens, capped by the context)
    limit: int
    #: the length at which it ends with EOS (unless ``ignore_eos``)
    natural_len: int
    min_tokens: int = 0
    ignore_eos: bool = False
    stop_ids: frozenset[int] = frozenset()
    prompt_len: int = 0
    num_computed: int = 0
    generated: int = 0
    cached_tokens: int | None = None
    finished: bool = False
    table: BlockTable = field(default_factory=BlockTable)
    out: asyncio.Queue[Delta] = field(default_factory=asyncio.Queue)
    #: builds the delta of one new token (the engine adds log-probabilities when asked)
    token_delta: Callable[[int, int], Delta] | None = None

    def __post_init__(self) -> None:
        self.prompt_len = len(self.tokens)

    def finish_before_sampling(self) -> FinishReason | None:
        """The reason to stop now, without drawing another token."""
        if self.generated >= self.limit:
            return FinishReason.LENGTH
        if self.generated >= self.natural_len and self.generated >= self.min_tokens and not self.ignore_eos:
            return FinishReason.EOS
        return None

    def sample(self) -> tuple[int | None, FinishReason | None]:
        """Draw the next token; ``(token or None, finish reason or None)``."""
        finish = self.finish_before_sampling()
        if finish is not None:
            return None, finish
        token = self.words[self.rng.randrange(len(self.words))]
        if token in self.stop_ids and self.generated >= self.min_tokens:
            return None, FinishReason.STOP  # the stop token is not part of the output
        self.generated += 1
        return token, self.finish_before_sampling()

    def delta(self, token: int) -> Delta:
        return Delta([token]) if self.token_delta is None else self.token_delta(token, self.generated)

    def usage(self) -> Usage:
        return Usage(prompt_tokens=self.prompt_len, completion_tokens=self.generated,
                     cached_tokens=self.cached_tokens or 0)


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    watermark: float = 0.01
    speedup_ratio: float = 1.0
    decode_speedup_ratio: float = 1.0


class Scheduler:
    def __init__(self, config: SchedulerConfig, kv: KvManager) -> None:
        self.config = config
        self.kv = kv
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.by_id: dict[str, Sequence] = {}
        self.preemptions = 0
        self.steps = 0
        self._wake = asyncio.Event()
        self._watermark_blocks = int(config.watermark * kv.num_blocks)

    # -- requests -------------------------------------------------------------------------------------
    def add(self, seq: Sequence) -> None:
        self.by_id[seq.request_id] = seq
        self.waiting.append(seq)
        self._wake.set()

    def abort(self, request_id: str) -> None:
        seq = self.by_id.get(request_id)
        if seq is not None:
            self.finish(seq, FinishReason.CANCELLED)

    def finish(self, seq: Sequence, reason: FinishReason, token: int | None = None) -> None:
        if seq.finished:
            return
        seq.finished = True
        self.by_id.pop(seq.request_id, None)
        if seq in self.running:
            self.running.remove(seq)
        else:
            try:
                self.waiting.remove(seq)
            except ValueError:
                pass
        self.kv.free(seq.table)
        delta = Delta([]) if token is None else seq.delta(token)
        delta.finish_reason, delta.usage = reason, seq.usage()
        seq.out.put_nowait(delta)

    @property
    def active(self) -> int:
        return len(self.running) + len(self.waiting)

    # -- the loop -------------------------------------------------------------------------------------
    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            if not self.running and not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                next_at = loop.time()
            batch = self.schedule()
            if not batch:
                self._wake.clear()
                await self._wake.wait()  # nothing fits now; wait for a request to end or arrive
                continue
            next_at = max(next_at, loop.time()) + self.step_seconds(batch)
            delay = next_at - loop.time()
            await asyncio.sleep(delay if delay > 5e-5 else 0)
            self.complete(batch)

    def schedule(self) -> list[tuple[Sequence, int]]:
        """Pick this step's work: ``(sequence, tokens to compute)`` pairs."""
        budget = self.config.max_num_batched_tokens
        batch: list[tuple[Sequence, int]] = []
        preempted = self._schedule_running(batch, budget)
        budget -= sum(n for _, n in batch)
        if not preempted:
            self._admit_waiting(batch, budget)
        self.steps += 1
        return batch

    def _schedule_running(self, batch: list[tuple[Sequence, int]], budget: int) -> bool:
        kv = self.kv
        preempted = False
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(len(seq.tokens) - seq.num_computed, budget)
            while not kv.allocate(seq.table, seq.num_computed + n):
                if len(self.running) == 1:  # alone and still too big: the cache cannot hold it
                    log.warning("request %s outgrew the KV cache (%d blocks)", seq.request_id, kv.num_blocks)
                    self.finish(seq, FinishReason.LENGTH)
                    return True
                victim = self.running.pop()
                self._preempt(victim)
                preempted = True
                if victim is seq:
                    return preempted
            batch.append((seq, n))
            budget -= n
            i += 1
        return preempted

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq.table)
        seq.num_computed = 0
        self.waiting.appendleft(seq)
        self.preemptions += 1
        log.debug("preempted %s (%d tokens) under KV memory pressure", seq.request_id, len(seq.tokens))

    def _admit_waiting(self, batch: list[tuple[Sequence, int]], budget: int) -> None:
        kv = self.kv
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            cached = kv.match_prefix(seq.table, seq.tokens)
            seq.num_computed = cached
            if seq.cached_tokens is None:
                seq.cached_tokens = cached
            n = min(len(seq.tokens) - seq.num_computed, budget)
            reserve = self._watermark_blocks if self.running else 0
            if not kv.allocate(seq.table, seq.num_computed + n, reserve):
                kv.free(seq.table)
                seq.num_computed = 0
                if not self.running and not batch:
                    self.finish(seq, FinishReason.LENGTH)  # cannot fit even in an empty cache
                    continue
                return
            self.waiting.popleft()
            self.running.append(seq)
            batch.append((seq, n))
            budget -= n

    def step_seconds(self, batch: list[tuple[Sequence, int]]) -> float:
        cfg = self.config
        prefill_tokens = 0
        decodes = 0
        for seq, n in batch:
            if n == 1 and seq.generated:
                decodes += 1
            else:
                prefill_tokens += n
        seconds = timing.prefill_seconds(prefill_tokens) / cfg.speedup_ratio
        if decodes:
            utilisation = self.kv.active_blocks / self.kv.num_blocks
            divisor = cfg.speedup_ratio * cfg.decode_speedup_ratio
            seconds += timing.decode_step_seconds(utilisation) / divisor
        return seconds

    def complete(self, batch: list[tuple[Sequence, int]]) -> None:
        """The step ran: advance every sequence in it, sample where a sequence is fully computed."""
        kv = self.kv
        for seq, n in batch:
            if seq.finished:
                continue  # aborted while the step ran
            seq.num_computed += n
            kv.commit(seq.table, seq.tokens, seq.num_computed)
            if seq.num_computed < len(seq.tokens):
                continue  # more prompt to prefill
            token, finish = seq.sample()
            if finish is not None:
                self.finish(seq, finish, token)
                continue
            assert token is not None
            seq.tokens.append(token)
            seq.out.put_nowait(seq.delta(token))

    async def aclose(self) -> None:
        for seq in list(self.by_id.values()):
            self.finish(seq, FinishReason.CANCELLED)
