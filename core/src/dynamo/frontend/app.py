"""The HTTP app: OpenAI routes, health, metrics, and the wiring of registry, router and request plane.

A request that an engine serves goes: read the body (413 past the limit) -> one strict parse
(400 naming the field) -> find the model (404) -> plan its engine requests (400: context length,
unsupported options) -> an ``UnaryResponse`` or ``SSEResponse`` that streams, watches for the
client leaving and finishes the request's ``Tracker`` (metrics + one log line).
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import AsyncIterator

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from dynamo.frontend import openapi
from dynamo.frontend.auth import BearerAuth
from dynamo.frontend.errors import HTTPError, classify, error_code
from dynamo.frontend.metrics import CONTENT_TYPE, ERROR, FrontendMetrics
from dynamo.frontend.models import ModelRegistry
from dynamo.frontend.protocol import ChatCompletionRequest, CompletionRequest, parse
from dynamo.frontend.responses import SSEResponse, UnaryResponse
from dynamo.frontend.service import Service
from dynamo.frontend.settings import FrontendSettings
from dynamo.plugin.errors import DynamoError
from dynamo.router import router_for_model
from dynamo.router.push import PushRouter
from dynamo.runtime.discovery import Discovery, create_discovery
from dynamo.runtime.transport import RequestPlaneClient, create_client

log = logging.getLogger(__name__)
request_log = logging.getLogger("dynamo.frontend.requests")


class Frontend:
    """Everything one frontend process owns; built by the app's lifespan."""

    def __init__(self, settings: FrontendSettings, discovery: Discovery | None = None,
                 client: RequestPlaneClient | None = None) -> None:
        self.settings = settings
        self.discovery = discovery or create_discovery(settings)
        self.client = client or create_client(settings)
        self.push = PushRouter(self.client, migration_limit=settings.migration_limit)
        self.registry = ModelRegistry(
            self.discovery, settings.namespace, lambda card: router_for_model(settings, card),
            on_worker_removed=lambda w: self.client.forget(w.record.transport),
        )
        self.service = Service(self.registry, self.push, tool_call_parser=settings.tool_call_parser.value)
        self.metrics = FrontendMetrics(settings.metrics_prefix, lambda: self.registry.models)
        self.body_limit = int(settings.http_body_limit_mb * 1024 * 1024)

    async def start(self) -> None:
        await self.discovery.start()
        await self.registry.start()

    async def aclose(self) -> None:
        await self.registry.aclose()
        await self.client.aclose()
        await self.discovery.aclose()

    async def read(self, request: Request,
                   model: type[ChatCompletionRequest] | type[CompletionRequest]) -> object:
        return parse(model, await _read_body(request, self.body_limit),
                     ignore_unknown=self.settings.ignore_unknown_fields)

    def serve(self, req: ChatCompletionRequest | CompletionRequest) -> Response:
        """Plan the engine requests of a parsed request and answer it."""
        chat = isinstance(req, ChatCompletionRequest)
        entry = self.registry.get(req.model)
        rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        endpoint = "chat_completions" if chat else "completions"
        tracker = self.metrics.track(rid, entry.name, endpoint, req.stream)
        tracker.user = req.user
        try:
            if chat:
                plan = self.service.plan_chat(entry, req, rid)  # type: ignore[arg-type]
            else:
                plan = self.service.plan_completion(entry, req, rid)  # type: ignore[arg-type]
        except Exception as exc:
            status, body, headers = classify(exc)
            tracker.finish(ERROR, status, error_code(body))
            return Response(orjson.dumps(body), status_code=status, media_type="application/json",
                            headers=headers)
        tracker.prompt_tokens = plan.prompt_tokens
        if req.stream:
            return SSEResponse(self.service.sse(plan, tracker), tracker)
        return UnaryResponse(lambda: self.service.complete(plan, tracker), tracker)


def _too_large(limit: int) -> HTTPError:
    return HTTPError(413, f"request body is larger than the limit of {limit} bytes", code="body_too_large")


async def _read_body(request: Request, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def _rejected(request: Request, exc: Exception) -> Response:
    """A request refused before an engine was involved: one log line, the OpenAI error body."""
    status, body, headers = classify(exc)
    if request_log.isEnabledFor(logging.INFO):
        err = body["error"]
        request_log.info("request refused: %s %s status=%d code=%s param=%s: %s", request.method,
                         request.url.path, status, err["code"], err["param"], err["message"])
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


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
    if settings.api_key is not None and settings.api_key.get_secret_value():
        app.add_middleware(BearerAuth, key=settings.api_key.get_secret_value())
    openapi.install(app)

    @app.exception_handler(DynamoError)
    async def _dynamo_error(request: Request, exc: DynamoError) -> Response:
        return _rejected(request, exc)

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, exc: HTTPError) -> Response:
        return _rejected(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, exc: StarletteHTTPException) -> Response:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code)
        return _rejected(request, HTTPError(exc.status_code, str(exc.detail), code=code, headers=dict(exc.headers or {})))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return _rejected(request, HTTPError(400, "invalid request", code="invalid_request"))

    @app.post("/v1/chat/completions", openapi_extra=openapi.request_body(ChatCompletionRequest))
    async def chat_completions(request: Request) -> Response:
        """Chat completion (OpenAI), streamed as server-sent events with ``"stream": true``."""
        return fe.serve(await fe.read(request, ChatCompletionRequest))  # type: ignore[arg-type]

    @app.post("/v1/completions", openapi_extra=openapi.request_body(CompletionRequest))
    async def completions(request: Request) -> Response:
        """Text completion (OpenAI), streamed as server-sent events with ``"stream": true``."""
        return fe.serve(await fe.read(request, CompletionRequest))  # type: ignore[arg-type]

    @app.get("/v1/models")
    async def list_models() -> Response:
        data = [
            {"id": name, "object": "model", "created": entry.created, "owned_by": "dynamo"}
            for name, entry in sorted(fe.registry.models.items())
        ]
        return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")

    @app.get("/health")
    async def health() -> Response:
        """Worker counts of the models this process can serve (its tokenizer is loaded)."""
        entries = fe.registry.models.items()
        models = {name: len(entry.workers) for name, entry in entries if entry.preprocessor is not None}
        healthy = any(models.values())
        body: dict[str, object] = {"status": "healthy" if healthy else "unhealthy", "models": models}
        loading = sorted(name for name, entry in entries if entry.preprocessor is None)
        if loading:
            body["loading"] = loading
        if not healthy:
            body["message"] = "no workers available"
        return JSONResponse(body, status_code=200 if healthy else 503)

    @app.get("/live")
    async def live() -> Response:
        return JSONResponse({"status": "live", "message": "Service is live"})

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(fe.metrics.render(), media_type=CONTENT_TYPE)

    return app
