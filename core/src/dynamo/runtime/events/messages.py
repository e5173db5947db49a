"""What workers publish on the event plane for KV routers, and how it is encoded.

Topics:

- ``kv-events``: a ``KvEventBatch``, the KV events one worker produced in one event-loop turn;
  event ids increase by one per event, per worker, so a gap shows lost messages.
- ``kv-metrics``: a ``LoadReport`` whenever the worker's load changes (at most every 100 ms).
- ``kv-snapshot`` (a query): a ``KvSnapshot``, the worker's whole cache as ``STORED`` events and
  the id of the last event it reflects.

msgpack, versioned, tolerant of unknown fields (new fields get defaults, so old and new peers mix).
"""

from __future__ import annotations

import msgspec
from dynamo.plugin.capabilities import KvEvent, LoadMetrics

KV_EVENTS = "kv-events"
KV_METRICS = "kv-metrics"
KV_SNAPSHOT = "kv-snapshot"
VERSION = 1


class KvEventBatch(msgspec.Struct, kw_only=True, omit_defaults=True):
    worker_id: int
    events: list[KvEvent]
    version: int = VERSION


class KvSnapshot(msgspec.Struct, kw_only=True, omit_defaults=True):
    worker_id: int
    #: the id of the last event the snapshot reflects (-1: none yet)
    last_event_id: int
    events: list[KvEvent] = msgspec.field(default_factory=list)
    version: int = VERSION


class LoadReport(msgspec.Struct, kw_only=True, omit_defaults=True):
    worker_id: int
    metrics: LoadMetrics
    version: int = VERSION


encode = msgspec.msgpack.Encoder().encode
decode_batch = msgspec.msgpack.Decoder(KvEventBatch).decode
decode_snapshot = msgspec.msgpack.Decoder(KvSnapshot).decode
decode_load = msgspec.msgpack.Decoder(LoadReport).decode
