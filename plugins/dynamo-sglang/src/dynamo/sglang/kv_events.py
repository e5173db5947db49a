"""SGLang's KV-cache events, from its ZMQ publisher to Dynamo's ``KvEvent``.

SGLang publishes them when started with ``--kv-events-config '{"publisher": "zmq", ...}'``. Its
``ZmqEventPublisher`` (``sglang/srt/disaggregation/kv_events.py``, a port of vLLM's) sends three-frame
messages ``(topic, seq, payload)``: ``seq`` an 8-byte big-endian counter from 0 per publisher,
``payload`` msgpack of ``EventBatch`` = ``[ts, [events], attn_dp_rank]``. An event is a tagged map
``{"type": "BlockStored", "block_hashes": [...], ...}`` (SGLang 0.5.2x) or, in older releases, a
positional array ``["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, ...]``;
both are accepted, and unknown fields and event types are ignored. Each data-parallel rank has its
own publisher, on the configured port plus the rank; an optional ROUTER socket
(``replay_endpoint``) re-sends missed batches.

SGLang's block hashes are SHA-256 chains per page, sent as signed 64-bit ints; they are folded to
unsigned 64 bits here. SGLang stores one page per block (``block_size`` = ``--page-size``) and may
report a partial last page, which no router can match: such blocks are skipped.

Three layers, none of which imports sglang:

- ``kv_event_sources(server_args)``: where to subscribe, from the ``--kv-events-config`` JSON;
- ``KvEventBridge``: ``handle(seq, events)`` checks sequence numbers (a gap means the cache is no
  longer known: ``on_cleared`` first) and calls ``on_stored`` / ``on_removed`` / ``on_cleared``;
- ``ZmqKvEventSubscriber`` (an asyncio task on a SUB socket, with replay) and ``KvCacheMirror``
  (keeps the cache's blocks for ``kv_snapshot`` and forwards each change to the worker's sink).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
from dynamo.plugin import KvEvent, KvEventKind, KvEventSink

log = logging.getLogger(__name__)

__all__ = [
    "KvCacheMirror",
    "KvEventBridge",
    "KvEventHandler",
    "KvEventSource",
    "ZmqKvEventSubscriber",
    "block_hash_id",
    "decode_batch",
    "kv_event_sources",
]

_U64 = (1 << 64) - 1
#: positional slots of array-like events, after the tag (SGLang's ``BlockStored`` field order)
_STORED_SLOTS = ("block_hashes", "parent_block_hash", "token_ids", "block_size")
_REMOVED_SLOTS = ("block_hashes",)
#: hosts a publisher binds to (it connects to any other): SGLang's rule
_WILDCARDS = ("*", "0.0.0.0", "::")
_decoder = msgspec.msgpack.Decoder()


# ------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class KvEventSource:
    """One data-parallel rank's publisher. ``bind``: the SUB socket binds (the publisher connects)."""

    endpoint: str
    topic: str = ""
    replay_endpoint: str | None = None
    dp_rank: int = 0
    bind: bool = False


def kv_event_sources(server_args: Any) -> list[KvEventSource]:
    """The publishers SGLang runs for ``server_args`` (none unless ``--kv-events-config`` asks for zmq)."""
    raw = getattr(server_args, "kv_events_config", None)
    if not raw:
        return []
    try:
        config = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"--kv-events-config is not a JSON object: {raw!r}") from exc
    if config.get("publisher", "null") != "zmq":
        return []
    endpoint = str(config.get("endpoint") or "tcp://*:5557")
    replay = config.get("replay_endpoint")
    publisher_binds = config.get("bind")
    if publisher_binds is None:
        publisher_binds = _binds(endpoint)
    ranks = int(getattr(server_args, "dp_size", 1) or 1)
    return [
        KvEventSource(
            endpoint=_connectable(offset_endpoint_port(endpoint, rank)),
            topic=str(config.get("topic") or ""),
            replay_endpoint=_connectable(offset_endpoint_port(replay, rank)) if replay else None,
            dp_rank=rank,
            bind=not publisher_binds,
        )
        for rank in range(ranks)
    ]


def offset_endpoint_port(endpoint: str, rank: int) -> str:
    """SGLang's ``ZmqEventPublisher.offset_endpoint_port``: rank ``r`` publishes on port + ``r``."""
    if rank == 0:
        return endpoint
    if "inproc" in endpoint:
        return f"{endpoint}_dp{rank}"
    if endpoint.startswith("tcp://") and ":" in endpoint[6:]:
        base, _, port = endpoint.rpartition(":")
        return f"{base}:{int(port) + rank}"
    raise ValueError(f"cannot offset KV event endpoint {endpoint!r} for data-parallel rank {rank}")


def _binds(endpoint: str) -> bool:
    host = endpoint.split("://", 1)[-1].rpartition(":")[0].strip("[]")
    return host in _WILDCARDS or endpoint.startswith(("ipc://", "inproc://"))


