"""Publishes one engine's KV events and load metrics on the event plane.

The engine hands over events one by one (``PublishesKvEvents``); this stamps each with the worker's
next event id, sends those of one event-loop turn as one batch, and answers snapshot queries with
the engine's ``kv_snapshot()`` and the id of the last event it reflects. Load (``ReportsLoad``) is
sampled every ``load_interval`` seconds and sent when it changed (and at least every second).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec
from dynamo.plugin.capabilities import KvEvent, LoadMetrics, PublishesKvEvents, ReportsLoad
from dynamo.plugin.engine import Engine
from dynamo.runtime.events import EventPublisher
from dynamo.runtime.events import messages as m

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0


class WorkerEvents:
    def __init__(self, engine: Engine, publisher: EventPublisher, load_interval: float = 0.1) -> None:
        self.engine = engine
        self.publisher = publisher
        self.load_interval = load_interval
        self.worker_id = 0
        self._next_id = 0
        self._pending: list[KvEvent] = []
        self._flush_scheduled = False
        self._load_task: asyncio.Task[None] | None = None

    @staticmethod
    def wanted(engine: Engine) -> bool:
        """Whether the engine has anything to publish."""
        return isinstance(engine, (PublishesKvEvents, ReportsLoad))

    async def start(self, worker_id: int) -> dict[str, str]:
        """Start publishing; return the transport entries to advertise."""
        self.worker_id = worker_id
        transport = await self.publisher.start()
        if isinstance(self.engine, PublishesKvEvents):
            self.publisher.answer(m.KV_SNAPSHOT, self._snapshot)
            self.engine.set_kv_event_sink(self._on_event)
        if isinstance(self.engine, ReportsLoad):
            self._load_task = asyncio.create_task(self._report_load(self.engine), name="load-metrics")
        return transport

    # -- KV events ---------------------------------------------------------------------------------
    def _on_event(self, event: KvEvent) -> None:
        self._pending.append(msgspec.structs.replace(event, event_id=self._next_id))
        self._next_id += 1
        if not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._pending:
            events, self._pending = self._pending, []
            self.publisher.publish(
                m.KV_EVENTS, m.encode(m.KvEventBatch(worker_id=self.worker_id, events=events))
            )

    def _snapshot(self, _: bytes) -> bytes:
        self._flush()  # events already numbered go out first, so the snapshot follows them
        assert isinstance(self.engine, PublishesKvEvents)
        events = self.engine.kv_snapshot()
        return m.encode(
            m.KvSnapshot(worker_id=self.worker_id, last_event_id=self._next_id - 1, events=events)
        )

    # -- load --------------------------------------------------------------------------------------
    async def _report_load(self, engine: ReportsLoad) -> None:
        last: LoadMetrics | None = None
        quiet = 0.0
        while True:
            await asyncio.sleep(self.load_interval)
            quiet += self.load_interval
            try:
                load = engine.load_metrics()
            except Exception:
                log.exception("load_metrics() failed")
                continue
            if load != last or quiet >= HEARTBEAT_SECONDS:
                self.publisher.publish(
                    m.KV_METRICS, m.encode(m.LoadReport(worker_id=self.worker_id, metrics=load))
                )
                last, quiet = load, 0.0

    async def aclose(self) -> None:
        if isinstance(self.engine, PublishesKvEvents):
            with contextlib.suppress(Exception):
                self.engine.set_kv_event_sink(None)
        if self._load_task is not None:
            self._load_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._load_task
        self._flush()
        await self.publisher.aclose()
