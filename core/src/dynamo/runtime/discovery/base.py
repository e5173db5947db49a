"""The discovery interface: a key-value store with one lease per process and prefix watches.

Every key a process puts is attached to its lease; when the process dies (stops renewing the
lease), its keys vanish within the lease TTL and watchers see them deleted.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass


class EventKind(str, enum.Enum):
    PUT = "put"
    DELETE = "delete"


@dataclass(frozen=True, slots=True)
class WatchEvent:
    kind: EventKind
    key: str
    value: bytes = b""


class Discovery(abc.ABC):
    """One process's view of the discovery store."""

    #: this process's lease id (also used as its instance id)
    lease_id: int

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect and acquire the lease (keepalive runs in the background)."""

    @abc.abstractmethod
    async def put(self, key: str, value: bytes) -> None:
        """Create or replace ``key``, attached to this process's lease."""

    @abc.abstractmethod
    async def delete(self, key: str) -> None:
        """Remove ``key`` (no error when absent)."""

    @abc.abstractmethod
    async def list(self, prefix: str) -> dict[str, bytes]:
        """Live keys under ``prefix``."""

    @abc.abstractmethod
    def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        """Yield a PUT for every live key under ``prefix``, then every change, until closed.

        After a reconnect the backend re-lists and yields the difference, so a watcher never
        needs to restart.
        """

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Revoke the lease (deleting this process's keys) and stop background tasks."""

    async def __aenter__(self) -> "Discovery":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
