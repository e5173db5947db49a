"""vLLM's KV-cache events, from its ZMQ publisher to plain Python callbacks.

vLLM's ``ZmqEventPublisher`` sends three-frame messages ``(topic, seq, payload)``: ``seq`` an 8-byte
big-endian counter from 0, ``payload`` msgpack of ``KVEventBatch`` = ``[ts, [events], dp_rank]``.
Events are msgspec tagged structs; depending on the vLLM release an event is a map
``{"type": "BlockStored", "block_hashes": [...], ...}`` or a positional array
``["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, ...]``. Both are accepted,
and unknown fields or event types are ignored.

Two layers:

- ``KvEventBridge`` (pure, no sockets): ``handle(seq, events)`` checks the sequence number and
  calls ``on_stored(block_hashes, parent_hash, token_ids, block_size)``, ``on_removed(block_hashes)``
  and ``on_cleared()``. A gap (a ``seq`` beyond the next expected one) calls ``on_gap(expected, got)``;
  by default that means the receiver can no longer trust what it knows about this engine, so it is
  told ``on_cleared()`` before the new events. Re-sent batches (``seq`` already seen) are dropped.
- ``ZmqKvEventSubscriber``: an asyncio task with a SUB socket on the engine's endpoint, feeding the
  bridge; when the publisher has a replay endpoint, a gap is first repaired by replaying the missed
  batches from it.

Block hashes are vLLM's ids for its blocks (with ``VLLM_KV_EVENTS_USE_INT_BLOCK_HASHES=1``, the
default, the low 64 bits of the digest as an unsigned int); raw-bytes hashes are turned into the
same kind of int. Routers hash tokens themselves and use these only to link parents and removals.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec

log = logging.getLogger(__name__)

__all__ = [
    "KvEventHandler",
    "KvEventBridge",
    "KvEventSource",
    "ZmqKvEventSubscriber",
    "KvCacheMirror",
    "decode_batch",
    "block_hash_id",
]

_U64 = (1 << 64) - 1
# positional slots of array-like events (vllm/distributed/kv_events.py field order)
_STORED_SLOTS = ("block_hashes", "parent_block_hash", "token_ids", "block_size")
_REMOVED_SLOTS = ("block_hashes",)
_decoder = msgspec.msgpack.Decoder()


class KvEventHandler(Protocol):
    """What receives decoded events (the worker's bridge to the event plane, or a test)."""

    def on_stored(
        self, block_hashes: list[int], parent_hash: int | None, token_ids: list[int], block_size: int
    ) -> None: ...

    def on_removed(self, block_hashes: list[int]) -> None: ...

    def on_cleared(self) -> None: ...


@dataclass(frozen=True)
class KvEventSource:
    """Where one engine rank publishes: connect a SUB socket to ``endpoint``."""

    endpoint: str
    topic: str = ""
    replay_endpoint: str | None = None
    dp_rank: int = 0


def block_hash_id(h: Any) -> int:
    """vLLM's external block hash as a 64-bit unsigned int (raw digests: their low 64 bits)."""
    if isinstance(h, int):
        return h & _U64
    if isinstance(h, (bytes, bytearray, memoryview)):
        return int.from_bytes(bytes(h), "big") & _U64
    raise TypeError(f"unexpected block hash {h!r}")


def _fields(event: Any) -> tuple[str, dict[str, Any]]:
    """(event type, fields) of an event in either map or positional form."""
    if isinstance(event, dict):
        kind = event.get("type") or event.get("tag") or ""
        return str(kind), event
    if isinstance(event, (list, tuple)) and event:
        return str(event[0]), {}
    raise ValueError(f"unrecognised KV event {event!r}")


def _positional(event: list[Any] | tuple[Any, ...], slots: Sequence[str]) -> dict[str, Any]:
    return {name: event[i + 1] if i + 1 < len(event) else None for i, name in enumerate(slots)}


def decode_batch(payload: bytes) -> tuple[float, list[Any], int | None]:
    """``(ts, events, dp_rank)`` of one msgpack ``KVEventBatch`` (array-like or map form)."""
    obj = _decoder.decode(payload)
    if isinstance(obj, dict):
        return float(obj.get("ts", 0.0)), list(obj.get("events") or []), obj.get("data_parallel_rank")
    if isinstance(obj, (list, tuple)) and len(obj) >= 2:
        return float(obj[0]), list(obj[1] or []), obj[2] if len(obj) > 2 else None
    raise ValueError(f"unrecognised KV event batch {obj!r}")


class KvEventBridge:
    """Turns ``(seq, [events])`` into handler calls, in order, with gap detection."""

    def __init__(
        self,
        handler: KvEventHandler,
        *,
        on_gap: Callable[[int, int], None] | None = None,
        expected_block_size: int | None = None,
    ) -> None:
        self.handler = handler
        self._on_gap = on_gap
        self.expected_block_size = expected_block_size
        #: the next sequence number we expect (vLLM's publisher counts from 0)
        self.next_seq = 0
        self.gaps = 0
        self.batches = 0
        self.duplicates = 0

    def on_gap(self, expected: int, got: int) -> None:
        """Events ``expected .. got-1`` were lost. Default: forget this engine's blocks."""
        self.gaps += 1
        log.warning("KV events %d..%d from vLLM were lost; clearing this worker's blocks", expected, got - 1)
        if self._on_gap is not None:
            self._on_gap(expected, got)
        else:
            self.handler.on_cleared()

    def handle(self, seq: int, events: Iterable[Any]) -> bool:
        """Apply one batch. Returns False when ``seq`` was already applied (dropped)."""
        if seq < self.next_seq:
            self.duplicates += 1
            return False
        if seq > self.next_seq:
            self.on_gap(self.next_seq, seq)
        self.next_seq = seq + 1
        self.batches += 1
        for event in events:
            self._apply(event)
        return True

    def handle_frames(self, frames: Sequence[bytes]) -> bool:
        """Apply one ZMQ message: ``[topic, seq(8 bytes), payload]`` (topic optional)."""
        if len(frames) < 2:
            raise ValueError(f"KV event message has {len(frames)} frames, expected 3")
        seq_bytes, payload = frames[-2], frames[-1]
        seq = int.from_bytes(seq_bytes, "big", signed=True)
        _, events, _ = decode_batch(payload)
        return self.handle(seq, events)

    def _apply(self, event: Any) -> None:
        try:
            kind, fields = _fields(event)
        except ValueError:
            log.warning("skipping unrecognised KV event %r", event)
            return
        if kind == "BlockStored":
            f = fields or _positional(event, _STORED_SLOTS)
            block_size = int(f.get("block_size") or 0)
            if self.expected_block_size and block_size and block_size != self.expected_block_size:
                raise ValueError(
                    f"vLLM published KV blocks of {block_size} tokens but this worker registered "
                    f"{self.expected_block_size}: the router would misroute"
                )
            parent = f.get("parent_block_hash")
            self.handler.on_stored(
                [block_hash_id(h) for h in f.get("block_hashes") or []],
                None if parent is None else block_hash_id(parent),
                list(f.get("token_ids") or []),
                block_size,
            )
        elif kind == "BlockRemoved":
            f = fields or _positional(event, _REMOVED_SLOTS)
            self.handler.on_removed([block_hash_id(h) for h in f.get("block_hashes") or []])
        elif kind == "AllBlocksCleared":
            self.handler.on_cleared()
        else:
            log.debug("ignoring KV event of type %r", kind)


class ZmqKvEventSubscriber:
    """Subscribes to one vLLM publisher and feeds a ``KvEventBridge`` from an asyncio task.

    sub = ZmqKvEventSubscriber(source, handler)
    sub.start()
    ...
    await sub.aclose()
    """

    def __init__(
        self,
        source: KvEventSource,
        handler: KvEventHandler,
        *,
        bridge: KvEventBridge | None = None,
        replay_timeout: float = 1.0,
    ) -> None:
        self.source = source
        self.bridge = bridge or KvEventBridge(handler)
        self.replay_timeout = replay_timeout
        self._ctx: Any = None
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None
        self.replayed = 0

    def start(self) -> None:
        """Connect and start reading (needs a running event loop; the task runs on it)."""
        import zmq
        import zmq.asyncio

        if self._task is not None:
            return
        self._ctx = zmq.asyncio.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, self.source.topic.encode())
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.connect(self.source.endpoint)
        self._task = asyncio.create_task(self._run(), name=f"vllm-kv-events-{self.source.dp_rank}")

    async def _run(self) -> None:
        assert self._sub is not None
        while True:
            try:
                frames = await self._sub.recv_multipart()
                await self._on_message(frames)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad message must not stop the stream
                log.exception("failed to handle a KV event message from %s", self.source.endpoint)

    async def _on_message(self, frames: Sequence[bytes]) -> None:
        seq = int.from_bytes(frames[-2], "big", signed=True)
        if seq > self.bridge.next_seq and self.source.replay_endpoint:
            await self._replay(self.bridge.next_seq, seq)
        self.bridge.handle_frames(frames)

    async def _replay(self, start: int, until: int) -> None:
        """Ask the publisher's ROUTER socket for batches ``start..until-1``; best effort."""
        import zmq

        assert self._ctx is not None
        req = self._ctx.socket(zmq.DEALER)
        req.setsockopt(zmq.LINGER, 0)
        try:
            req.connect(self.source.replay_endpoint)
            await req.send_multipart([b"", start.to_bytes(8, "big")])
            while True:
                if not await req.poll(int(self.replay_timeout * 1000)):
                    log.warning("KV event replay from %s timed out", self.source.replay_endpoint)
                    return
                frames = await req.recv_multipart()  # ["", topic, seq, payload]
                seq = int.from_bytes(frames[-2], "big", signed=True)
                if seq < 0:  # end of replay
                    return
                if seq >= until:
                    continue  # it will come (or came) on the SUB socket
                if self.bridge.handle_frames(frames):
                    self.replayed += 1
        except Exception:
            log.exception("KV event replay from %s failed", self.source.replay_endpoint)
        finally:
            req.close(linger=0)

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None
        if self._ctx is not None:
            self._ctx.term()
            self._ctx = None


