"""Fake SGLang scheduler: a toy model stepped in an asyncio task instead of a GPU subprocess.

It batches up to ``max_running_requests`` requests, makes one token per request per step, keeps a
page-granular prefix cache (``mem_cache/radix_cache.py``) for ``cached_tokens``, and reports each step
like SGLang's ``BatchTokenIDOutput`` (skip_tokenizer_init): per request the new ids (a matched stop
token included), the finish reason as a dict, and the token counts. As SGLang's scheduler does, it
caches a request's prompt when admitting it and its prompt and output (less the last token, whose KV
was never computed) when it finishes, and with ``--kv-events-config`` publishes the cache's events
after each step (``disaggregation/kv_events.py``). One scheduler: data-parallel ranks are not modelled.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import deque
from collections.abc import Callable

from sglang.srt.mem_cache.radix_cache import RadixCache
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs

#: the toy model's end-of-sequence token id (never produced unless ``fake_eos_after`` says so)
EOS_TOKEN_ID = 2
#: context length of the toy model when ``--context-length`` is not given
DEFAULT_CONTEXT_LENGTH = 4096
VOCAB_SIZE = 32000
#: seconds per engine step
STEP_S = 0.001
#: test hook: emit EOS as the N-th generated token (None: never)
fake_eos_after: int | None = None


def toy_token(prompt: list[int], position: int) -> int:
    seed = sum((i + 1) * t for i, t in enumerate(prompt)) % 4093
    return 100 + (seed + 7 * position) % 1900


@dataclasses.dataclass
class Req:
    rid: str
    origin_input_ids: list[int]
    sampling_params: SamplingParams
    output_ids: list[int] = dataclasses.field(default_factory=list)
    cached_tokens: int = 0
    to_abort: bool = False
    finished_reason: dict | None = None

    def check_finished(self) -> None:
        if self.to_abort:
            self.finished_reason = {
                "type": "abort",
                "message": "Abort by user",
                "status_code": None,
                "err_type": None,
            }
            return
        if len(self.output_ids) >= self.sampling_params.max_new_tokens:
            self.finished_reason = {"type": "length", "length": self.sampling_params.max_new_tokens}
            return
        last = self.output_ids[-1]
        if not self.sampling_params.ignore_eos:  # SGLang: ignore_eos also disables stop_token_ids
            stop_ids = self.sampling_params.stop_token_ids or set()
            if last in stop_ids or last == EOS_TOKEN_ID:
                self.finished_reason = {"type": "stop", "matched": last}


#: (rid, new output ids, finish reason, prompt tokens, completion tokens, cached tokens)
Output = tuple[str, list[int], dict | None, int, int, int]


class Scheduler:
    def __init__(self, server_args: ServerArgs, on_output: Callable[[list[Output]], None]) -> None:
        self.server_args = server_args
        resolved = server_args.resolved_dict()
        self.max_running = resolved["max_running_requests"] or 256
        self.page_size = resolved["page_size"]
        self.max_total_num_tokens = resolved["max_total_tokens"] or 65536
        self.on_output = on_output
        self.waiting: deque[Req] = deque()
        self.running: dict[str, Req] = {}
        self.tree_cache = RadixCache(
            self.page_size,
            self.max_total_num_tokens // self.page_size,
            enable_kv_cache_events=bool(server_args.kv_events_config),
        )
        self.kv_event_publisher = None
        if server_args.kv_events_config:
            from sglang.srt.disaggregation.kv_events import EventPublisherFactory

            self.kv_event_publisher = EventPublisherFactory.create(server_args.kv_events_config, 0)
        self.task: asyncio.Task | None = None
        self.dead = False

    def scheduler_info(self, context_len: int) -> dict:
        return {
            "status": "ready",
            "max_total_num_tokens": self.max_total_num_tokens,
            "max_req_input_len": context_len - 1,
        }

    def add(self, req: Req) -> None:
        self.waiting.append(req)
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self.loop())

    def abort(self, rid: str, abort_all: bool) -> None:
        for req in [*self.waiting, *self.running.values()]:
            if abort_all or req.rid == rid:
                req.to_abort = True

    def kill(self) -> None:
        self.dead = True
        if self.task is not None:
            self.task.cancel()
        if self.kv_event_publisher is not None:
            self.kv_event_publisher.shutdown()
            self.kv_event_publisher = None

    def flush_cache(self) -> bool:
        """Drop the prefix cache; refused (False) while requests run, as in SGLang."""
        if self.waiting or self.running:
            return False
        self.tree_cache.reset()
        self.publish_kv_events()
        return True

    def publish_kv_events(self) -> None:
        events = self.tree_cache.take_events()
        if events and self.kv_event_publisher is not None:
            from sglang.srt.disaggregation.kv_events import KVEventBatch

            self.kv_event_publisher.publish(KVEventBatch(ts=time.time(), events=events))

    async def loop(self) -> None:
        while self.waiting or self.running:
            self.admit()
            await asyncio.sleep(STEP_S)
            self.step()
            self.publish_kv_events()

    def admit(self) -> None:
        while self.waiting and len(self.running) < self.max_running:
            req = self.waiting.popleft()
            req.cached_tokens = self.tree_cache.match_prefix(req.origin_input_ids)
            self.tree_cache.insert(req.origin_input_ids)
            self.running[req.rid] = req

    def step(self) -> None:
        outputs: list[Output] = []
        for req in list(self.running.values()):
            new: list[int] = []
            if not req.to_abort:
                position = len(req.output_ids)
                eos_now = fake_eos_after is not None and position + 1 == fake_eos_after
                new = [EOS_TOKEN_ID if eos_now else toy_token(req.origin_input_ids, position)]
                req.output_ids.extend(new)
            req.check_finished()
            outputs.append(
                (
                    req.rid,
                    new,
                    req.finished_reason,
                    len(req.origin_input_ids),
                    len(req.output_ids),
                    req.cached_tokens,
                )
            )
            if req.finished_reason is not None:
                del self.running[req.rid]
                self.tree_cache.insert(req.origin_input_ids + req.output_ids[:-1])
        for req in [r for r in self.waiting if r.to_abort]:
            self.waiting.remove(req)
            req.check_finished()
            outputs.append((req.rid, [], req.finished_reason, len(req.origin_input_ids), 0, 0))
        if outputs:
            self.on_output(outputs)