def _connectable(endpoint: str) -> str:
    """A bind address (``tcp://*:5557``) as one this host can connect to."""
    for wildcard in ("*", "0.0.0.0"):
        endpoint = endpoint.replace(f"://{wildcard}:", "://127.0.0.1:")
    return endpoint.replace("://[::]:", "://[::1]:")


# ------------------------------------------------------------------------------------- decoding


def block_hash_id(h: Any) -> int:
    """An SGLang block hash (a signed int64, or raw digest bytes) as an unsigned 64-bit id."""
    if isinstance(h, int):
        return h & _U64
    if isinstance(h, (bytes, bytearray, memoryview)):
        return int.from_bytes(bytes(h)[:8], "big")
    raise TypeError(f"unexpected block hash {h!r}")


def decode_batch(payload: bytes) -> tuple[float, list[Any], int | None]:
    """``(ts, events, attn_dp_rank)`` of one msgpack ``EventBatch`` (array or map form)."""
    obj = _decoder.decode(payload)
    if isinstance(obj, dict):
        rank = obj.get("attn_dp_rank", obj.get("data_parallel_rank"))
        return float(obj.get("ts", 0.0)), list(obj.get("events") or []), rank
    if isinstance(obj, (list, tuple)) and len(obj) >= 2:
        return float(obj[0]), list(obj[1] or []), obj[2] if len(obj) > 2 else None
    raise ValueError(f"unrecognised KV event batch {obj!r}")


def event_fields(event: Any) -> tuple[str, dict[str, Any]]:
    """``(type, fields)`` of an event in map or positional form."""
    if isinstance(event, dict):
        return str(event.get("type") or ""), event
    if isinstance(event, (list, tuple)) and event:
        kind = str(event[0])
        slots = _STORED_SLOTS if kind == "BlockStored" else _REMOVED_SLOTS if kind == "BlockRemoved" else ()
        return kind, {name: event[i + 1] if i + 1 < len(event) else None for i, name in enumerate(slots)}
    raise ValueError(f"unrecognised KV event {event!r}")


class KvEventHandler(Protocol):
    """What receives decoded events (``KvCacheMirror``, or a test)."""

    def on_stored(
        self, block_hashes: list[int], parent_hash: int | None, token_ids: list[int], block_size: int
    ) -> None: ...

    def on_removed(self, block_hashes: list[int]) -> None: ...

    def on_cleared(self) -> None: ...


class KvEventBridge:
    """Turns ``(seq, [events])`` of one publisher into handler calls, in order, with gap detection."""

    def __init__(self, handler: KvEventHandler, *, expected_block_size: int | None = None) -> None:
        self.handler = handler
        self.expected_block_size = expected_block_size
        self.next_seq = 0  # SGLang's publisher counts from 0
        self.gaps = self.duplicates = self.batches = self.partial_blocks = 0

    def handle(self, seq: int, events: Iterable[Any]) -> bool:
        """Apply one batch. Returns False when ``seq`` was already applied (dropped)."""
        if seq < self.next_seq:
            self.duplicates += 1
            return False
        if seq > self.next_seq:  # lost batches: what we know of this engine's cache is stale
            self.gaps += 1
            log.warning("KV events %d..%d from SGLang were lost; clearing its blocks", self.next_seq, seq - 1)
            self.handler.on_cleared()
        self.next_seq = seq + 1
        self.batches += 1
        for event in events:
            self._apply(event)
        return True

    def handle_frames(self, frames: Sequence[bytes]) -> bool:
        """Apply one ZMQ message ``[topic, seq (8 bytes), payload]``."""
        if len(frames) < 2:
            raise ValueError(f"KV event message has {len(frames)} frames, expected 3")
        seq = int.from_bytes(frames[-2], "big", signed=True)
        _, events, _ = decode_batch(frames[-1])
        return self.handle(seq, events)

    def _apply(self, event: Any) -> None:
        try:
            kind, f = event_fields(event)
        except ValueError:
            log.warning("skipping unrecognised KV event %r", event)
            return
        if kind == "BlockStored":
            self._stored(f)
        elif kind == "BlockRemoved":
            self.handler.on_removed([block_hash_id(h) for h in f.get("block_hashes") or []])
        elif kind == "AllBlocksCleared":
            self.handler.on_cleared()
        else:
            log.debug("ignoring KV event of type %r", kind)

    def _stored(self, f: dict[str, Any]) -> None:
        block_size = int(f.get("block_size") or 0)
        expected = self.expected_block_size
        if expected and block_size > expected:
            raise ValueError(
                f"SGLang published KV blocks of {block_size} tokens but this worker registered "
                f"{expected} (--page-size): the router would misroute"
            )
        if expected and block_size < expected:  # a partial last page: no router can match it
            self.partial_blocks += 1
            return
        parent = f.get("parent_block_hash")
        self.handler.on_stored(
            [block_hash_id(h) for h in f.get("block_hashes") or []],
            None if parent is None else block_hash_id(parent),
            [int(t) for t in f.get("token_ids") or []],
            block_size,
        )


# ------------------------------------------------------------------------------------- transport


