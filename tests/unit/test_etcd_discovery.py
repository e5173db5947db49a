"""etcd discovery against a real etcd: leases, list-and-watch, and recovery after etcd restarts."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from dynamo.runtime.discovery import create_discovery
from dynamo.runtime.discovery.base import EventKind, WatchEvent
from dynamo.runtime.settings import RuntimeSettings, parse_args
from support.infra import EtcdServer

pytest.importorskip("etcd3aio", reason="etcd discovery needs etcd3aio (pip install -r requirements-test.txt)")

from dynamo.runtime.discovery.etcd import EtcdDiscovery, parse_endpoints  # noqa: E402

TTL = 2  # etcd's smallest lease TTL with default timing


def _prefix() -> str:
    return f"v1/test/{uuid.uuid4().hex[:8]}/"


async def _next(it: AsyncIterator[WatchEvent], within: float = 5.0) -> WatchEvent:
    return await asyncio.wait_for(anext(it), within)


def test_endpoints_parse() -> None:
    assert parse_endpoints("http://localhost:2379") == (["localhost:2379"], False)
    assert parse_endpoints("https://a:1, http://b , c:7") == (["a:1", "b:2379", "c:7"], True)
    with pytest.raises(ValueError):
        parse_endpoints("")
    with pytest.raises(ValueError):
        parse_endpoints("grpc://a:1")


def test_settings_select_etcd_and_read_dynamo_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCD_ENDPOINTS", "http://10.1.2.3:2379")
    monkeypatch.setenv("ETCD_AUTH_USERNAME", "alice")
    monkeypatch.setenv("ETCD_AUTH_PASSWORD", "s3cret")
    s, _, _ = parse_args(RuntimeSettings, ["--store-kv", "etcd", "--lease-ttl", "3"], prog="t")
    d = create_discovery(s)
    assert isinstance(d, EtcdDiscovery)
    assert (d.hosts, d.ttl, d.username, d.password) == (["10.1.2.3:2379"], 3, "alice", "s3cret")
    assert "s3cret" not in repr(s)
    s, _, _ = parse_args(
        RuntimeSettings, ["--discovery-backend", "etcd", "--etcd-auth-username", "bob"], prog="t"
    )
    assert create_discovery(s).username == "bob"  # type: ignore[attr-defined]


async def test_put_list_watch_delete(etcd_server: EtcdServer) -> None:
    prefix = _prefix()
    async with EtcdDiscovery(etcd_server.url, ttl=TTL) as a, EtcdDiscovery(etcd_server.url, ttl=TTL) as b:
        assert a.lease_id and a.lease_id != b.lease_id
        await a.put(prefix + "one", b"1")
        watch = b.watch(prefix)
        ev = await _next(watch)
        assert (ev.kind, ev.key, ev.value) == (EventKind.PUT, prefix + "one", b"1")
        await a.put(prefix + "two", b"2")
        await a.put(prefix[:-1] + "-other/x", b"not under the prefix")
        ev = await _next(watch)
        assert (ev.kind, ev.key, ev.value) == (EventKind.PUT, prefix + "two", b"2")
        await a.put(prefix + "two", b"2b")
        ev = await _next(watch)
        assert (ev.kind, ev.key, ev.value) == (EventKind.PUT, prefix + "two", b"2b")
        assert await b.list(prefix) == {prefix + "one": b"1", prefix + "two": b"2b"}
        await a.delete(prefix + "one")
        ev = await _next(watch)
        assert (ev.kind, ev.key) == (EventKind.DELETE, prefix + "one")
        await watch.aclose()  # type: ignore[attr-defined]


async def test_close_revokes_the_lease_and_its_keys(etcd_server: EtcdServer) -> None:
    prefix = _prefix()
    async with EtcdDiscovery(etcd_server.url, ttl=TTL) as watcher:
        watch = watcher.watch(prefix)
        a = EtcdDiscovery(etcd_server.url, ttl=30)
        await a.start()
        await a.put(prefix + "k", b"v")
        assert (await _next(watch)).kind is EventKind.PUT
        await a.aclose()
        ev = await _next(watch, within=2)  # revoked at once, not after the 30 s TTL
        assert (ev.kind, ev.key) == (EventKind.DELETE, prefix + "k")
        await watch.aclose()  # type: ignore[attr-defined]


async def test_lease_expiry_deletes_keys(etcd_server: EtcdServer) -> None:
    prefix = _prefix()
    async with EtcdDiscovery(etcd_server.url, ttl=TTL) as watcher:
        watch = watcher.watch(prefix)
        a = EtcdDiscovery(etcd_server.url, ttl=TTL)
        await a.start()
        await a.put(prefix + "k", b"v")
        assert (await _next(watch)).kind is EventKind.PUT
        await asyncio.sleep(TTL + 0.5)  # keepalive is running: the key must outlive its TTL
        assert await watcher.list(prefix) == {prefix + "k": b"v"}
        a._keepalive.cancel()  # type: ignore[union-attr]  # a hung or dead process: no more renewals
        stalled = time.monotonic()
        ev = await _next(watch, within=TTL + 3)
        assert (ev.kind, ev.key) == (EventKind.DELETE, prefix + "k")
        assert time.monotonic() - stalled < TTL + 1.5
        a._closed = True  # nothing left to revoke
        await a._client.close()
        await watch.aclose()  # type: ignore[attr-defined]


async def test_unreachable_etcd_fails_with_a_clear_error() -> None:
    from support.cluster import free_port

    d = EtcdDiscovery(f"http://127.0.0.1:{free_port()}", ttl=TTL, connect_timeout=0.5)
    with pytest.raises(RuntimeError, match="cannot reach etcd at http://127.0.0.1"):
        await d.start()


async def test_restart_keeps_lease_and_watch_resumes(private_etcd: EtcdServer) -> None:
    prefix = _prefix()
    async with EtcdDiscovery(private_etcd.url, ttl=TTL) as a, EtcdDiscovery(private_etcd.url, ttl=TTL) as b:
        await a.put(prefix + "a", b"1")
        watch = b.watch(prefix)
        assert (await _next(watch)).key == prefix + "a"
        await asyncio.to_thread(
            private_etcd.restart, TTL + 0.5
        )  # longer than the TTL: etcd renews leases on start
        await b.put(prefix + "b", b"2")  # written after the restart: the watch must deliver it
        ev = await _next(watch, within=10)
        assert (ev.kind, ev.key) == (EventKind.PUT, prefix + "b")
        await asyncio.sleep(TTL + 0.2)  # keepalives resumed: nothing expires
        assert await a.list(prefix) == {prefix + "a": b"1", prefix + "b": b"2"}
        assert a.lease_recoveries == 0
        await watch.aclose()  # type: ignore[attr-defined]


async def test_wiped_etcd_gets_keys_registered_again(private_etcd: EtcdServer) -> None:
    """etcd comes back empty (no volume): leases are re-created, keys put again, watches re-list."""
    prefix = _prefix()
    async with EtcdDiscovery(private_etcd.url, ttl=TTL) as a, EtcdDiscovery(private_etcd.url, ttl=TTL) as b:
        lease = a.lease_id
        await a.put(prefix + "a", b"1")
        await b.put(prefix + "b", b"2")
        watch = b.watch(prefix)
        seen = {(await _next(watch)).key for _ in range(2)}
        assert seen == {prefix + "a", prefix + "b"}
        await asyncio.to_thread(private_etcd.stop)
        private_etcd.wipe()
        await asyncio.to_thread(private_etcd.start)
        deadline = time.monotonic() + 10
        while await a.list(prefix) != {prefix + "a": b"1", prefix + "b": b"2"}:
            assert time.monotonic() < deadline, await a.list(prefix)
            await asyncio.sleep(0.1)
        assert a.lease_recoveries == 1 and b.lease_recoveries == 1
        assert a.lease_id == lease  # the instance id (and so every key) stays the same
        await a.put(prefix + "c", b"3")  # the watch follows the new etcd's revisions
        events = []
        while not any(e.key == prefix + "c" for e in events):
            events.append(await _next(watch, within=10))
        assert all(e.kind is EventKind.PUT for e in events)
        # the re-registered keys are on a live lease: they survive past the TTL...
        await asyncio.sleep(TTL + 0.5)
        assert set(await b.list(prefix)) == {prefix + "a", prefix + "b", prefix + "c"}
        await watch.aclose()  # type: ignore[attr-defined]
    # ...and go when their owners close
    async with EtcdDiscovery(private_etcd.url, ttl=TTL) as c:
        assert await c.list(prefix) == {}


async def test_auth_user_and_password(private_etcd: EtcdServer) -> None:
    private_etcd.etcdctl("user", "add", "root:rootpw", "--interactive=false")
    private_etcd.etcdctl("auth", "enable")
    with pytest.raises(RuntimeError, match="refused our credentials"):
        await EtcdDiscovery(private_etcd.url, ttl=TTL, username="root", password="wrong").start()
    prefix = _prefix()
    async with EtcdDiscovery(private_etcd.url, ttl=TTL, username="root", password="rootpw") as a:
        await a.put(prefix + "k", b"v")
        watch = a.watch(prefix)
        assert (await _next(watch)).key == prefix + "k"
        await asyncio.to_thread(
            private_etcd.restart
        )  # etcd forgets simple tokens on restart: we must log in again
        await a.put(prefix + "k2", b"v2")
        ev = await _next(watch, within=10)
        assert ev.key == prefix + "k2"
        await watch.aclose()  # type: ignore[attr-defined]
