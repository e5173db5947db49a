"""The request plane's two sides, whatever carries the bytes (TCP by default, or NATS).

A server hosts one handler per endpoint: ``handler(request) -> AsyncIterator[Delta]``. A client
sends a ``GenerateRequest`` to one instance (named by the transport address the instance
published in discovery) and iterates the deltas. A stream always ends explicitly: an END frame,
an ERROR frame (raised as the matching ``DynamoError``), or ``WorkerLost`` when the worker
vanished. Closing the client-side iterator early cancels the request on the worker.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable

from dynamo.plugin.types import Delta, GenerateRequest

Handler = Callable[[GenerateRequest], AsyncIterator[Delta]]


class RequestPlaneServer(abc.ABC):
    @abc.abstractmethod
    async def start(self, handlers: dict[str, Handler]) -> dict[str, str]:
        """Start serving; return the transport address to publish, e.g. ``{"tcp": "host:port"}``."""

    @property
    @abc.abstractmethod
    def active_streams(self) -> int:
        """Streams being served now."""

    @abc.abstractmethod
    async def aclose(self, grace: float = 0.0) -> None:
        """Stop accepting; wait up to ``grace`` seconds for streams in flight, then cancel them."""


class RequestPlaneClient(abc.ABC):
    @abc.abstractmethod
    def generate(
        self, transport: dict[str, str], endpoint: str, request: GenerateRequest,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[Delta]:
        """Send ``request`` to the instance at ``transport`` and stream its deltas."""

    @abc.abstractmethod
    def forget(self, transport: dict[str, str]) -> None:
        """Drop connections to an instance that left discovery."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...
