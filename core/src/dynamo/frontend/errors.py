"""The one place where exceptions become HTTP status codes and OpenAI error bodies."""

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

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param


def error_body(message: str, type_: str, param: str | None = None, code: str | int | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def classify(exc: BaseException) -> tuple[int, dict, dict[str, str]]:
    """(status, body, headers) for any exception."""
    if isinstance(exc, HTTPError):
        return exc.status, error_body(exc.message, exc.type, exc.param, exc.code), {}
    if isinstance(exc, E.DynamoError):
        for cls, status, type_ in _STATUS:
            if isinstance(exc, cls):
                headers: dict[str, str] = {}
                retry = getattr(exc, "retry_after", None)
                if status == 503:
                    headers["Retry-After"] = str(max(1, int(retry or 1)))
                return status, error_body(exc.message, type_, exc.param, exc.code), headers
    log.exception("unhandled error while serving a request", exc_info=exc)
    return 500, error_body("internal server error", "server_error", None, "internal_error"), {}


def error_response(exc: BaseException) -> Response:
    status, body, headers = classify(exc)
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def sse_error(exc: BaseException) -> bytes:
    """An error inside an SSE stream: one ``error`` data event (the caller then sends [DONE])."""
    _, body, _ = classify(exc)
    return b"data: " + orjson.dumps(body) + b"\n\n"
