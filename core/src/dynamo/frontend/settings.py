"""The frontend's settings: flags and ``DYN_*`` variables (the flag wins)."""

from __future__ import annotations

from pydantic import Field

from dynamo.router import RouterMode
from dynamo.runtime.settings import RuntimeSettings


class FrontendSettings(RuntimeSettings):
    http_host: str = Field("0.0.0.0", description="HTTP bind address")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port")
    router_mode: RouterMode = Field(RouterMode.ROUND_ROBIN, description="round-robin | random | least-loaded | kv")
    migration_limit: int = Field(0, ge=0, description="times a stream may move to another worker when one dies")
    http_body_limit_mb: float = Field(192.0, gt=0, description="largest request body accepted, in MB")
    graceful_shutdown_timeout: float = Field(
        30.0, ge=0, description="on SIGTERM, seconds streams in flight may take to finish"
    )
    max_inflight_requests: int = Field(
        0, ge=0, description="requests in flight before new ones get 503 + Retry-After (0: no limit)"
    )
