"""The direct event plane: each worker serves its events on a TCP port; routers connect to it.

No infrastructure: the worker advertises ``{"events": "host:port"}`` in its instance record, and a
router opens one connection to every worker it follows (found in discovery). On a connection the
subscriber sends the preamble ``b"DYE" + version`` and then frames, in both directions::

    u32 length (big-endian, counts what follows) | u8 kind | msgpack payload

Kinds: SUBSCRIBE (topics), MESSAGE (topic, payload), QUERY (id, topic, payload) and REPLY (id,
payload or error). Queries are answered on the same connection, in order with the messages, so a
reply reflects exactly the messages sent before it. A subscriber that falls too far behind is
disconnected (it reconnects and recovers through its sequence numbers); a publisher never waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import socket
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field

import msgspec
from dynamo.runtime.events.base import (
    ConnectHandler,
    EventPlaneError,
    EventPublisher,
    EventSubscriber,
    MessageHandler,
    QueryHandler,
)

log = logging.getLogger(__name__)

VERSION = 1
PREAMBLE = b"DYE" + bytes([VERSION])
ADDRESS_KEY = "events"
HEADER = struct.Struct(">IB")
MAX_FRAME = 64 * 1024 * 1024
#: unsent bytes to one subscriber beyond which it is dropped (it reconnects and resynchronises)
MAX_BACKLOG = 16 * 1024 * 1024


class Kind(enum.IntEnum):
    SUBSCRIBE = 1
    MESSAGE = 2
    QUERY = 3
    REPLY = 4


class _Message(msgspec.Struct, array_like=True):
    topic: str
    payload: bytes


class _Query(msgspec.Struct, array_like=True):
    query_id: int
    topic: str
    payload: bytes


class _Reply(msgspec.Struct, array_like=True):
    query_id: int
    payload: bytes = b""
    error: str | None = None


_encode = msgspec.msgpack.Encoder().encode
_decode_topics = msgspec.msgpack.Decoder(list[str]).decode
_decode_message = msgspec.msgpack.Decoder(_Message).decode
_decode_query = msgspec.msgpack.Decoder(_Query).decode
_decode_reply = msgspec.msgpack.Decoder(_Reply).decode


def _frame(kind: Kind, payload: bytes) -> bytes:
    return HEADER.pack(len(payload) + 1, kind) + payload


async def _read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    length, kind = HEADER.unpack(await reader.readexactly(HEADER.size))
    if not 1 <= length <= MAX_FRAME:
        raise ConnectionError(f"invalid event-plane frame length {length}")
    return kind, await reader.readexactly(length - 1)


def _advertised_host(host: str) -> str:
    if host not in ("0.0.0.0", "::", ""):
        return host
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.254.254.254", 1))  # no packet is sent: this only picks the outgoing interface
        return str(s.getsockname()[0])
    return "127.0.0.1"


# ------------------------------------------------------------------------------------------------
# publisher (worker side)
# ------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Subscriber:
    writer: asyncio.StreamWriter
    topics: frozenset[str] = frozenset()


class DirectPublisher(EventPublisher):
    def __init__(self, host: str = "127.0.0.1", port: int = 0, max_backlog: int = MAX_BACKLOG) -> None:
        self.host = host
        self.port = port
        self.max_backlog = max_backlog
        self._server: asyncio.base_events.Server | None = None
        self._subscribers: set[_Subscriber] = set()
        self._handlers: dict[str, QueryHandler] = {}

    async def start(self) -> dict[str, str]:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        port = self._server.sockets[0].getsockname()[1]
        return {ADDRESS_KEY: f"{_advertised_host(self.host)}:{port}"}

    def answer(self, topic: str, handler: QueryHandler) -> None:
        self._handlers[topic] = handler

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, topic: str, payload: bytes) -> None:
        if not self._subscribers:
            return
        data = _frame(Kind.MESSAGE, _encode(_Message(topic, payload)))
        for sub in list(self._subscribers):
            if topic not in sub.topics:
                continue
            if sub.writer.transport.get_write_buffer_size() > self.max_backlog:
                log.warning("event plane: dropping a subscriber that fell %d bytes behind", self.max_backlog)
                self._subscribers.discard(sub)
                sub.writer.close()
                continue
            sub.writer.write(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sub = _Subscriber(writer)
        try:
            if await reader.readexactly(len(PREAMBLE)) != PREAMBLE:
                log.warning("event plane: rejecting a peer that does not speak %r", PREAMBLE)
                return
            self._subscribers.add(sub)
            while True:
                kind, payload = await _read_frame(reader)
                if kind == Kind.SUBSCRIBE:
                    sub.topics = frozenset(_decode_topics(payload))
                elif kind == Kind.QUERY:
                    writer.write(_frame(Kind.REPLY, _encode(self._reply(_decode_query(payload)))))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, msgspec.DecodeError):
            pass
        finally:
            self._subscribers.discard(sub)
            writer.close()

    def _reply(self, query: _Query) -> _Reply:
        handler = self._handlers.get(query.topic)
        if handler is None:
            return _Reply(query.query_id, error=f"nothing answers {query.topic!r} here")
        try:
            return _Reply(query.query_id, handler(query.payload))
        except Exception as exc:
            log.exception("event plane: the %r query handler failed", query.topic)
            return _Reply(query.query_id, error=f"{type(exc).__name__}: {exc}")

    async def aclose(self) -> None:
        if self._server is None:
            return
        self._server.close()
        for sub in list(self._subscribers):
            sub.writer.close()
        self._subscribers.clear()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._server = None


# ------------------------------------------------------------------------------------------------
# subscriber (router side)
# ------------------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Link:
    publisher_id: int
    address: str
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    writer: asyncio.StreamWriter | None = None
    pending: dict[int, asyncio.Future[bytes]] = field(default_factory=dict)
    task: asyncio.Task[None] | None = None

    def fail_pending(self, reason: str) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(EventPlaneError(reason))
        self.pending.clear()


class DirectSubscriber(EventSubscriber):
    def __init__(self, connect_timeout: float = 3.0, max_retry_delay: float = 2.0) -> None:
        self.connect_timeout = connect_timeout
        self.max_retry_delay = max_retry_delay
        self._topics: list[str] = []
        self._on_message: MessageHandler | None = None
        self._on_connect: ConnectHandler | None = None
        self._links: dict[int, _Link] = {}
        self._ids = itertools.count(1)

    def start(self, topics: Sequence[str], on_message: MessageHandler,
              on_connect: ConnectHandler | None = None) -> None:
        self._topics = list(topics)
        self._on_message = on_message
        self._on_connect = on_connect

    def follow(self, publisher_id: int, transport: dict[str, str]) -> bool:
        address = transport.get(ADDRESS_KEY)
        if not address:
            return False
        link = self._links.get(publisher_id)
        if link is not None and link.address == address:
            return True
        self.unfollow(publisher_id)
        link = _Link(publisher_id, address)
        link.task = asyncio.get_running_loop().create_task(self._run(link), name=f"events-{publisher_id:x}")
        self._links[publisher_id] = link
        return True

    def unfollow(self, publisher_id: int) -> None:
        link = self._links.pop(publisher_id, None)
        if link is None:
            return
        if link.task is not None:
            link.task.cancel()
        link.fail_pending("the publisher is no longer followed")

    async def _run(self, link: _Link) -> None:
        delay = 0.05
        host, _, port = link.address.rpartition(":")
        while True:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(host.strip("[]"), int(port)), self.connect_timeout
                )
            except (TimeoutError, OSError) as exc:
                log.debug("event plane: cannot reach %x at %s yet: %s", link.publisher_id, link.address, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_retry_delay)
                continue
            delay = 0.05
            try:
                await self._receive(link, reader, writer)
            except Exception:  # a bug in a handler must not end the subscription for good
                log.exception("event plane: the connection to %x failed", link.publisher_id)
            finally:
                link.connected.clear()
                link.writer = None
                link.fail_pending("the connection to the publisher was lost")
                writer.close()
            await asyncio.sleep(delay)

    async def _receive(self, link: _Link, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(PREAMBLE + _frame(Kind.SUBSCRIBE, _encode(self._topics)))
        link.writer = writer
        link.connected.set()
        if self._on_connect is not None:
            self._on_connect(link.publisher_id)
        on_message = self._on_message
        try:
            while True:
                kind, payload = await _read_frame(reader)
                if kind == Kind.MESSAGE and on_message is not None:
                    msg = _decode_message(payload)
                    try:
                        on_message(msg.topic, msg.payload)
                    except Exception:
                        log.exception("event plane: handling a %r message failed", msg.topic)
                elif kind == Kind.REPLY:
                    self._resolve(link, _decode_reply(payload))
        except (asyncio.IncompleteReadError, ConnectionError, OSError, msgspec.DecodeError) as exc:
            log.debug("event plane: connection to %x closed: %s", link.publisher_id, exc)

    @staticmethod
    def _resolve(link: _Link, reply: _Reply) -> None:
        fut = link.pending.pop(reply.query_id, None)
        if fut is None or fut.done():
            return
        if reply.error is not None:
            fut.set_exception(EventPlaneError(reply.error))
        else:
            fut.set_result(reply.payload)

    async def query(self, publisher_id: int, topic: str, payload: bytes = b"", timeout: float = 5.0) -> bytes:  # noqa: ASYNC109
        link = self._links.get(publisher_id)
        if link is None:
            raise EventPlaneError(f"publisher {publisher_id:x} is not followed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(link.connected.wait(), timeout)
        except TimeoutError:
            raise EventPlaneError(f"publisher {publisher_id:x} at {link.address} is unreachable") from None
        assert link.writer is not None
        query_id = next(self._ids)
        fut: asyncio.Future[bytes] = loop.create_future()
        link.pending[query_id] = fut
        link.writer.write(_frame(Kind.QUERY, _encode(_Query(query_id, topic, payload))))
        try:
            return await asyncio.wait_for(fut, max(deadline - loop.time(), 0.001))
        except TimeoutError:
            raise EventPlaneError(
                f"publisher {publisher_id:x} did not answer {topic!r} in {timeout}s"
            ) from None
        finally:
            link.pending.pop(query_id, None)

    async def aclose(self) -> None:
        links = list(self._links.values())
        for link in links:
            self.unfollow(link.publisher_id)
        tasks = [link.task for link in links if link.task is not None]
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