class KvCacheMirror:
    """A ``KvEventHandler`` that keeps what vLLM's prefix cache holds and forwards each change.

    It turns vLLM's events into Dynamo's ``KvEvent`` for a sink (the worker host's publisher) and can
    describe the whole cache as ``STORED`` events (``snapshot``), consistent with the events already
    forwarded: both happen in the same callback, on the event loop.
    """

    def __init__(self) -> None:
        #: block id -> (parent id, its tokens, block size), in the order vLLM stored them
        self.blocks: dict[int, tuple[int | None, list[int], int]] = {}
        self.sink: Callable[[Any], None] | None = None

    def _emit(self, **fields: Any) -> None:
        if self.sink is None:
            return
        from dynamo.plugin.capabilities import KvEvent

        try:
            self.sink(KvEvent(**fields))
        except Exception:  # the publisher's trouble must not break the mirror
            log.exception("the KV event sink failed")

    def on_stored(
        self, block_hashes: list[int], parent_hash: int | None, token_ids: list[int], block_size: int
    ) -> None:
        if not block_hashes:
            return
        if block_size <= 0 or len(token_ids) != block_size * len(block_hashes):
            log.warning(
                "skipping a BlockStored event with %d tokens for %d blocks of %d",
                len(token_ids),
                len(block_hashes),
                block_size,
            )
            return
        parent = parent_hash
        for i, h in enumerate(block_hashes):
            self.blocks.pop(h, None)  # re-stored: move to the end (after its new parent)
            self.blocks[h] = (parent, token_ids[i * block_size : (i + 1) * block_size], block_size)
            parent = h
        from dynamo.plugin.capabilities import KvEventKind

        self._emit(
            kind=KvEventKind.STORED,
            block_hashes=list(block_hashes),
            parent_hash=parent_hash,
            token_ids=list(token_ids),
            block_size=block_size,
        )

    def on_removed(self, block_hashes: list[int]) -> None:
        for h in block_hashes:
            self.blocks.pop(h, None)
        if block_hashes:
            from dynamo.plugin.capabilities import KvEventKind

            self._emit(kind=KvEventKind.REMOVED, block_hashes=list(block_hashes))

    def on_cleared(self) -> None:
        self.blocks.clear()
        from dynamo.plugin.capabilities import KvEventKind

        self._emit(kind=KvEventKind.CLEARED)

    def snapshot(self) -> list[Any]:
        """``STORED`` events that rebuild the cache as it is now, each parent before its children."""
        from dynamo.plugin.capabilities import KvEvent, KvEventKind

        out: list[Any] = []
        done: set[int] = set()
        for h in self.blocks:
            chain: list[int] = []  # h and its ancestors not emitted yet, child first
            in_chain: set[int] = set()
            cur: int | None = h
            while cur is not None and cur in self.blocks and cur not in done and cur not in in_chain:
                chain.append(cur)
                in_chain.add(cur)
                cur = self.blocks[cur][0]
            for b in reversed(chain):
                parent, tokens, size = self.blocks[b]
                done.add(b)
                out.append(
                    KvEvent(kind=KvEventKind.STORED, block_hashes=[b], parent_hash=parent,
                            token_ids=list(tokens), block_size=size)
                )  # fmt: skip
        return out
