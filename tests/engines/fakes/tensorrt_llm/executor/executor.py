"""Fake TensorRT-LLM executor: a toy model stepped in an asyncio task instead of GPU workers.

In-flight batching of up to ``max_batch_size`` requests, one token per request per iteration, one
stats record per iteration (when ``enable_iter_perf_stats``), shaped like ``IterationStats``, and,
with ``event_buffer_max_size > 0`` and block reuse, KV cache events (``kv_cache.py``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
from collections import deque

from tensorrt_llm.executor.kv_cache import BlockPool
from tensorrt_llm.executor.result import GenerationResult, IterationResult
from tensorrt_llm.llmapi.llm_args import TorchLlmArgs

STEP_S = 0.001
MAX_NUM_BLOCKS = 4096
#: test hook: emit the end id as the N-th generated token (None: never)
fake_eos_after: int | None = None


def toy_token(prompt: list[int], position: int) -> int:
    seed = sum((i + 1) * t for i, t in enumerate(prompt)) % 4093
    return 100 + (seed + 7 * position) % 1900


@dataclasses.dataclass
class Response:
    output_token_ids: list[int]
    is_final: bool
    finish_reason: str | None = None  # END_ID, STOP_WORDS, LENGTH, TIMED_OUT, CANCELLED
    error: str | None = None


@dataclasses.dataclass
class _Request:
    result: GenerationResult
    max_seq_len: int
    generated: int = 0
    cancelled: bool = False
    output: list[int] = dataclasses.field(default_factory=list)


class ToyExecutor:
    def __init__(self, args: TorchLlmArgs, max_seq_len: int) -> None:
        self.args = args
        self.max_seq_len = max_seq_len
        self.ids = itertools.count(1)
        self.waiting: deque[_Request] = deque()
        self.active: dict[int, _Request] = {}
        self.task: asyncio.Task | None = None
        self.stats = IterationResult()
        kv = args.kv_cache_config
        self.block_pool: BlockPool | None = None
        if kv.event_buffer_max_size > 0 and kv.enable_block_reuse:
            max_blocks = kv.max_tokens // kv.tokens_per_block if kv.max_tokens else MAX_NUM_BLOCKS
            buffer = kv.event_buffer_max_size
            self.block_pool = BlockPool(kv.tokens_per_block, max_blocks, max_seq_len, buffer)
        self.iteration = 0
        self._shutdown = False

    def is_shutdown(self) -> bool:
        return self._shutdown

    def submit(self, result: GenerationResult) -> None:
        self.waiting.append(_Request(result, self.max_seq_len))
        self.stats.mark_undone()
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.loop())

    def abort_request(self, request_id: int) -> None:
        for req in [*self.waiting, *self.active.values()]:
            if req.result.request_id == request_id:
                req.cancelled = True

    def shutdown(self) -> None:
        self._shutdown = True
        if self.task is not None:
            self.task.cancel()

    async def loop(self) -> None:
        while self.waiting or self.active:
            while self.waiting and len(self.active) < (self.args.max_batch_size or 2048):
                req = self.waiting.popleft()
                self.active[req.result.request_id] = req
                if self.block_pool is not None:  # its context (the prompt) is computed now
                    self.block_pool.store(req.result.prompt_token_ids, partial=False)
            await asyncio.sleep(STEP_S)
            for request_id, req in list(self.active.items()):
                response = self.step(req)
                req.result.aqueue.put_nowait(response)
                if response.is_final:
                    del self.active[request_id]
                    self.release(req, error=response.error is not None)
            self.record_stats()

    def release(self, req: _Request, *, error: bool) -> None:
        """A finished request's blocks become reusable (the last token's KV was never computed)."""
        if self.block_pool is None or error:
            return
        computed = req.result.prompt_token_ids + req.output[:-1]
        self.block_pool.store(computed, partial=self.args.kv_cache_config.enable_partial_reuse)

    def step(self, req: _Request) -> Response:
        result, params = req.result, req.result.sampling_params
        prompt = result.prompt_token_ids
        if req.cancelled:
            return Response([], True, "CANCELLED")
        if len(prompt) + params.max_tokens > req.max_seq_len:
            return Response(
                [], True, error=f"prompt ({len(prompt)}) + max_tokens exceeds max_seq_len ({req.max_seq_len})"
            )
        position = req.generated
        end_id = -1 if params.ignore_eos else params.end_id
        token = (
            end_id
            if fake_eos_after is not None and position + 1 == fake_eos_after
            else toy_token(prompt, position)
        )
        req.generated += 1
        req.output.append(token)
        if token == end_id:
            return Response([], True, "END_ID")  # the end id is not part of the output
        if token in (params.stop_token_ids or []):
            return Response([token], True, "STOP_WORDS")
        if req.generated >= params.max_tokens:
            return Response([token], True, "LENGTH")
        return Response([token], False)

    def record_stats(self) -> None:
        self.iteration += 1
        if not self.args.enable_iter_perf_stats:
            return
        tpb = self.args.kv_cache_config.tokens_per_block
        used = sum(-(-(len(r.result.prompt_token_ids) + r.generated) // tpb) for r in self.active.values())
        stats = {
            "iter": self.iteration,
            "iterLatencyMS": STEP_S * 1000,
            "gpuMemUsage": 0,
            "numActiveRequests": len(self.active),
            "numQueuedRequests": len(self.waiting),
            "numCompletedRequests": 0,
            "maxNumActiveRequests": self.args.max_batch_size,
            "kvCacheStats": {
                "maxNumBlocks": MAX_NUM_BLOCKS,
                "freeNumBlocks": MAX_NUM_BLOCKS - used,
                "usedNumBlocks": used,
                "tokensPerBlock": tpb,
                "allocTotalBlocks": used,
                "allocNewBlocks": 0,
                "reusedBlocks": 0,
                "cacheHitRate": 0.0,
            },
            "inflightBatchingStats": {
                "numScheduledRequests": len(self.active),
                "numContextRequests": 0,
                "numGenRequests": len(self.active),
                "numPausedRequests": 0,
            },
        }
        self.stats.aqueue.put_nowait(json.dumps(stats))
