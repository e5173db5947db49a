"""The HTTP app: OpenAI routes, health, and the wiring of registry, router and request plane."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response, StreamingResponse

from dynamo.frontend.errors import HTTPError, error_response
from dynamo.frontend.models import ModelRegistry
from dynamo.frontend.protocol import ChatCompletionRequest, CompletionRequest, parse
from dynamo.frontend.service import Service, echo_text
from dynamo.frontend.settings import FrontendSettings
from dynamo.plugin.errors import DynamoError
from dynamo.router import create_router
from dynamo.router.push import PushRouter
from dynamo.runtime.discovery import Discovery, create_discovery
from dynamo.runtime.transport import RequestPlaneClient, create_client

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Frontend:
    """Everything one frontend process owns; built by the app's lifespan."""

    def __init__(self, settings: FrontendSettings, discovery: Discovery | None = None,
                 client: RequestPlaneClient | None = None) -> None:
        self.settings = settings
        self.discovery = discovery or create_discovery(settings)
        self.client = client or create_client(settings)
        self.push = PushRouter(self.client, migration_limit=settings.migration_limit)
        self.registry = ModelRegistry(
            self.discovery, settings.namespace, lambda card: create_router(settings.router_mode),
            on_worker_removed=lambda w: self.client.forget(w.record.transport),
        )
        self.service = Service(self.registry, self.push)
        self.body_limit = int(settings.http_body_limit_mb * 1024 * 1024)

    async def start(self) -> None:
        await self.discovery.start()
        await self.registry.start()

    async def aclose(self) -> None:
        await self.registry.aclose()
        await self.client.aclose()
        await self.discovery.aclose()


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise HTTPError(413, f"request body is larger than the limit of {limit} bytes", code="body_too_large")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"request body is larger than the limit of {limit} bytes", code="body_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


async def _start_stream(stream: AsyncIterator[bytes]) -> Response:
    """Pull the first chunk before answering 200, so early errors get a real status code."""
    try:
        first = await anext(stream)
    except BaseException:
        with contextlib.suppress(Exception):
            await stream.aclose()  # type: ignore[attr-defined]
        raise

    async def body() -> AsyncIterator[bytes]:
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            yield first
            async for chunk in stream:
                yield chunk

    return StreamingResponse(body(), media_type="text/event-stream", headers=SSE_HEADERS)


def build_app(settings: FrontendSettings, frontend: Frontend | None = None) -> FastAPI:
    fe = frontend or Frontend(settings)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await fe.start()
        try:
            yield
        finally:
            await fe.aclose()

    app = FastAPI(title="Dynamo frontend", version="0.1.0", lifespan=lifespan)
    app.state.frontend = fe

    @app.exception_handler(DynamoError)
    async def _dynamo_error(_: Request, exc: DynamoError) -> Response:
        return error_response(exc)

    @app.exception_handler(HTTPError)
    async def _http_error(_: Request, exc: HTTPError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(_: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return error_response(HTTPError(exc.status_code, str(exc.detail), code=code))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> Response:
        return error_response(HTTPError(400, "invalid request", code="invalid_request"))

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        req = parse(ChatCompletionRequest, await _read_body(request, fe.body_limit))
        entry, gen = fe.service.prepare_chat(req)
        stops = req.stop_strings()
        if req.stream:
            return await _start_stream(fe.service.sse(entry, gen, stops, req.include_usage(), chat=True))
        outcome = await fe.service.complete(entry, gen, stops)
        return Response(fe.service.chat_response(entry, gen, outcome), media_type="application/json")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        req = parse(CompletionRequest, await _read_body(request, fe.body_limit))
        entry, gen = fe.service.prepare_completion(req)
        stops = req.stop_strings()
        echo = echo_text(entry, req, gen)
        if req.stream:
            return await _start_stream(
                fe.service.sse(entry, gen, stops, req.include_usage(), chat=False, echo=echo)
            )
        outcome = await fe.service.complete(entry, gen, stops)
        return Response(fe.service.completion_response(entry, gen, outcome, echo), media_type="application/json")

    @app.get("/v1/models")
    async def list_models() -> Response:
        data = [
            {"id": name, "object": "model", "created": entry.created, "owned_by": "dynamo"}
            for name, entry in sorted(fe.registry.models.items())
        ]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        models = {name: len(entry.workers) for name, entry in fe.registry.models.items()}
        healthy = any(models.values())
        body = {"status": "healthy" if healthy else "unhealthy", "models": models}
        if not healthy:
            body["message"] = "no workers available"
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/live")
    async def live() -> Response:
        return JSONResponse({"status": "live", "message": "Service is live"})

    return app
