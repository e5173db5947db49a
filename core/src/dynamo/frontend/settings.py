"""The frontend's settings: flags and ``DYN_*`` variables (the flag wins)."""

from __future__ import annotations

import enum

from pydantic import Field, SecretStr

from dynamo.router import RouterMode
from dynamo.runtime.settings import RuntimeSettings


class ToolCallParser(str, enum.Enum):
    HERMES = "hermes"  # <tool_call>{"name": ..., "arguments": {...}}</tool_call>
    NONE = "none"  # requests with tools are refused


class FrontendSettings(RuntimeSettings):
    http_host: str = Field("0.0.0.0", description="HTTP bind address")
    http_port: int = Field(8000, ge=0, le=65535, description="HTTP port")
    http_workers: int = Field(1, ge=1, le=64, description="frontend processes sharing the HTTP port")
    router_mode: RouterMode = Field(RouterMode.ROUND_ROBIN, description="round-robin | random | least-loaded | kv")
    migration_limit: int = Field(0, ge=0, description="times a stream may move to another worker when one dies")
    http_body_limit_mb: float = Field(192.0, gt=0, description="largest request body accepted, in MB")
    graceful_shutdown_timeout: float = Field(
        30.0, ge=0, description="on SIGTERM, seconds streams in flight may take to finish"
    )
    max_inflight_requests: int = Field(
        0, ge=0, description="requests in flight before new ones get 503 + Retry-After (0: no limit)"
    )
    # -- the OpenAI API surface -----------------------------------------------------------------------
    api_key: SecretStr | None = Field(
        None, description="require 'Authorization: Bearer KEY' on /v1/* (prefer the env var to the flag)"
    )
    ignore_unknown_fields: bool = Field(
        False, description="ignore request fields this server does not know instead of answering 400"
    )
    tool_call_parser: ToolCallParser = Field(
        ToolCallParser.HERMES, description="how tool calls are found in model output: hermes | none"
    )
    metrics_prefix: str = Field(
        "dynamo_frontend", pattern=r"^[a-zA-Z_:][a-zA-Z0-9_:]*$", description="prefix of the /metrics names"
    )
    # -- KV-aware routing (--router-mode kv); Dynamo's flag names ------------------------------------
    kv_cache_block_size: int | None = Field(
        None, gt=0, description="KV block size the router hashes with (default: the model card's)"
    )
    router_kv_overlap_score_credit: float = Field(
        1.0, ge=0, description="KV router: credit per cached prompt block (0 ignores the cache: load only)"
    )
    router_prefill_load_scale: float = Field(1.0, ge=0, description="KV router: weight of the prefill load")
    router_temperature: float = Field(
        0.0, ge=0, description="KV router: 0 picks the lowest cost; > 0 samples softmax(-cost/T)"
    )
    router_kv_events: bool = Field(
        True, description="KV router: follow the workers' KV events (--no-router-kv-events: approximate mode)"
    )
    router_ttl_secs: float = Field(
        120.0, gt=0, description="KV router, approximate mode: seconds a routed prefix is assumed cached"
    )
    router_max_tree_size: int = Field(
        2**20, gt=0, description="KV router, approximate mode: (worker, block) pairs kept before pruning"
    )
    router_prune_target_ratio: float = Field(
        0.8, gt=0, le=1, description="KV router, approximate mode: prune down to this share of the max size"
    )