class ZmqKvEventSubscriber:
    """Feeds a ``KvEventBridge`` from one publisher, on an asyncio task; repairs gaps by replay."""

    def __init__(self, source: KvEventSource, bridge: KvEventBridge, *, replay_timeout: float = 1.0) -> None:
        self.source = source
        self.bridge = bridge
        self.replay_timeout = replay_timeout
        self.replayed = 0
        self._ctx: Any = None
        self._sub: Any = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Open the SUB socket and start reading (on the running event loop)."""
        import zmq
        import zmq.asyncio

        if self._task is not None:
            return
        self._ctx = zmq.asyncio.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, self.source.topic.encode())
        self._sub.setsockopt(zmq.LINGER, 0)
        if self.source.bind:
            self._sub.bind(self.source.endpoint)
        else:
            self._sub.connect(self.source.endpoint)
        self._task = asyncio.create_task(self._run(), name=f"sglang-kv-events-{self.source.dp_rank}")

    async def _run(self) -> None:
        while True:
            try:
                frames = await self._sub.recv_multipart()
                seq = int.from_bytes(frames[-2], "big", signed=True)
                if seq > self.bridge.next_seq and self.source.replay_endpoint:
                    await self._replay(self.bridge.next_seq, seq)
                self.bridge.handle_frames(frames)
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad message must not stop the stream
                log.exception("failed to handle a KV event message from %s", self.source.endpoint)

    async def _replay(self, start: int, until: int) -> None:
        """Ask the publisher's ROUTER socket for batches ``start..until-1``; best effort."""
        import zmq

        req = self._ctx.socket(zmq.DEALER)
        req.setsockopt(zmq.LINGER, 0)
        try:
            req.connect(self.source.replay_endpoint)
            await req.send_multipart([b"", start.to_bytes(8, "big")])
            while await req.poll(int(self.replay_timeout * 1000)):
                frames = await req.recv_multipart()  # ["", topic, seq, payload]
                seq = int.from_bytes(frames[-2], "big", signed=True)
                if seq < 0:  # SGLang's END_SEQ
                    return
                if seq < until and self.bridge.handle_frames(frames):
                    self.replayed += 1
            log.warning("KV event replay from %s timed out", self.source.replay_endpoint)
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


# ------------------------------------------------------------------------------------- the cache


class KvCacheMirror:
    """The blocks SGLang's prefix cache holds, forwarded as ``KvEvent``s to the worker's sink.

    Forwarding and bookkeeping happen in the same call, on the event loop, so ``snapshot`` always
    reflects exactly the events the sink has seen.
    """

    def __init__(self) -> None:
        #: block id -> (parent id, its tokens, block size), in the order SGLang stored them
        self.blocks: dict[int, tuple[int | None, list[int], int]] = {}
        self.sink: KvEventSink | None = None

    def _emit(self, event: KvEvent) -> None:
        if self.sink is None:
            return
        try:
            self.sink(event)
        except Exception:  # the publisher's trouble must not break the mirror
            log.exception("the KV event sink failed")

    def on_stored(
        self, block_hashes: list[int], parent_hash: int | None, token_ids: list[int], block_size: int
    ) -> None:
        if not block_hashes:
            return
        if block_size <= 0 or len(token_ids) != block_size * len(block_hashes):
            log.warning("skipping a BlockStored event: %d tokens for %d blocks of %d",
                        len(token_ids), len(block_hashes), block_size)  # fmt: skip
            return
        parent = parent_hash
        for i, h in enumerate(block_hashes):
            self.blocks.pop(h, None)  # stored again: move it after its (new) parent
            self.blocks[h] = (parent, token_ids[i * block_size : (i + 1) * block_size], block_size)
            parent = h
        self._emit(KvEvent(kind=KvEventKind.STORED, block_hashes=list(block_hashes), parent_hash=parent_hash,
                           token_ids=list(token_ids), block_size=block_size))  # fmt: skip

    def on_removed(self, block_hashes: list[int]) -> None:
        for h in block_hashes:
            self.blocks.pop(h, None)
        if block_hashes:
            self._emit(KvEvent(kind=KvEventKind.REMOVED, block_hashes=list(block_hashes)))

    def on_cleared(self) -> None:
        self.blocks.clear()
        self._emit(KvEvent(kind=KvEventKind.CLEARED))

    def snapshot(self) -> list[KvEvent]:
        """``STORED`` events that rebuild the cache as it is now, each parent before its children."""
        out: list[KvEvent] = []
        done: set[int] = set()
        for h in self.blocks:
            chain: list[int] = []  # h and its ancestors not emitted yet, child first
            seen: set[int] = set()
            cur: int | None = h
            while cur is not None and cur in self.blocks and cur not in done and cur not in seen:
                chain.append(cur)
                seen.add(cur)
                cur = self.blocks[cur][0]
            for b in reversed(chain):
                parent, tokens, size = self.blocks[b]
                done.add(b)
                out.append(KvEvent(kind=KvEventKind.STORED, block_hashes=[b], parent_hash=parent,
                                   token_ids=list(tokens), block_size=size))  # fmt: skip
        return out
