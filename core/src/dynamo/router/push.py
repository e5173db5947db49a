"""Sends a request to the worker a router picked, over the request plane, and keeps it alive.

- A worker that cannot take the request before anything was generated (connect refused, draining,
  at its request limit) is set aside and the request goes to the next choice: that is always safe,
  since the engine never started it. Counted as a ``new_request`` migration.
- A worker lost mid-stream (no end-of-stream frame, or the engine shutting down) is set aside as
  well; with ``migration_limit > 0`` the request is resent to another worker with the tokens
  generated so far appended to the prompt and ``max_tokens`` reduced, so the caller sees one
  continuous stream (an ``ongoing_request`` migration). Without it, ``WorkerLost`` is raised.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable

import msgspec
from prometheus_client import Counter

from dynamo.plugin.errors import (
    EngineShutdown, NoWorkersAvailable, Overloaded, WorkerLost, WorkerUnreachable,
)
from dynamo.plugin.types import Delta, FinishReason, GenerateRequest, Usage
from dynamo.router.base import RouteRequest, Router, Worker
from dynamo.runtime.transport import RequestPlaneClient

log = logging.getLogger(__name__)

#: how long a worker that failed is skipped (discovery normally removes a dead one well before)
SUSPEND_SECONDS = 10.0
#: request extras whose decoding state cannot be rebuilt on another worker
UNMIGRATABLE = ("response_format", "guided_json", "guided_regex", "guided_grammar", "guided_choice")

MIGRATIONS = Counter(
    "dynamo_frontend_model_migration_total", "Requests moved to another worker",
    ["model", "migration_type"],
)

#: errors that mean "this worker did not start the request": try another one
_NOT_STARTED = (WorkerUnreachable, EngineShutdown, Overloaded)


class PushRouter:
    def __init__(self, client: RequestPlaneClient, migration_limit: int = 0,
                 clock: Callable[[], float] = time.monotonic):
        self.client = client
        self.migration_limit = migration_limit
        self._suspended: dict[int, float] = {}
        self._clock = clock

    def suspend(self, worker: Worker) -> None:
        self._suspended[worker.instance_id] = self._clock() + SUSPEND_SECONDS

    def resume(self, instance_id: int) -> None:
        self._suspended.pop(instance_id, None)

    def candidates(self, workers: list[Worker], exclude: set[int]) -> list[Worker]:
        if not self._suspended and not exclude:
            return workers
        now = self._clock()
        for iid, until in list(self._suspended.items()):
            if until <= now:
                del self._suspended[iid]
        return [w for w in workers if w.instance_id not in self._suspended and w.instance_id not in exclude]

    async def generate(self, model: str, router: Router, workers: Callable[[], list[Worker]],
                       request: GenerateRequest, on_worker: Callable[[Worker], None] | None = None,
                       ) -> AsyncIterator[Delta]:
        """Route ``request`` with ``router`` among ``workers()`` and stream its deltas, migrating when allowed."""
        tried: set[int] = set()
        generated: list[int] = []
        migrations = 0
        current = request
        while True:
            worker_box: list[Worker] = []
            try:
                async for delta in self._attempt(model, router, workers, current, tried, worker_box, on_worker):
                    if delta.token_ids:
                        generated.extend(delta.token_ids)
                    if delta.finish_reason is not None and current is not request:
                        delta = self._fix_usage(delta, request, generated)
                    yield delta
                return
            except (WorkerLost, EngineShutdown) as exc:
                if worker_box:
                    self.suspend(worker_box[0])
                if migrations >= self.migration_limit:
                    raise WorkerLost(f"the worker serving this request was lost: {exc.message}") from exc
                if any(key in request.extra for key in UNMIGRATABLE):
                    raise WorkerLost(
                        "the worker serving this request was lost, and requests with structured output "
                        "cannot be migrated (their decoding state cannot be restored)"
                    ) from exc
                migrations += 1
                MIGRATIONS.labels(model, "ongoing_request").inc()
                log.warning("request %s: worker lost after %d tokens (%s); migrating (%d/%d)",
                            request.request_id, len(generated), exc.message, migrations, self.migration_limit)
                continuation = self._continuation(request, generated)
                if continuation is None:  # nothing left to generate
                    yield self._fix_usage(Delta([], FinishReason.LENGTH), request, generated)
                    return
                current = continuation

    async def _attempt(self, model: str, router: Router, workers: Callable[[], list[Worker]],
                       request: GenerateRequest,
                       tried: set[int], worker_box: list[Worker],
                       on_worker: Callable[[Worker], None] | None) -> AsyncIterator[Delta]:
        """One stream on one worker; workers that never started the request are skipped."""
        route = RouteRequest(request.request_id, request.token_ids)
        while True:
            pool = self.candidates(workers(), tried)
            if not pool:
                raise NoWorkersAvailable(f"no worker is available for model {model!r}", retry_after=1)
            worker = router.select(pool, route)
            tried.add(worker.instance_id)
            worker_box[:] = [worker]
            worker.in_flight += 1
            router.on_start(worker, route)
            started = False
            try:
                stream = self.client.generate(worker.record.transport, worker.record.endpoint, request)
                try:
                    async for delta in stream:
                        if not started:
                            started = True
                            router.on_first_token(worker, route)
                            if on_worker is not None:
                                on_worker(worker)
                        yield delta
                finally:
                    await stream.aclose()  # type: ignore[attr-defined]
                return
            except _NOT_STARTED as exc:
                if started:
                    raise
                log.warning("worker %x did not take request %s (%s); trying another",
                            worker.instance_id, request.request_id, exc.message)
                MIGRATIONS.labels(model, "new_request").inc()
                if not isinstance(exc, Overloaded):
                    self.suspend(worker)
                if isinstance(exc, WorkerUnreachable):
                    self.client.forget(worker.record.transport)
                if isinstance(exc, Overloaded) and not self.candidates(workers(), tried):
                    raise
            finally:
                worker.in_flight -= 1
                router.on_end(worker, route)

    @staticmethod
    def _continuation(request: GenerateRequest, generated: list[int]) -> GenerateRequest | None:
        stop = request.stop
        max_tokens = stop.max_tokens
        if max_tokens is not None:
            max_tokens -= len(generated)
            if max_tokens <= 0:
                return None
        min_tokens = max(stop.min_tokens - len(generated), 0) if stop.min_tokens else stop.min_tokens
        return msgspec.structs.replace(
            request,
            token_ids=request.token_ids + generated,
            stop=msgspec.structs.replace(stop, max_tokens=max_tokens, min_tokens=min_tokens),
        )

    @staticmethod
    def _fix_usage(delta: Delta, request: GenerateRequest, generated: list[int]) -> Delta:
        """Usage as if one worker had served the whole request."""
        cached = delta.usage.cached_tokens if delta.usage else 0
        usage = Usage(prompt_tokens=len(request.token_ids), completion_tokens=len(generated),
                      cached_tokens=min(cached, len(request.token_ids)))
        return msgspec.structs.replace(delta, usage=usage)

