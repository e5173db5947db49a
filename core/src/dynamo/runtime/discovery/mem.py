"""In-process discovery: every ``MemDiscovery`` in one process shares one store.

For tests and for several components in one process (``--num-workers``); nothing crosses
process boundaries.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from dynamo.runtime.discovery.base import Discovery, EventKind, WatchEvent
from dynamo.runtime.records import new_instance_id


class _Store:
    def __init__(self) -> None:
        self.data: dict[str, tuple[int, bytes]] = {}
        self.watchers: list[tuple[str, asyncio.Queue[WatchEvent]]] = []

    def notify(self, event: WatchEvent) -> None:
        for prefix, queue in self.watchers:
            if event.key.startswith(prefix):
                queue.put_nowait(event)


_STORE = _Store()


class MemDiscovery(Discovery):
    def __init__(self, store: _Store | None = None) -> None:
        self._store = store or _STORE
        self.lease_id = new_instance_id()

    async def start(self) -> None:
        return None

    async def put(self, key: str, value: bytes) -> None:
        self._store.data[key] = (self.lease_id, value)
        self._store.notify(WatchEvent(EventKind.PUT, key, value))

    async def delete(self, key: str) -> None:
        if self._store.data.pop(key, None) is not None:
            self._store.notify(WatchEvent(EventKind.DELETE, key))

    async def list(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, (_, v) in self._store.data.items() if k.startswith(prefix)}

    async def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        queue: asyncio.Queue[WatchEvent] = asyncio.Queue()
        entry = (prefix, queue)
        self._store.watchers.append(entry)
        try:
            for key, value in (await self.list(prefix)).items():
                yield WatchEvent(EventKind.PUT, key, value)
            while True:
                yield await queue.get()
        finally:
            self._store.watchers.remove(entry)

    async def aclose(self) -> None:
        for key in [k for k, (lease, _) in self._store.data.items() if lease == self.lease_id]:
            await self.delete(key)
