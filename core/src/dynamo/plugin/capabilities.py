"""Optional engine abilities, each a small protocol checked with ``isinstance``.

An engine has an ability by implementing its method(s); the worker host looks for them once at
start-up. Nothing here is required by the base ``Engine`` contract.

- ``ReportsLoad``: the engine tells its load (``LoadMetrics``); the worker host publishes it.
- ``PublishesKvEvents``: the engine reports what enters and leaves its prefix cache (``KvEvent``)
  and can describe its whole cache on demand; the worker host publishes both to KV routers.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Protocol, runtime_checkable

import msgspec

__all__ = ["KvEvent", "KvEventKind", "KvEventSink", "LoadMetrics", "PublishesKvEvents", "ReportsLoad"]


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


class KvEventKind(str, enum.Enum):
    STORED = "stored"  # blocks entered the prefix cache (they can now be reused)
    REMOVED = "removed"  # blocks left it (evicted)
    CLEARED = "cleared"  # the whole cache was dropped


class KvEvent(msgspec.Struct, omit_defaults=True, kw_only=True):
    """One change to an engine's prefix cache.

    Block hashes are the engine's own 64-bit ids for its blocks: routers use them only to match a
    ``REMOVED`` with an earlier ``STORED``. Routers never trust them for content; they hash
    ``token_ids`` themselves (chained XXH3-64 over blocks of ``block_size`` tokens). An engine whose
    ids are wider than 64 bits folds them to 64 bits (signed or unsigned).

    - ``STORED``: ``block_hashes`` are the new full blocks in prefix order, ``parent_hash`` is the id
      of the block just before the first of them (``None`` when they start the sequence) and
      ``token_ids`` holds exactly ``block_size`` tokens per block, in the same order.
    - ``REMOVED``: ``block_hashes`` are the evicted blocks (any order).
    - ``CLEARED``: no other field.

    ``event_id`` is assigned by the worker host when it publishes the event (per worker, starting
    at 0, increasing by one); engines leave it at 0.
    """

    kind: KvEventKind
    block_hashes: list[int] = msgspec.field(default_factory=list)
    parent_hash: int | None = None
    token_ids: list[int] = msgspec.field(default_factory=list)
    block_size: int = 0
    event_id: int = 0


#: what the worker host hands an engine to receive its KV events
KvEventSink = Callable[[KvEvent], None]


@runtime_checkable
class PublishesKvEvents(Protocol):
    """The engine reports the changes to its prefix cache, and can dump the cache.

    Both methods are called on the engine's event loop. The sink must be called from that loop too
    (an engine whose events arrive on another thread hands them over with ``call_soon_threadsafe``).
    """

    def set_kv_event_sink(self, sink: KvEventSink | None) -> None:
        """Call ``sink(event)`` for every cache change from now on (``None``: stop)."""

    def kv_snapshot(self) -> list[KvEvent]:
        """``STORED`` events that rebuild the whole cache as it is now (parents before children).

        It must reflect exactly the events already passed to the sink and none after: routers use
        it to resynchronise after a gap in the event stream, and when they first see the worker.
        """
