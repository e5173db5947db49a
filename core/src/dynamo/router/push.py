"""Sends a request to the worker a router picked, over the request plane.

A worker that cannot be reached (connect refused: the request never left this process) is set
aside and the request goes to the next choice, so a worker killed a moment ago costs one failed
connect, never a failed request. Once a stream has started, losing the worker raises
``WorkerLost`` (migration, when enabled, is the frontend's job).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

from dynamo.plugin.errors import NoWorkersAvailable, WorkerUnreachable
from dynamo.plugin.types import Delta, GenerateRequest
from dynamo.router.base import RouteRequest, Router, Worker
from dynamo.runtime.transport import RequestPlaneClient

log = logging.getLogger(__name__)

#: how long an unreachable worker is skipped (discovery normally removes it well before)
SUSPEND_SECONDS = 10.0


class PushRouter:
    def __init__(self, router: Router, client: RequestPlaneClient, clock: Callable[[], float] = time.monotonic):
        self.router = router
        self.client = client
        self._suspended: dict[int, float] = {}
        self._clock = clock

    def suspend(self, worker: Worker) -> None:
        self._suspended[worker.instance_id] = self._clock() + SUSPEND_SECONDS

    def resume(self, instance_id: int) -> None:
        self._suspended.pop(instance_id, None)

    def candidates(self, workers: list[Worker], exclude: set[int] = frozenset()) -> list[Worker]:  # type: ignore[assignment]
        if not self._suspended and not exclude:
            return workers
        now = self._clock()
        for iid, until in list(self._suspended.items()):
            if until <= now:
                del self._suspended[iid]
        return [w for w in workers if w.instance_id not in self._suspended and w.instance_id not in exclude]

    async def generate(
        self, model: str, workers: Callable[[], list[Worker]], request: GenerateRequest,
        exclude: set[int] | None = None, on_worker: Callable[[Worker], None] | None = None,
    ) -> AsyncIterator[Delta]:
        """Route ``request`` among ``workers()`` and stream its deltas."""
        tried: set[int] = set(exclude or ())
        route = RouteRequest(request.request_id, request.token_ids)
        while True:
            pool = self.candidates(workers(), tried)
            if not pool:
                raise NoWorkersAvailable(f"no worker is available for model {model!r}", retry_after=1)
            worker = self.router.select(pool, route)
            tried.add(worker.instance_id)
            worker.in_flight += 1
            self.router.on_start(worker, route)
            started = False
            try:
                stream = self.client.generate(worker.record.transport, worker.record.endpoint, request)
                try:
                    async for delta in stream:
                        if not started:
                            started = True
                            if on_worker is not None:
                                on_worker(worker)
                        yield delta
                finally:
                    await stream.aclose()  # type: ignore[attr-defined]
                return
            except WorkerUnreachable as exc:
                if started:
                    raise
                log.warning("worker %x unreachable, trying another: %s", worker.instance_id, exc)
                self.suspend(worker)
                self.client.forget(worker.record.transport)
            finally:
                worker.in_flight -= 1
                self.router.on_end(worker, route)
