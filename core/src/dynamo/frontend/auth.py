"""Optional API key: ``Authorization: Bearer KEY`` on ``/v1/*`` (``--api-key`` / ``DYN_API_KEY``).

An ASGI middleware so a refused request costs a header scan and nothing else. Probes and
scrapers (``/health``, ``/live``, ``/metrics``) and the API docs stay open.
"""

from __future__ import annotations

import hmac
from typing import Any

import orjson

from dynamo.frontend.errors import error_body


class BearerAuth:
    def __init__(self, app: Any, key: str) -> None:
        self.app = app
        self._key = key.encode()
        self._body = orjson.dumps(error_body(
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            "invalid_request_error", None, "invalid_api_key",
        ))
        self._headers = [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer"),
                         (b"content-length", str(len(self._body)).encode())]

    def _authorized(self, headers: list[tuple[bytes, bytes]]) -> bool:
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._key)
        return False

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if (scope["type"] == "http" and scope["path"].startswith("/v1/")
                and not self._authorized(scope["headers"])):
            await send({"type": "http.response.start", "status": 401, "headers": self._headers})
            await send({"type": "http.response.body", "body": self._body})
            return
        await self.app(scope, receive, send)
