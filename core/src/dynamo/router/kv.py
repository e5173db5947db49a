"""KV-cache-aware routing: send a request where its prompt's prefix is cached, balanced by load.

For each candidate worker::

    prefill = blocks still being prefilled there by this router's requests + the prompt's blocks
    decode  = blocks held there by this router's requests in flight        + the prompt's blocks
    cost    = prefill_load_scale * max(prefill - overlap_credit * overlap, 0) + decode

where ``overlap`` is how many leading prompt blocks the worker holds (from the KV index). With
temperature 0 the lowest cost wins (ties go to the earlier worker in the candidate list); with
T > 0 the costs are min-max normalised and a worker is drawn from softmax(-cost / T).

The index is fed by the workers' KV events over the event plane (``kv_events.py`` keeps each
worker's stream in order and resynchronises from snapshots), or, in approximate mode
(``--no-router-kv-events``), by the router's own decisions with a TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
from dynamo.plugin.capabilities import LoadMetrics
from dynamo.router import metrics
from dynamo.router.base import Router, RouteRequest, Worker
from dynamo.router.hashing import sequence_hashes
from dynamo.router.kv_events import FeedState, WorkerFeed
from dynamo.router.kv_index import KvIndex, RoutedBlocks
from dynamo.router.load import ActiveLoad
from dynamo.runtime.events import EventPlaneError, EventSubscriber
from dynamo.runtime.events import messages as m

log = logging.getLogger(__name__)

__all__ = ["KvRouter", "KvRouterConfig", "kv_cost", "choose"]


@dataclass(frozen=True)
class KvRouterConfig:
    block_size: int
    overlap_score_credit: float = 1.0
    prefill_load_scale: float = 1.0
    temperature: float = 0.0
    use_kv_events: bool = True
    ttl_secs: float = 120.0
    max_tree_size: int = 2**20
    prune_target_ratio: float = 0.8
    snapshot_timeout: float = 5.0
    #: the model's name, for logs and metric labels
    model: str = ""

    @classmethod
    def from_settings(cls, settings: Any, block_size: int, model: str = "") -> KvRouterConfig:
        """From the frontend's settings (its ``router_*`` fields)."""
        return cls(
            block_size=block_size,
            overlap_score_credit=settings.router_kv_overlap_score_credit,
            prefill_load_scale=settings.router_prefill_load_scale,
            temperature=settings.router_temperature,
            use_kv_events=settings.router_kv_events,
            ttl_secs=settings.router_ttl_secs,
            max_tree_size=settings.router_max_tree_size,
            prune_target_ratio=settings.router_prune_target_ratio,
            model=model,
        )


def kv_cost(prefill_blocks: float, overlap_blocks: float, decode_blocks: float, *,
            overlap_credit: float = 1.0, prefill_load_scale: float = 1.0) -> float:
    """The cost of one worker (lower is better)."""
    return prefill_load_scale * max(prefill_blocks - overlap_credit * overlap_blocks, 0.0) + decode_blocks


def choose(costs: Sequence[float], temperature: float, rng: random.Random) -> int:
    """The index of the chosen cost: the first minimum at T=0, else a softmax draw."""
    lo = min(costs)
    if temperature <= 0:
        return costs.index(lo)
    spread = max(costs) - lo
    if spread <= 0:
        return rng.randrange(len(costs))
    weights = [math.exp(-(c - lo) / spread / temperature) for c in costs]
    return rng.choices(range(len(costs)), weights)[0]


@dataclass(slots=True)
class _Decision:
    hashes: list[int]
    prompt_blocks: float
    overlap: int


