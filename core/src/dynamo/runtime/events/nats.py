"""The NATS event plane (``--event-plane nats``; ``NATS_SERVER``).

Each worker publishes under a subject base of its own and advertises it in its instance record as
``{"nats_events": "<base>"}``:

    <base>.<topic>        messages on ``topic`` (KV events, load metrics)
    <base>.q.<topic>      queries on ``topic``; the reply goes to the request's inbox

A router subscribes to ``<base>.*`` for every worker it follows. Replies carry one status byte
(0 = ok, then the payload; 1 = error, then the message).

Ordering: a publisher sends everything through one outbox on one connection, so a query's reply
leaves after every message published before the query was answered (NATS keeps one publisher's
order). Delivery is best effort, like the direct plane: messages published while a peer is
reconnecting may be lost, which KV event ids reveal, and the router recovers with a snapshot
query. After its own reconnect the subscriber reports every followed publisher as (re)connected,
so the router resynchronises at once instead of waiting for the next gap.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dynamo.runtime.events.base import (
    ConnectHandler,
    EventPlaneError,
    EventPublisher,
    EventSubscriber,
    MessageHandler,
    QueryHandler,
)
from dynamo.runtime.transport.nats import NatsOptions, _subject_token

if TYPE_CHECKING:
    from dynamo.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

ADDRESS_KEY = "nats_events"
QUERY = "q"
OK, ERROR = b"\x00", b"\x01"
#: messages waiting for the connection beyond which the oldest are dropped (never block the worker)
MAX_OUTBOX = 100_000


def _base(settings: RuntimeSettings) -> str:
    parts = [settings.namespace, getattr(settings, "component", "backend")]
    return "dynamo_ev." + ".".join(_subject_token(p) for p in parts)


class NatsPublisher(EventPublisher):
    def __init__(
        self,
        options: NatsOptions,
        subject_prefix: str = "dynamo_ev.dynamo.backend",
        max_outbox: int = MAX_OUTBOX,
    ) -> None:
        self.options = options
        self.base = f"{subject_prefix}.{uuid.uuid4().hex[:16]}"
        self.max_outbox = max_outbox
        self._handlers: dict[str, QueryHandler] = {}
        self._nc: Any = None
        self._outbox: collections.deque[tuple[str, bytes]] = collections.deque()
        self._wake = asyncio.Event()
        self._sender: asyncio.Task[None] | None = None
        self._dropped = 0

    @classmethod
    def from_settings(cls, settings: RuntimeSettings) -> NatsPublisher:
        return cls(NatsOptions.from_settings(settings), _base(settings))

    async def start(self) -> dict[str, str]:
        self._nc = await self.options.connect(f"dynamo-events-{self.base.rsplit('.', 1)[1]}")
        await self._nc.subscribe(f"{self.base}.{QUERY}.*", cb=self._on_query)
        await self._nc.flush()
        self._sender = asyncio.create_task(self._send_loop(), name="nats-events-sender")
        return {ADDRESS_KEY: self.base}

    def publish(self, topic: str, payload: bytes) -> None:
        self._enqueue(f"{self.base}.{topic}", payload)

    def _enqueue(self, subject: str, payload: bytes) -> None:
        outbox = self._outbox
        if len(outbox) >= self.max_outbox:
            outbox.popleft()
            self._dropped += 1
            if self._dropped == 1 or self._dropped % 10_000 == 0:
                log.warning("event plane: NATS is not keeping up; dropped %d message(s)", self._dropped)
        outbox.append((subject, payload))
        self._wake.set()

    async def _send_loop(self) -> None:
        outbox = self._outbox
        while True:
            await self._wake.wait()
            self._wake.clear()
            while outbox:
                subject, payload = outbox[0]
                try:
                    await self._nc.publish(subject, payload)
                except Exception as exc:  # buffer full while disconnected, or payload too large
                    if type(exc).__name__ == "OutboundBufferLimitError":
                        await asyncio.sleep(0.1)  # wait for the reconnect, keep order
                        continue
                    log.warning("event plane: dropping a message on %s: %s", subject, exc)
                outbox.popleft()

    def answer(self, topic: str, handler: QueryHandler) -> None:
        self._handlers[topic] = handler

    async def _on_query(self, msg: Any) -> None:
        if not msg.reply:
            return
        topic = msg.subject.rsplit(".", 1)[1]
        handler = self._handlers.get(topic)
        if handler is None:
            self._enqueue(msg.reply, ERROR + f"nothing answers {topic!r} here".encode())
            return
        try:
            reply = OK + handler(msg.data)
        except Exception as exc:
            log.exception("event plane: the %r query handler failed", topic)
            reply = ERROR + f"{type(exc).__name__}: {exc}".encode()
        self._enqueue(msg.reply, reply)  # behind every message published before the answer

    async def aclose(self) -> None:
        if self._nc is None:
            return
        if self._sender is not None:
            deadline = asyncio.get_running_loop().time() + 1.0  # let queued messages out first
            while self._outbox and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            self._sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sender
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._nc.flush(), 1.0)
        with contextlib.suppress(Exception):
            await self._nc.close()
        self._nc = None


class NatsSubscriber(EventSubscriber):
    def __init__(self, options: NatsOptions) -> None:
        self.options = options
        self._topics: frozenset[str] = frozenset()
        self._on_message: MessageHandler | None = None
        self._on_connect: ConnectHandler | None = None
        self._bases: dict[int, str] = {}  # publisher id -> subject base
        self._subs: dict[int, Any] = {}  # publisher id -> nats subscription
        self._subscribing: set[int] = set()
        self._nc: Any = None
        self._connected = asyncio.Event()
        self._connector: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    @classmethod
    def from_settings(cls, settings: RuntimeSettings) -> NatsSubscriber:
        return cls(NatsOptions.from_settings(settings))

    def start(
        self, topics: Sequence[str], on_message: MessageHandler, on_connect: ConnectHandler | None = None
    ) -> None:
        self._topics = frozenset(topics)
        self._on_message = on_message
        self._on_connect = on_connect

    # -- connection ----------------------------------------------------------------------------
    def _ensure_connecting(self) -> None:
        if self._connector is None and not self._closed:
            self._connector = asyncio.get_running_loop().create_task(
                self._connect(), name="nats-events-connect"
            )

    async def _connect(self) -> None:
        delay = 0.5
        while self._nc is None:
            try:
                self._nc = await self.options.connect(
                    "dynamo-router-events", reconnected_cb=self._on_reconnected
                )
            except RuntimeError as exc:
                log.warning("event plane: %s; retrying", exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self._connected.set()
        for publisher_id in list(self._bases):
            await self._subscribe(publisher_id)

    async def _on_reconnected(self) -> None:
        # messages sent while we were away are gone: have the router resynchronise every publisher
        log.info("event plane: reconnected to NATS; resynchronising %d publisher(s)", len(self._subs))
        if self._on_connect is not None:
            for publisher_id in list(self._subs):
                self._on_connect(publisher_id)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _subscribe(self, publisher_id: int) -> None:
        base = self._bases.get(publisher_id)
        if (
            base is None
            or publisher_id in self._subs
            or publisher_id in self._subscribing
            or self._nc is None
        ):
            return
        self._subscribing.add(publisher_id)
        try:
            await self._subscribe_to(publisher_id, base)
        finally:
            self._subscribing.discard(publisher_id)

    async def _subscribe_to(self, publisher_id: int, base: str) -> None:

        async def deliver(msg: Any) -> None:
            topic = msg.subject.rsplit(".", 1)[1]
            if topic in self._topics and self._on_message is not None:
                try:
                    self._on_message(topic, msg.data)
                except Exception:
                    log.exception("event plane: handling a %r message failed", topic)

        sub = await self._nc.subscribe(
            f"{base}.*", cb=deliver, pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30
        )
        if self._bases.get(publisher_id) != base:  # unfollowed (or moved) while we subscribed
            await sub.unsubscribe()
            if publisher_id in self._bases:
                self._spawn(self._subscribe(publisher_id))
            return
        self._subs[publisher_id] = sub
        with contextlib.suppress(Exception):
            await self._nc.flush(timeout=2)  # the server has our SUB: from now on nothing is missed
        if self._on_connect is not None:
            self._on_connect(publisher_id)

    # -- following -----------------------------------------------------------------------------
    def follow(self, publisher_id: int, transport: dict[str, str]) -> bool:
        base = transport.get(ADDRESS_KEY)
        if not base:
            return False
        if self._bases.get(publisher_id) == base:
            return True
        self.unfollow(publisher_id)
        self._bases[publisher_id] = base
        self._ensure_connecting()
        if self._nc is not None:
            self._spawn(self._subscribe(publisher_id))
        return True

    def unfollow(self, publisher_id: int) -> None:
        self._bases.pop(publisher_id, None)
        sub = self._subs.pop(publisher_id, None)
        if sub is not None:
            self._spawn(sub.unsubscribe())

    async def query(
        self,
        publisher_id: int,
        topic: str,
        payload: bytes = b"",
        timeout: float = 5.0,  # noqa: ASYNC109
    ) -> bytes:
        base = self._bases.get(publisher_id)
        if base is None:
            raise EventPlaneError(f"publisher {publisher_id:x} is not followed")
        self._ensure_connecting()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            await asyncio.wait_for(self._connected.wait(), timeout)
            msg = await self._nc.request(
                f"{base}.{QUERY}.{topic}", payload, timeout=max(deadline - loop.time(), 0.001)
            )
        except TimeoutError:
            raise EventPlaneError(
                f"publisher {publisher_id:x} did not answer {topic!r} in {timeout}s"
            ) from None
        except Exception as exc:  # no responders, connection closed, timeout (nats' own TimeoutError)
            raise EventPlaneError(
                f"publisher {publisher_id:x} did not answer {topic!r}: {type(exc).__name__}: {exc}"
            ) from None
        data = msg.data
        if data[:1] == OK:
            return bytes(data[1:])
        raise EventPlaneError(bytes(data[1:]).decode(errors="replace") or "malformed reply")

    async def aclose(self) -> None:
        self._closed = True
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connector
        for task in list(self._tasks):
            task.cancel()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None
        self._bases.clear()
        self._subs.clear()
