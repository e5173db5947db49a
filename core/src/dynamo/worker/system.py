"""The worker's system HTTP server (``--system-port``): /health, /live and /metrics."""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from dynamo.plugin.capabilities import ReportsLoad
from dynamo.worker.host import WorkerHost


def build_app(host: WorkerHost) -> Starlette:
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
        lines = [
            "# TYPE dynamo_worker_active_requests gauge",
            f"dynamo_worker_active_requests {host.active_requests}",
            "# TYPE dynamo_worker_requests_total counter",
            f"dynamo_worker_requests_total {host.requests_total}",
        ]
        if isinstance(host.engine, ReportsLoad):
            load = host.engine.load_metrics()
            for name in ("waiting_requests", "kv_used_blocks", "kv_total_blocks"):
                lines += [f"# TYPE dynamo_worker_{name} gauge", f"dynamo_worker_{name} {getattr(load, name)}"]
        return PlainTextResponse("\n".join(lines) + "\n", media_type="text/plain; version=0.0.4")

    return Starlette(routes=[Route("/live", live), Route("/health", health), Route("/metrics", metrics)])


async def serve(host: WorkerHost, port: int, bind: str = "0.0.0.0") -> None:
    import uvicorn

    config = uvicorn.Config(build_app(host), host=bind, port=port, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    await server.serve()
