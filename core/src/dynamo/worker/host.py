"""The worker host: runs one engine, publishes it in discovery and serves it on the request plane.

Start-up order: build and start the engine, start the request-plane server, then register the
instance record and model card (so the frontend never sees a worker that cannot serve yet).
Shutdown order is the reverse: leave discovery, let requests in flight finish (bounded), stop the
engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from dynamo.plugin.capabilities import ReportsLoad
from dynamo.plugin.engine import Engine, EngineSpec
from dynamo.plugin.errors import Overloaded
from dynamo.plugin.types import Delta, GenerateRequest, ModelInfo
from dynamo.runtime import records
from dynamo.runtime.discovery import Discovery, create_discovery
from dynamo.runtime.events import create_publisher
from dynamo.runtime.settings import DiscoveryBackend
from dynamo.runtime.transport import RequestPlaneServer, create_server
from dynamo.worker.events import WorkerEvents
from dynamo.worker.settings import WorkerSettings

log = logging.getLogger(__name__)


class WorkerHost:
    def __init__(self, settings: WorkerSettings, spec: EngineSpec, engine: Engine) -> None:
        self.settings = settings
        self.spec = spec
        self.engine = engine
        self.discovery: Discovery | None = None
        self.server: RequestPlaneServer | None = None
        self.events: WorkerEvents | None = None
        self.info: ModelInfo | None = None
        self.instance_id = 0
        self._keys: list[str] = []
        self.requests_total = 0
        #: set when the engine failed its health check: the process exits non-zero
        self.unhealthy: str | None = None

    # -- serving ----------------------------------------------------------------------------------
    def _handle(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        limit = self.settings.engine_request_limit
        # the server counts this request already, hence ">"
        if limit and self.server is not None and self.server.active_streams > limit:
            raise Overloaded(f"worker is at its limit of {limit} concurrent requests", retry_after=1)
        self.requests_total += 1
        if log.isEnabledFor(logging.INFO):  # the frontend's request id, so one request greps across processes
            log.info("request %s: %d prompt tokens, max_tokens %s", request.request_id, len(request.token_ids),
                     request.stop.max_tokens)
        return self.engine.generate(request)

    @property
    def active_requests(self) -> int:
        if isinstance(self.engine, ReportsLoad):
            return self.engine.load_metrics().active_requests
        return self.server.active_streams if self.server else 0

    # -- lifecycle --------------------------------------------------------------------------------
    def _bind_host(self) -> str:
        s = self.settings
        if s.tcp_host:
            return s.tcp_host
        local = DiscoveryBackend(s.discovery_backend) in (DiscoveryBackend.MEM, DiscoveryBackend.FILE)
        return "127.0.0.1" if local else "0.0.0.0"

    async def start(self) -> None:
        s = self.settings
        self.info = await self.engine.start()
        self.discovery = create_discovery(s)
        await self.discovery.start()
        self.instance_id = self.discovery.lease_id
        self.server = create_server(s, self._bind_host(), s.tcp_port)
        transport = await self.server.start({s.endpoint: self._handle})
        if WorkerEvents.wanted(self.engine):  # KV events and load metrics, for KV-aware routers
            self.events = WorkerEvents(self.engine, create_publisher(s, self._bind_host()))
            transport = {**transport, **await self.events.start(self.instance_id)}
        await self._register(transport)
        log.info(
            "worker %x serving model %r with engine %r at %s (namespace %s)",
            self.instance_id, self.info.served_model_name, self.spec.name, transport, s.namespace,
        )

    async def _register(self, transport: dict[str, str]) -> None:
        s, info = self.settings, self.info
        assert self.discovery is not None and info is not None
        iid = self.instance_id
        instance = records.InstanceRecord(
            namespace=s.namespace, component=s.component, endpoint=s.endpoint, instance_id=iid, transport=transport
        )
        card = records.ModelCard(
            display_name=info.served_model_name,
            model_path=info.model_path,
            context_length=info.context_length,
            kv_cache_block_size=s.kv_cache_block_size or info.kv_block_size,
            namespace=s.namespace, component=s.component, endpoint=s.endpoint, instance_id=iid,
            engine=self.spec.name,
            runtime_config=records.RuntimeConfig(
                total_kv_blocks=info.total_kv_blocks, max_num_seqs=info.max_num_seqs,
                max_num_batched_tokens=info.max_num_batched_tokens,
            ),
            response_formats=list(info.response_formats),
        )
        ikey = records.instance_key(s.namespace, s.component, s.endpoint, iid)
        mkey = records.model_card_key(s.namespace, s.component, s.endpoint, iid)
        await self.discovery.put(ikey, records.encode(instance))
        await self.discovery.put(mkey, records.encode(card))
        self._keys = [mkey, ikey]

    async def aclose(self) -> None:
        """Leave discovery first, drain in-flight requests within the grace period, stop the engine."""
        if self.discovery is not None:
            for key in self._keys:
                with contextlib.suppress(Exception):
                    await self.discovery.delete(key)
        if self.server is not None:
            await self.server.aclose(grace=self.settings.graceful_shutdown_timeout)
        if self.events is not None:
            with contextlib.suppress(Exception):
                await self.events.aclose()
        with contextlib.suppress(Exception):
            await self.engine.aclose()
        if self.discovery is not None:
            await self.discovery.aclose()
        log.info("worker %x stopped", self.instance_id)

    async def _watch_health(self, stop: asyncio.Event) -> None:
        interval = self.settings.health_check_interval
        while not stop.is_set():
            await asyncio.sleep(interval)
            try:
                await asyncio.wait_for(self.engine.check_health(), timeout=max(interval, 5.0))
            except Exception as exc:  # noqa: BLE001 - any failure means: stop serving
                self.unhealthy = f"{type(exc).__name__}: {exc}"
                log.error("engine %r failed its health check (%s); leaving discovery and exiting",
                          self.spec.name, self.unhealthy)
                stop.set()

    async def run_until(self, stop: asyncio.Event) -> None:
        await self.start()
        health = None
        if self.settings.health_check_interval > 0:
            health = asyncio.create_task(self._watch_health(stop))
        try:
            await stop.wait()
        finally:
            if health is not None:
                health.cancel()
            if self.unhealthy:  # an unhealthy engine gets no grace period
                self.settings = self.settings.model_copy(update={"graceful_shutdown_timeout": 0.0})
            await self.aclose()
