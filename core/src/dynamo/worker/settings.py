"""The worker host's settings: flags and ``DYN_*`` variables (the flag wins)."""

from __future__ import annotations

from pydantic import Field

from dynamo.runtime.records import DEFAULT_COMPONENT, DEFAULT_ENDPOINT
from dynamo.runtime.settings import RuntimeSettings


class WorkerSettings(RuntimeSettings):
    engine: str | None = Field(None, description="the engine to host (see --list-engines)")
    model_path: str | None = Field(None, description="model directory (tokenizer, config; weights for real engines)")
    model_name: str | None = Field(None, description="served model name (default: the engine's choice)")
    kv_cache_block_size: int | None = Field(None, gt=0, description="KV cache block size in tokens")
    component: str = Field(DEFAULT_COMPONENT, description="component name in namespace.component.endpoint")
    endpoint: str = Field(DEFAULT_ENDPOINT, description="endpoint name")
    tcp_host: str | None = Field(
        None, description="request-plane bind address (default: 127.0.0.1 with file/mem discovery, else 0.0.0.0)"
    )
    tcp_port: int = Field(0, ge=0, le=65535, description="request-plane port (0: any free port)")
    system_port: int | None = Field(None, ge=0, le=65535, description="port for /health, /live, /metrics")
    engine_request_limit: int = Field(
        0, ge=0, description="requests served at once before new ones are refused as overloaded (0: no limit)"
    )
    health_check_interval: float = Field(
        10.0, ge=0, description="seconds between engine health checks (0: off); a failed check exits the worker"
    )
    num_workers: int = Field(
        1, ge=1, description="independent workers in this process, each its own engine and instance (mocker)"
    )
    graceful_shutdown_timeout: float = Field(
        30.0, ge=0, description="seconds in-flight requests may take to finish on SIGTERM"
    )
