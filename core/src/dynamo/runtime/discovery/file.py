"""File-system discovery for one machine (or a shared disk): no infrastructure needed.

Layout under the root directory (``DYN_FILE_KV``)::

    _leases/<lease:x>     {"pid", "host", "ttl"}; its mtime is refreshed every ttl/3 s
    <key>                 "<lease:x>\\n" + value, written atomically (tmp file + rename)

A key is live while its lease file exists and was refreshed within the TTL. A lease whose process
is gone (same host, pid not running) is dead at once, so a worker killed with SIGKILL disappears
within one poll interval instead of one TTL. Watchers poll the directory; whoever first sees a
dead lease removes its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

from dynamo.runtime.discovery.base import Discovery, EventKind, WatchEvent
from dynamo.runtime.records import new_instance_id

log = logging.getLogger(__name__)

LEASES = "_leases"
POLL_INTERVAL = 0.25


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


class _LeaseTable:
    """Reads lease files and decides which leases are alive (cached per poll)."""

    def __init__(self, root: Path, own: int) -> None:
        self.dir = root / LEASES
        self.own = own
        self.host = socket.gethostname()

    def alive(self, lease: int, now: float) -> bool:
        if lease == self.own:
            return True
        path = self.dir / f"{lease:x}"
        try:
            stat = path.stat()
            info = json.loads(path.read_bytes())
        except (FileNotFoundError, ValueError):
            return False
        if now - stat.st_mtime > float(info.get("ttl", 10.0)):
            return False
        if info.get("host") == self.host and not _pid_alive(int(info.get("pid", 0))):
            return False
        return True

    def reap(self, lease: int) -> None:
        with contextlib.suppress(FileNotFoundError):
            (self.dir / f"{lease:x}").unlink()


class FileDiscovery(Discovery):
    def __init__(self, root: str | os.PathLike[str], ttl: float = 5.0, poll_interval: float = POLL_INTERVAL):
        self.root = Path(root)
        self.ttl = ttl
        self.poll_interval = poll_interval
        self.lease_id = new_instance_id()
        self._leases = _LeaseTable(self.root, self.lease_id)
        self._keepalive: asyncio.Task[None] | None = None
        self._own_keys: set[str] = set()
        self._closed = False

    # -- lease -------------------------------------------------------------------------------
    def _lease_path(self) -> Path:
        return self.root / LEASES / f"{self.lease_id:x}"

    def _write_lease(self) -> None:
        info = {"pid": os.getpid(), "host": self._leases.host, "ttl": self.ttl}
        _atomic_write(self._lease_path(), json.dumps(info).encode())

    async def start(self) -> None:
        self._write_lease()
        self._keepalive = asyncio.create_task(self._keep_alive(), name="file-discovery-keepalive")

    async def _keep_alive(self) -> None:
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                os.utime(self._lease_path())
            except FileNotFoundError:  # reaped while we were stalled: re-create lease and keys
                log.warning("file discovery lease %x was lost; re-registering", self.lease_id)
                self._write_lease()
                for key in list(self._own_keys):
                    with contextlib.suppress(FileNotFoundError):
                        os.utime(self._path(key))

    # -- keys --------------------------------------------------------------------------------
    def _path(self, key: str) -> Path:
        if ".." in key.split("/") or key.startswith("/"):
            raise ValueError(f"invalid discovery key {key!r}")
        return self.root / key

    async def put(self, key: str, value: bytes) -> None:
        _atomic_write(self._path(key), f"{self.lease_id:x}\n".encode() + value)
        self._own_keys.add(key)

    async def delete(self, key: str) -> None:
        self._own_keys.discard(key)
        with contextlib.suppress(FileNotFoundError):
            self._path(key).unlink()

    def _scan(self, prefix: str) -> dict[str, tuple[float, Path]]:
        """key -> (mtime, path) for every file under ``prefix``."""
        base_dir, _, name_prefix = prefix.rpartition("/")
        start = self.root / base_dir if base_dir else self.root
        found: dict[str, tuple[float, Path]] = {}
        for dirpath, dirnames, filenames in os.walk(start):
            dirnames[:] = [d for d in dirnames if d != LEASES]
            for name in filenames:
                if name.startswith("."):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    with contextlib.suppress(FileNotFoundError):
                        found[key] = (path.stat().st_mtime, path)
        return found

    def _read_live(self, path: Path, now: float) -> bytes | None:
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        head, sep, value = raw.partition(b"\n")
        try:
            lease = int(head, 16)
        except ValueError:
            return None
        if not sep or not self._leases.alive(lease, now):
            self._leases.reap(lease)
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            return None
        return value

    def _snapshot(self, prefix: str) -> dict[str, bytes]:
        now = time.time()
        live: dict[str, bytes] = {}
        for key, (_, path) in self._scan(prefix).items():
            value = self._read_live(path, now)
            if value is not None:
                live[key] = value
        return live

    async def list(self, prefix: str) -> dict[str, bytes]:
        return self._snapshot(prefix)

    async def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        known: dict[str, bytes] = {}
        while not self._closed:
            current = self._snapshot(prefix)
            for key, value in current.items():
                if known.get(key) != value:
                    yield WatchEvent(EventKind.PUT, key, value)
            for key in known.keys() - current.keys():
                yield WatchEvent(EventKind.DELETE, key)
            known = current
            await asyncio.sleep(self.poll_interval)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        for key in list(self._own_keys):
            await self.delete(key)
        with contextlib.suppress(FileNotFoundError):
            self._lease_path().unlink()
