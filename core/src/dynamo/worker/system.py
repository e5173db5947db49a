"""The worker's system HTTP server (``--system-port``): /health, /live and /metrics.

/metrics is Prometheus text written by prometheus-client, with NVIDIA Dynamo's
``dynamo_component_*`` names and labels. Every value is read from the host and the engine when
scraped, so serving a request costs nothing extra here. Metrics an engine library registers in
the process-wide registry (vLLM's ``vllm:*``) follow.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from dynamo.plugin.capabilities import ReportsLoad
from dynamo.worker.host import WorkerHost

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LABELS = ["dynamo_namespace", "dynamo_component", "dynamo_endpoint"]


class HostCollector(Collector):
    """The host's counters and the engine's load, as Dynamo's component metrics."""

    def __init__(self, host: WorkerHost) -> None:
        self.host = host
        self.started = time.monotonic()

    def collect(self) -> Iterator[Metric]:
        host, s = self.host, self.host.settings
        values = [s.namespace, s.component, s.endpoint]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(f"dynamo_component_{name}", doc, labels=LABELS)
            g.add_metric(values, value)
            return g

        requests = CounterMetricFamily("dynamo_component_requests", "Requests received", labels=LABELS)
        requests.add_metric(values, host.requests_total)
        yield requests
        active = host.active_requests
        yield gauge("inflight_requests", "Requests being served", active)
        yield gauge("system_uptime_seconds", "Seconds since the system server started",
                    time.monotonic() - self.started)
        load = host.engine.load_metrics() if isinstance(host.engine, ReportsLoad) else None
        if load is not None:
            yield gauge("queued_requests", "Requests waiting in the engine's queue", load.waiting_requests)
            yield gauge("kvstats_active_blocks", "KV cache blocks in use", load.kv_used_blocks)
            yield gauge("kvstats_total_blocks", "KV cache blocks in all", load.kv_total_blocks)
            usage = load.kv_used_blocks / load.kv_total_blocks if load.kv_total_blocks else 0.0
            yield gauge("kvstats_gpu_cache_usage_percent", "Share of KV cache blocks in use (0-1)", usage)
        yield from self._legacy(host.requests_total, active, load)

    @staticmethod
    def _legacy(requests: int, active: int, load: object) -> Iterator[Metric]:
        """The first names this server used (``dynamo_worker_*``), still read by older tests."""
        total = CounterMetricFamily("dynamo_worker_requests", "Requests received (old name)")
        total.add_metric([], requests)
        yield total
        yield GaugeMetricFamily("dynamo_worker_active_requests", "Requests being served (old name)",
                                value=active)
        for name in ("waiting_requests", "kv_used_blocks", "kv_total_blocks"):
            if load is not None:
                yield GaugeMetricFamily(f"dynamo_worker_{name}", f"{name} (old name)",
                                        value=getattr(load, name))

    def describe(self) -> Iterator[Metric]:
        return iter(())


def build_app(host: WorkerHost) -> Starlette:
    registry = CollectorRegistry()
    registry.register(HostCollector(host))

    async def live(_: Request) -> Response:
        return JSONResponse({"status": "live"})

    async def health(_: Request) -> Response:
        try:
            await asyncio.wait_for(host.engine.check_health(), 10)
        except Exception as exc:
            return JSONResponse({"status": "unhealthy", "error": str(exc)}, status_code=503)
        return JSONResponse({
            "status": "healthy",
            "instance_id": f"{host.instance_id:x}",
            "engine": host.spec.name,
            "model": host.info.served_model_name if host.info else None,
            "active_requests": host.active_requests,
        })

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry) + generate_latest(REGISTRY), media_type=CONTENT_TYPE)

    return Starlette(routes=[Route("/live", live), Route("/health", health), Route("/metrics", metrics)])


async def serve(host: WorkerHost, port: int, bind: str = "0.0.0.0") -> None:
    import uvicorn

    config = uvicorn.Config(build_app(host), host=bind, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign, attr-defined]
    await server.serve()
