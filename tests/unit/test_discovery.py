from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dynamo.runtime.discovery.base import EventKind
from dynamo.runtime.discovery.file import FileDiscovery
from dynamo.runtime.discovery.mem import MemDiscovery, _Store


async def _next(it, timeout: float = 5.0):  # type: ignore[no-untyped-def]
    return await asyncio.wait_for(anext(it), timeout)


@pytest.mark.parametrize("backend", ["mem", "file"])
async def test_put_list_watch_delete(backend: str, tmp_path: Path) -> None:
    if backend == "mem":
        store = _Store()
        a, b = MemDiscovery(store), MemDiscovery(store)
    else:
        a, b = FileDiscovery(tmp_path, poll_interval=0.02), FileDiscovery(tmp_path, poll_interval=0.02)
    async with a, b:
        await a.put("v1/x/one", b"1")
        watch = b.watch("v1/x/")
        first = await _next(watch)
        assert (first.kind, first.key, first.value) == (EventKind.PUT, "v1/x/one", b"1")
        await a.put("v1/x/two", b"2")
        await a.put("v1/y/other", b"ignored")
        ev = await _next(watch)
        assert (ev.kind, ev.key, ev.value) == (EventKind.PUT, "v1/x/two", b"2")
        assert await b.list("v1/x/") == {"v1/x/one": b"1", "v1/x/two": b"2"}
        await a.delete("v1/x/one")
        ev = await _next(watch)
        assert (ev.kind, ev.key) == (EventKind.DELETE, "v1/x/one")
        await watch.aclose()


async def test_closing_revokes_the_lease_and_its_keys(tmp_path: Path) -> None:
    a = FileDiscovery(tmp_path)
    await a.start()
    await a.put("v1/k", b"v")
    await a.aclose()
    async with FileDiscovery(tmp_path) as b:
        assert await b.list("v1/") == {}


async def test_expired_lease_drops_keys(tmp_path: Path) -> None:
    a = FileDiscovery(tmp_path, ttl=0.3)
    await a.start()
    await a.put("v1/k", b"v")
    a._keepalive.cancel()  # type: ignore[union-attr]  # a stalled process: no more renewals
    async with FileDiscovery(tmp_path) as b:
        assert await b.list("v1/") == {"v1/k": b"v"}
        await asyncio.sleep(0.5)
        assert await b.list("v1/") == {}


async def test_sigkilled_process_disappears_within_a_poll(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import asyncio
        from dynamo.runtime.discovery.file import FileDiscovery
        async def main():
            d = FileDiscovery({str(tmp_path)!r}, ttl=30)
            await d.start()
            await d.put("v1/worker", b"alive")
            print("ready", flush=True)
            await asyncio.sleep(60)
        asyncio.run(main())
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        async with FileDiscovery(tmp_path, poll_interval=0.05) as d:
            watch = d.watch("v1/")
            assert (await _next(watch)).kind is EventKind.PUT
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            started = time.monotonic()
            ev = await _next(watch)
            assert (ev.kind, ev.key) == (EventKind.DELETE, "v1/worker")
            assert time.monotonic() - started < 1.0  # not the 30 s TTL
            await watch.aclose()
    finally:
        proc.kill()


def test_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    d = FileDiscovery(tmp_path)
    with pytest.raises(ValueError):
        d._path("../etc/passwd")
