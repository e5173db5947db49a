"""Admission control: past ``max_inflight_requests`` the frontend answers 503 with Retry-After.

An ASGI middleware, so a request counts from its first byte until its last SSE chunk is sent,
and a rejected request costs almost nothing (no body read, no tokenization). Memory stays bounded
under a flood because rejected requests never reach the pipeline.
"""

from __future__ import annotations

from typing import Any

import orjson

from dynamo.frontend.errors import error_body

Scope = dict[str, Any]


class AdmissionControl:
    def __init__(self, app: Any, limit: int, retry_after: int = 1) -> None:
        self.app = app
        self.limit = limit
        self.inflight = 0
        self._body = orjson.dumps(error_body(
            f"the server is at its limit of {limit} requests in flight; retry shortly",
            "service_unavailable_error", None, "overloaded",
        ))
        self._headers = [(b"content-type", b"application/json"), (b"retry-after", str(retry_after).encode()),
                         (b"content-length", str(len(self._body)).encode())]

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith("/v1/") or self.limit <= 0:
            await self.app(scope, receive, send)
            return
        if self.inflight >= self.limit:
            await send({"type": "http.response.start", "status": 503, "headers": self._headers})
            await send({"type": "http.response.body", "body": self._body})
            return
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1
