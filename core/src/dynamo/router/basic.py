"""The basic routers: round-robin, random and least-loaded (fewest requests in flight)."""

from __future__ import annotations

import itertools
import random
from typing import TYPE_CHECKING

from dynamo.router.base import Router, RouteRequest, Worker

if TYPE_CHECKING:
    from dynamo.router.load import LoadMonitor


class RoundRobinRouter(Router):
    def __init__(self) -> None:
        self._counter = itertools.count()

    def select(self, workers: list[Worker], request: RouteRequest) -> Worker:
        return workers[next(self._counter) % len(workers)]


class RandomRouter(Router):
    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def select(self, workers: list[Worker], request: RouteRequest) -> Worker:
        return self._rng.choice(workers)


class LeastLoadedRouter(Router):
    """Fewest requests in flight; ties go to the least KV-used worker, then the earliest in the list.

    Requests in flight are this frontend's own, or, with a ``LoadMonitor``, what the worker last
    published when that is more (other frontends' requests, the engine's queue).
    """

    def __init__(self, monitor: LoadMonitor | None = None) -> None:
        self.monitor = monitor

    def select(self, workers: list[Worker], request: RouteRequest) -> Worker:
        if self.monitor is None or not self.monitor.loads:
            return min(workers, key=lambda w: w.in_flight)
        loads = self.monitor.loads

        def load(w: Worker) -> tuple[int, float]:
            report = loads.get(w.instance_id)
            if report is None:
                return w.in_flight, 0.0
            used = report.kv_used_blocks / report.kv_total_blocks if report.kv_total_blocks else 0.0
            return max(w.in_flight, report.active_requests), used

        return min(workers, key=load)

    def add_worker(self, worker: Worker) -> None:
        if self.monitor is not None:
            self.monitor.follow(worker)

    def remove_worker(self, instance_id: int) -> None:
        if self.monitor is not None:
            self.monitor.unfollow(instance_id)

    async def aclose(self) -> None:
        if self.monitor is not None:
            await self.monitor.aclose()