class KvRouter(Router):
    def __init__(self, config: KvRouterConfig, subscriber: EventSubscriber | None = None, *,
                 clock: Callable[[], float] = time.monotonic, rng: random.Random | None = None) -> None:
        self.config = config
        self.block_size = config.block_size
        self.index = KvIndex(config.block_size)
        self.active = ActiveLoad()
        self.loads: dict[int, LoadMetrics] = {}
        self.feeds: dict[int, WorkerFeed] = {}
        #: workers whose block size differs from the router's: never credited with a cache
        self.ignored: set[int] = set()
        self.routed: RoutedBlocks | None = None
        if not config.use_kv_events:
            self.routed = RoutedBlocks(self.index, config.ttl_secs, config.max_tree_size,
                                       config.prune_target_ratio, clock)
        self._subscriber = subscriber if config.use_kv_events else None
        if self._subscriber is not None:
            self._subscriber.start([m.KV_EVENTS, m.KV_METRICS], self.on_message, self._on_connect)
        self._rng = rng or random.Random()
        self._decisions: dict[str, _Decision] = {}
        self._resyncs: dict[int, asyncio.Task[None]] = {}
        self._model = config.model
        metrics.INDEXED_BLOCKS.labels(self._model).set_function(lambda: self.index.num_blocks)

    # -- workers ------------------------------------------------------------------------------------
    def add_worker(self, worker: Worker) -> None:
        iid = worker.instance_id
        card_size = worker.card.kv_cache_block_size
        mismatch = card_size != self.block_size
        if mismatch:
            log.error(
                "worker %x serves model %r with KV block size %d but this router hashes blocks of %d tokens "
                "(--kv-cache-block-size); its cache is IGNORED and it is routed to by load only",
                iid, worker.card.display_name, card_size, self.block_size,
            )
            self.ignored.add(iid)
        if not self.config.use_kv_events:
            return
        feed = WorkerFeed(iid, self.index, functools.partial(self._request_snapshot, iid), self._model)
        self.feeds[iid] = feed
        if mismatch:
            feed.ignore(f"model card block size {card_size} != {self.block_size}")
        if self._subscriber is not None and not self._subscriber.follow(iid, worker.record.transport):
            log.warning(
                "worker %x (engine %s) publishes no KV events on this event plane: KV routing sees it as "
                "having an empty cache (for engines without events use --no-router-kv-events)",
                iid, worker.card.engine or "?",
            )

    def remove_worker(self, instance_id: int) -> None:
        if self._subscriber is not None:
            self._subscriber.unfollow(instance_id)
        task = self._resyncs.pop(instance_id, None)
        if task is not None:
            task.cancel()
        self.feeds.pop(instance_id, None)
        self.ignored.discard(instance_id)
        self.loads.pop(instance_id, None)
        self.active.remove_worker(instance_id)
        if self.routed is not None:
            self.routed.remove_worker(instance_id)
        dropped = self.index.remove_worker(instance_id)
        log.info("KV router: worker %x left; dropped its %d indexed blocks", instance_id, dropped)

    # -- routing ------------------------------------------------------------------------------------
    def select(self, workers: list[Worker], request: RouteRequest) -> Worker:
        cfg = self.config
        hashes = sequence_hashes(request.token_ids, self.block_size)
        if self.routed is not None:
            self.routed.expire()
        overlaps = self.index.find_matches(hashes) if cfg.overlap_score_credit > 0 else {}
        prompt_blocks = len(request.token_ids) / self.block_size
        active = self.active
        credit, scale = cfg.overlap_score_credit, cfg.prefill_load_scale
        costs = [
            kv_cost(
                active.prefill_blocks(w.instance_id) + prompt_blocks,
                overlaps.get(w.instance_id, 0),
                active.decode_blocks(w.instance_id) + prompt_blocks,
                overlap_credit=credit,
                prefill_load_scale=scale,
            )
            for w in workers
        ]
        chosen = workers[choose(costs, cfg.temperature, self._rng)]
        overlap = overlaps.get(chosen.instance_id, 0)
        self._decisions[request.request_id] = _Decision(hashes, prompt_blocks, overlap)
        metrics.ROUTED.labels(self._model).inc()
        metrics.PROMPT_BLOCKS.labels(self._model).inc(len(hashes))
        metrics.OVERLAP_BLOCKS.labels(self._model).inc(overlap)
        if log.isEnabledFor(logging.DEBUG):
            self._log_decision(request, workers, overlaps, costs, chosen, len(hashes))
        return chosen

    @staticmethod
    def _log_decision(
        request: RouteRequest,
        workers: list[Worker],
        overlaps: dict[int, int],
        costs: list[float],
        chosen: Worker,
        blocks: int,
    ) -> None:
        detail = ", ".join(
            f"{w.instance_id:x}: overlap={overlaps.get(w.instance_id, 0)} cost={c:.2f}"
            for w, c in zip(workers, costs, strict=True)
        )
        log.debug("route %s (%d blocks) -> %x | %s", request.request_id, blocks, chosen.instance_id, detail)

    def on_start(self, worker: Worker, request: RouteRequest) -> None:
        decision = self._decisions.pop(request.request_id, None)
        if decision is None:
            return
        uncached = max(decision.prompt_blocks - decision.overlap, 0.0)
        self.active.add(
            request.request_id, worker.instance_id, decision.hashes, decision.prompt_blocks, uncached
        )
        if self.routed is not None and worker.instance_id not in self.ignored:
            self.routed.record(worker.instance_id, decision.hashes)

    def on_first_token(self, worker: Worker, request: RouteRequest) -> None:
        self.active.prefill_done(request.request_id)

    def on_end(self, worker: Worker, request: RouteRequest) -> None:
        self._decisions.pop(request.request_id, None)
        self.active.remove(request.request_id)

    # -- the event plane ----------------------------------------------------------------------------
    def on_message(self, topic: str, payload: bytes) -> None:
        if topic == m.KV_EVENTS:
            batch = m.decode_batch(payload)
            feed = self.feeds.get(batch.worker_id)
            if feed is not None:
                feed.on_events(batch.events)
        elif topic == m.KV_METRICS:
            report = m.decode_load(payload)
            if report.worker_id in self.feeds:
                self.loads[report.worker_id] = report.metrics

    def _on_connect(self, worker_id: int) -> None:
        feed = self.feeds.get(worker_id)
        if feed is not None:
            feed.resync("connected")

    def _request_snapshot(self, worker_id: int, reason: str) -> None:
        if self._subscriber is None or worker_id in self._resyncs:
            return
        task = asyncio.get_running_loop().create_task(
            self._resync(worker_id, reason), name=f"kv-resync-{worker_id:x}"
        )
        self._resyncs[worker_id] = task
        task.add_done_callback(lambda done: self._resync_done(worker_id, done))

    def _resync_done(self, worker_id: int, task: asyncio.Task[None]) -> None:
        if self._resyncs.get(worker_id) is task:
            del self._resyncs[worker_id]

    async def _resync(self, worker_id: int, reason: str) -> None:
        assert self._subscriber is not None
        delay = 0.1
        while True:
            feed = self.feeds.get(worker_id)
            if feed is None or feed.state is not FeedState.SYNCING:
                return
            try:
                payload = await self._subscriber.query(
                    worker_id, m.KV_SNAPSHOT, b"", self.config.snapshot_timeout
                )
                snapshot = m.decode_snapshot(payload)
            except (EventPlaneError, msgspec.DecodeError, msgspec.ValidationError) as exc:
                log.debug("worker %x: KV snapshot failed (%s); retrying in %.1fs", worker_id, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            feed.on_snapshot(snapshot.last_event_id, snapshot.events)
            metrics.RESYNCS.labels(self._model, reason).inc()
            log.info(
                "worker %x: KV index synchronised (%s): %d blocks as of event %d",
                worker_id,
                reason,
                self.index.blocks_of(worker_id),
                snapshot.last_event_id,
            )
            reason, delay = "gap", 0.1  # replaying the buffer may have found a new gap: loop checks

    async def aclose(self) -> None:
        tasks = list(self._resyncs.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._subscriber is not None:
            await self._subscriber.aclose()
