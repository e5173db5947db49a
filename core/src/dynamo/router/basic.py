"""The basic routers: round-robin, random and least-loaded (fewest requests in flight)."""

from __future__ import annotations

import itertools
import random

from dynamo.router.base import RouteRequest, Router, Worker


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
    """Fewest in-flight requests from this frontend; ties go to the earliest in the list."""

    def select(self, workers: list[Worker], request: RouteRequest) -> Worker:
        return min(workers, key=lambda w: w.in_flight)
