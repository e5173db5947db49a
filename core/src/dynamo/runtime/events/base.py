"""The event plane's two sides, whatever carries the bytes (direct TCP by default, or NATS).

Workers *publish* small messages on named topics (KV events, load metrics) and *answer* queries on
named topics (a KV snapshot); routers *subscribe* to the topics of the workers they follow and
*query* one worker. Payloads are opaque bytes: the KV layer encodes them (``messages.py``).

Delivery is best effort and in order per publisher: a subscriber may miss messages (a slow or
reconnecting subscriber, a broker hiccup), so every stream that needs completeness carries its own
sequence numbers and recovers by querying the publisher. Nothing here may block the event loop.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence

#: ``(topic, payload)`` for every message received on a subscribed topic
MessageHandler = Callable[[str, bytes], None]
#: called with a publisher's id each time the subscriber (re)connects to it
ConnectHandler = Callable[[int], None]
#: answers one query: request payload in, reply payload out (runs on the event loop; keep it quick)
QueryHandler = Callable[[bytes], bytes]


class EventPlaneError(Exception):
    """A query could not be answered (publisher unreachable, timeout, handler failure)."""


class EventPublisher(abc.ABC):
    """One worker's outlet."""

    @abc.abstractmethod
    async def start(self) -> dict[str, str]:
        """Start; return the entries to add to the instance record's ``transport`` (may be empty)."""

    @abc.abstractmethod
    def publish(self, topic: str, payload: bytes) -> None:
        """Send ``payload`` to every subscriber of ``topic``; never blocks."""

    @abc.abstractmethod
    def answer(self, topic: str, handler: QueryHandler) -> None:
        """Serve queries on ``topic`` with ``handler``."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...


class EventSubscriber(abc.ABC):
    """One router's inlet: it follows the publishers it learns about from discovery."""

    @abc.abstractmethod
    def start(self, topics: Sequence[str], on_message: MessageHandler,
              on_connect: ConnectHandler | None = None) -> None:
        """Deliver the messages of ``topics`` from every followed publisher to ``on_message``."""

    @abc.abstractmethod
    def follow(self, publisher_id: int, transport: dict[str, str]) -> bool:
        """Receive from the publisher with this id (its instance record's ``transport``).

        Returns ``False`` when the record advertises no event-plane address for this plane.
        """

    @abc.abstractmethod
    def unfollow(self, publisher_id: int) -> None:
        """Stop receiving from a publisher (it left discovery)."""

    @abc.abstractmethod
    async def query(self, publisher_id: int, topic: str, payload: bytes = b"", timeout: float = 5.0) -> bytes:  # noqa: ASYNC109
        """Ask one followed publisher; raise ``EventPlaneError`` when no answer comes."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...
