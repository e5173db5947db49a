"""Optional engine abilities, each a small protocol checked with ``isinstance``.

An engine has an ability by implementing its method(s); the worker host looks for them once at
start-up. Nothing here is required by the base ``Engine`` contract.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import msgspec

__all__ = ["LoadMetrics", "ReportsLoad"]


class LoadMetrics(msgspec.Struct, omit_defaults=True, kw_only=True):
    """A snapshot of an engine's load, published by workers and read by routers."""

    active_requests: int = 0
    waiting_requests: int = 0
    kv_used_blocks: int = 0
    kv_total_blocks: int = 0


@runtime_checkable
class ReportsLoad(Protocol):
    """The engine can tell its current load (cheap; called often)."""

    def load_metrics(self) -> LoadMetrics: ...
