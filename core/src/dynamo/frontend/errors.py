"""The one place where exceptions become HTTP status codes and OpenAI error bodies.

Every answer that is not a success has the body ``{"error": {"message", "type", "param", "code"}}``.
``DynamoError``s map by class (400 invalid request, 404 unknown model, 503 no worker, 502 worker
lost, 500 engine failure); ``HTTPError`` carries a plain HTTP status (401, 405, 413, ...); anything
else is a bug: logged with its traceback, answered 500 without leaking its text.
"""

from __future__ import annotations

import logging

import orjson
from starlette.responses import Response

from dynamo.plugin import errors as E

log = logging.getLogger(__name__)

_STATUS: list[tuple[type[E.DynamoError], int, str]] = [
    (E.InvalidRequest, 400, "invalid_request_error"),
    (E.ModelNotFound, 404, "invalid_request_error"),
    (E.ServiceUnavailable, 503, "service_unavailable_error"),
    (E.WorkerLost, 502, "server_error"),
    (E.EngineError, 500, "server_error"),
    (E.DynamoError, 500, "server_error"),
]


class HTTPError(Exception):
    """A plain HTTP-level error (401, 405, 413, ...) in the OpenAI format."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 code: str | None = None, param: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param
        self.headers = headers or {}


def error_body(message: str, type_: str, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_code(body: dict) -> str | None:
    code = body.get("error", {}).get("code")
    return None if code is None else str(code)


def classify(exc: BaseException) -> tuple[int, dict, dict[str, str]]:
    """(status, body, headers) for any exception."""
    if isinstance(exc, HTTPError):
        return exc.status, error_body(exc.message, exc.type, exc.param, exc.code), exc.headers
    if isinstance(exc, E.DynamoError):
        for cls, status, type_ in _STATUS:
            if isinstance(exc, cls):
                headers: dict[str, str] = {}
                if status == 503:
                    retry = getattr(exc, "retry_after", None)
                    headers["Retry-After"] = str(max(1, int(retry or 1)))
                elif status >= 500:
                    log.warning("request failed: %s: %s", type(exc).__name__, exc.message)
                return status, error_body(exc.message, type_, exc.param, exc.code), headers
    log.error("unhandled error while serving a request", exc_info=exc)
    return 500, error_body("internal server error", "server_error", None, "internal_error"), {}


def error_response(exc: BaseException) -> Response:
    status, body, headers = classify(exc)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def sse_error(exc: BaseException) -> bytes:
    """An error inside an SSE stream: one ``error`` data event (the caller then sends [DONE])."""
    _, body, _ = classify(exc)
    return b"data: " + orjson.dumps(body) + b"\n\n"
