"""One worker's KV event stream as the router sees it: in order, gap-free, or resynchronised.

Events carry a per-worker id that increases by one. A feed applies them in order, skips
duplicates, and on a gap (or an event it cannot apply, or a reconnect) asks for a snapshot of the
worker's cache; until the snapshot arrives it buffers what comes in, then replaces the worker's
blocks with the snapshot and replays the buffered events newer than it. A worker whose events
carry another block size than the router's is reported loudly and ignored for good: its blocks
would hash differently, and silent misrouting is worse than none.

Pure bookkeeping: the router owns the I/O (asking for the snapshot) and calls back in.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Sequence

from dynamo.plugin.capabilities import KvEvent
from dynamo.router import metrics
from dynamo.router.kv_index import KvEventError, KvIndex

log = logging.getLogger(__name__)

#: events kept while waiting for a snapshot; beyond it they are dropped (a later gap resyncs again)
MAX_BUFFER = 100_000


class FeedState(str, enum.Enum):
    SYNCING = "syncing"  # waiting for a snapshot; events are buffered
    LIVE = "live"  # applying events as they come
    IGNORED = "ignored"  # block size mismatch: nothing from this worker is used


class WorkerFeed:
    def __init__(self, worker_id: int, index: KvIndex, request_snapshot: Callable[[str], None],
                 model: str = "") -> None:
        self.worker_id = worker_id
        self.index = index
        self.block_size = index.block_size
        self.request_snapshot = request_snapshot
        self.model = model
        self.state = FeedState.SYNCING
        self.last_event_id = -1
        self.ignored_reason = ""
        self._buffer: list[KvEvent] = []

    # -- inputs --------------------------------------------------------------------------------------
    def resync(self, reason: str) -> None:
        """Ask for a snapshot (unless one is awaited already or the worker is ignored)."""
        if self.state is FeedState.IGNORED:
            return
        self.state = FeedState.SYNCING
        self.request_snapshot(reason)

    def on_events(self, events: Sequence[KvEvent]) -> None:
        if self.state is FeedState.IGNORED:
            self._count_ignored("ignored_worker", len(events))
            return
        for i, event in enumerate(events):
            if self.state is FeedState.SYNCING:
                self._buffer_events(events[i:])
                return
            if event.event_id <= self.last_event_id:
                continue  # already applied (replayed after a snapshot, or sent twice)
            if event.event_id != self.last_event_id + 1:
                log.warning("worker %x: KV event gap (expected id %d, got %d); resynchronising",
                            self.worker_id, self.last_event_id + 1, event.event_id)
                self.resync("gap")
                self._buffer_events(events[i:])
                return
            if not self._apply(event):
                return
            self.last_event_id = event.event_id

    def on_snapshot(self, last_event_id: int, events: Sequence[KvEvent]) -> None:
        """The worker's cache as of event ``last_event_id``: replace its blocks, replay the buffer."""
        if self.state is FeedState.IGNORED:
            return
        self.index.remove_worker(self.worker_id)
        self.last_event_id = last_event_id
        self.state = FeedState.LIVE
        for event in events:
            if not self._apply(event, in_snapshot=True):
                return
        buffered, self._buffer = self._buffer, []
        self.on_events(buffered)

    def ignore(self, reason: str) -> None:
        """Stop using this worker's events for good and drop its blocks."""
        self.state = FeedState.IGNORED
        self.ignored_reason = reason
        self._buffer = []
        self.index.remove_worker(self.worker_id)

    # -- internals -----------------------------------------------------------------------------------
    def _apply(self, event: KvEvent, in_snapshot: bool = False) -> bool:
        """Apply one event; ``False`` when the feed left the LIVE state because of it."""
        if event.block_size and event.block_size != self.block_size:
            log.error(
                "worker %x publishes KV events for blocks of %d tokens but this router hashes blocks of %d "
                "tokens (the model card's or --kv-cache-block-size); its KV events are IGNORED and KV "
                "routing treats it as having an empty cache. Start the worker and the frontend with one "
                "block size.",
                self.worker_id,
                event.block_size,
                self.block_size,
            )
            self._count_ignored("block_size_mismatch", 1)
            self.ignore(f"block size {event.block_size} != {self.block_size}")
            return False
        try:
            self.index.apply(self.worker_id, event)
        except KvEventError as exc:
            self._count_ignored("inconsistent", 1)
            if in_snapshot:
                log.warning("worker %x: skipping a snapshot entry: %s", self.worker_id, exc)
                return True
            log.warning("worker %x: %s; resynchronising", self.worker_id, exc)
            self.resync("inconsistent")
            return False
        metrics.EVENTS_APPLIED.labels(self.model).inc()
        return True

    def _buffer_events(self, events: Sequence[KvEvent]) -> None:
        if len(self._buffer) + len(events) > MAX_BUFFER:
            self._count_ignored("buffer_full", len(self._buffer))
            self._buffer = []
        self._buffer.extend(events)

    def _count_ignored(self, reason: str, count: int) -> None:
        if count:
            metrics.EVENTS_IGNORED.labels(self.model, reason).inc(count)
