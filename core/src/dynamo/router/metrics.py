"""Prometheus counters of the routers (exposed by the frontend's ``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ROUTED = Counter("dynamo_router_kv_requests", "requests routed by the KV router", ["model"])
PROMPT_BLOCKS = Counter(
    "dynamo_router_kv_prompt_blocks", "full prompt blocks of KV-routed requests", ["model"]
)
OVERLAP_BLOCKS = Counter(
    "dynamo_router_kv_overlap_blocks", "prompt blocks already cached on the worker chosen", ["model"]
)
EVENTS_APPLIED = Counter("dynamo_router_kv_events_applied", "KV events applied to the index", ["model"])
EVENTS_IGNORED = Counter(
    "dynamo_router_kv_events_ignored", "KV events not applied, by reason", ["model", "reason"]
)
RESYNCS = Counter("dynamo_router_kv_resyncs", "snapshots taken from workers, by reason", ["model", "reason"])
INDEXED_BLOCKS = Gauge("dynamo_router_kv_indexed_blocks", "distinct blocks in the KV index", ["model"])
