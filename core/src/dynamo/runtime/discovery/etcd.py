"""etcd discovery for clusters (``--discovery-backend etcd``; ``ETCD_ENDPOINTS``).

One lease per process, granted at start with the ``lease_ttl`` setting and kept alive every
TTL/3 seconds; every key the process puts is attached to it, so a process that dies (stops
renewing) loses its keys within the TTL and watchers see them deleted.

Recovery without restarting the process:

* **etcd restarts with its data** (the usual case): the lease and keys survive; keepalives and
  watches resume once etcd answers again.
* **the lease is gone** (etcd lost its data, or this process was cut off for longer than the TTL):
  the next keepalive says so, and the process grants a lease with the *same id* (so its instance
  id and keys stay the same) and puts every key it owns again.
* **watches** are list-then-watch: a snapshot at revision R, then a watch stream from R+1. When
  the stream breaks (etcd restart, compaction, auth token invalidated), the watcher lists again,
  yields the difference against what it had reported (PUT for new or changed keys, DELETE for
  vanished ones), and watches from the new revision. A restarted etcd with a fresh data directory
  starts its revisions from 1 again; re-listing copes with that too.

The client is ``etcd3aio`` (asyncio over grpc.aio), imported only when this backend is chosen
(``pip install 'dynamo-core[etcd]'``). Watches use the raw gRPC Watch stream from the library's
generated stubs, because its high-level ``watch()`` hides reconnects, and we must re-list after one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from dynamo.runtime.discovery.base import Discovery, EventKind, WatchEvent

if TYPE_CHECKING:
    from dynamo.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PORT = 2379
#: how long ``start`` keeps trying to reach etcd before giving up with a clear error
CONNECT_TIMEOUT = 10.0
#: deadline of one unary call (put, get, grant...) once connected
RPC_TIMEOUT = 5.0
BACKOFF_MIN = 0.05
BACKOFF_MAX = 2.0
GRPC_RECONNECT_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


def _describe(exc: BaseException) -> str:
    """One line for a log: gRPC errors print pages otherwise."""
    code = getattr(exc, "code", None)
    details = getattr(exc, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return f"{type(exc).__name__}: {exc}"


def _import_etcd3aio() -> Any:
    try:
        import etcd3aio
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise RuntimeError(
            "etcd discovery needs the etcd3aio package: pip install 'dynamo-core[etcd]'"
        ) from exc
    return etcd3aio


def parse_endpoints(endpoints: str) -> tuple[list[str], bool]:
    """``"http://a:2379,https://b"`` -> (``["a:2379", "b:2379"]``, uses TLS)."""
    hosts: list[str] = []
    tls = False
    for raw in endpoints.split(","):
        raw = raw.strip()
        if not raw:
            continue
        if "://" not in raw:
            raw = "http://" + raw
        url = urlsplit(raw)
        if url.scheme not in ("http", "https"):
            raise ValueError(f"etcd endpoint {raw!r}: scheme must be http or https")
        tls = tls or url.scheme == "https"
        if not url.hostname:
            raise ValueError(f"etcd endpoint {raw!r} has no host")
        host = f"[{url.hostname}]" if ":" in url.hostname else url.hostname
        hosts.append(f"{host}:{url.port or DEFAULT_PORT}")
    if not hosts:
        raise ValueError("no etcd endpoint given (ETCD_ENDPOINTS / --etcd-endpoints)")
    return hosts, tls


def _read(path: str | None) -> bytes | None:
    if not path:
        return None
    with open(path, "rb") as f:
        return f.read()


class EtcdDiscovery(Discovery):
    def __init__(
        self,
        endpoints: str = "http://localhost:2379",
        *,
        ttl: float = 5.0,
        username: str | None = None,
        password: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.endpoints = endpoints
        self.hosts, self.tls = parse_endpoints(endpoints)
        self.ttl = max(1, math.ceil(ttl))
        self.username = username
        self.password = password
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        if (cert_file or key_file) and not (cert_file and key_file):
            raise ValueError("etcd client TLS needs both a certificate and a key (ETCD_AUTH_CLIENT_CERT/KEY)")
        if (cert_file or ca_file) and not self.tls:
            self.tls = True  # certificates given: talk TLS even if the URL says http
        self.connect_timeout = connect_timeout
        self.lease_id = 0
        self._lease = 0  # the etcd lease in use (normally == lease_id)
        self._granted_ttl = self.ttl
        self._client: Any = None
        self._etcd: Any = None
        self._own: dict[str, bytes] = {}
        self._write_lock = asyncio.Lock()
        self._keepalive: asyncio.Task[None] | None = None
        self._closed = False
        #: times the lease was found lost and re-created (for tests and /metrics)
        self.lease_recoveries = 0

    @classmethod
    def from_settings(cls, settings: RuntimeSettings) -> EtcdDiscovery:
        password = settings.etcd_auth_password
        return cls(
            settings.etcd_endpoints,
            ttl=settings.lease_ttl,
            username=settings.etcd_auth_username or None,
            password=password.get_secret_value() if password is not None else None,
            ca_file=settings.etcd_auth_ca or None,
            cert_file=settings.etcd_auth_client_cert or None,
            key_file=settings.etcd_auth_client_key or None,
        )

    # -- connection ------------------------------------------------------------------------------
    def _tls_args(self) -> dict[str, bytes | None]:
        if not self.tls:
            return {}
        ca = _read(self.ca_file)
        if ca is None:  # https without a CA file: trust the system's CA bundle
            cafile = ssl.get_default_verify_paths().cafile
            ca = _read(cafile) if cafile else None
            if ca is None:
                raise ValueError("etcd over https needs a CA certificate (ETCD_AUTH_CA / --etcd-auth-ca)")
        return {"ca_cert": ca, "cert_chain": _read(self.cert_file), "cert_key": _read(self.key_file)}

    async def _authenticate(self) -> None:
        if not self.username:
            return
        resp = await self._client.auth.authenticate(self.username, self.password or "", timeout=RPC_TIMEOUT)
        self._client.set_token(resp.token)

    def _metadata(self) -> tuple[tuple[str, str], ...] | None:
        token = getattr(self._client, "_token", None)
        return (("token", token),) if token else None

    async def _call(self, fn: Callable[[], Awaitable[T]], patience: float = RPC_TIMEOUT) -> T:
        """Run one unary call, retrying while etcd is unreachable for up to ``patience`` seconds.

        Re-authenticates once if etcd forgot our token (it does when it restarts).
        """
        deadline = time.monotonic() + patience
        delay = BACKOFF_MIN
        reauthenticated = False
        while True:
            try:
                return await fn()
            except self._etcd.EtcdUnauthenticatedError:
                if not self.username or reauthenticated:
                    raise
                log.info("etcd rejected the auth token; authenticating again")
                reauthenticated = True
                await self._authenticate()
            except (self._etcd.EtcdConnectionError, self._etcd.EtcdTransientError):
                if time.monotonic() + delay > deadline:
                    raise
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX / 4)

    async def start(self) -> None:
        self._etcd = _import_etcd3aio()
        tls_server_name = None
        if self.tls and len(self.hosts) > 1:
            tls_server_name = self.hosts[0].rsplit(":", 1)[0].strip("[]")
        self._client = self._etcd.Etcd3Client(self.hosts, tls_server_name=tls_server_name, **self._tls_args())
        manager = getattr(self._client, "_manager", None)
        if (
            manager is not None
        ):  # notice a restarted etcd within ~0.5 s (gRPC's default backoff grows to 2 min)
            manager.grpc_options = [*manager.grpc_options, *GRPC_RECONNECT_OPTIONS]
        await self._client.connect()
        deadline = time.monotonic() + self.connect_timeout
        delay = BACKOFF_MIN
        while True:
            try:
                await self._authenticate()
                lease = await self._client.lease.grant(self.ttl, timeout=RPC_TIMEOUT)
                break
            except (self._etcd.EtcdConnectionError, self._etcd.EtcdTransientError, OSError) as exc:
                if time.monotonic() + delay > deadline:
                    await self._client.close()
                    raise RuntimeError(
                        f"cannot reach etcd at {self.endpoints} (ETCD_ENDPOINTS) after "
                        f"{self.connect_timeout:g}s: {_describe(exc)}. Is etcd running and the port open?"
                    ) from exc
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)
            except Exception as exc:  # etcd answered, and said no
                await self._client.close()
                what = "refused our credentials" if self.username else "refused the connection"
                raise RuntimeError(f"etcd at {self.endpoints} {what}: {_describe(exc)}") from exc
        self.lease_id = self._lease = int(lease.ID)
        self._granted_ttl = max(1, int(lease.TTL))
        self._keepalive = asyncio.create_task(self._keep_alive(), name="etcd-lease-keepalive")
        log.info("etcd discovery: lease %x (ttl %ss) at %s", self.lease_id, self._granted_ttl, self.endpoints)

    # -- lease -----------------------------------------------------------------------------------
    async def _keep_alive_once(self) -> int:
        """Refresh the lease once; return the TTL etcd reports (<= 0: the lease is gone)."""
        stream = self._client.lease.keep_alive(self._lease)
        try:
            async with asyncio.timeout(max(1.0, self._granted_ttl / 3)):
                async for resp in stream:
                    return int(resp.TTL)
        finally:
            stream.cancel()
        raise ConnectionError("etcd closed the keepalive stream")

    async def _keep_alive(self) -> None:
        delay = BACKOFF_MIN
        failing_since: float | None = None
        while True:
            await asyncio.sleep(self._granted_ttl / 3 if failing_since is None else delay)
            try:
                ttl = await self._call(self._keep_alive_once)
                if ttl <= 0:
                    await self._recover_lease()
                if failing_since is not None:
                    log.info(
                        "etcd is reachable again after %.1fs; lease %x is alive",
                        time.monotonic() - failing_since,
                        self._lease,
                    )
                failing_since, delay = None, BACKOFF_MIN
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if failing_since is None:
                    failing_since = time.monotonic()
                    log.warning("etcd lease keepalive failed (%s); retrying", _describe(exc))
                if self.username:  # a restarted etcd forgets tokens; the keepalive stream needs a new one
                    with contextlib.suppress(Exception):
                        await self._authenticate()
                delay = min(delay * 2, BACKOFF_MAX)

    async def _recover_lease(self) -> None:
        """The lease expired or etcd lost it: grant it again (same id if we can) and re-put our keys."""
        async with self._write_lock:
            try:
                lease = await self._call(
                    lambda: self._client.lease.grant(self.ttl, self.lease_id, timeout=RPC_TIMEOUT)
                )
            except self._etcd.EtcdError:
                raise
            except Exception:  # e.g. "lease already exists" from a race: take any id
                lease = await self._call(lambda: self._client.lease.grant(self.ttl, timeout=RPC_TIMEOUT))
            self._lease = int(lease.ID)
            self._granted_ttl = max(1, int(lease.TTL))
            for key, value in self._own.items():
                await self._call(
                    lambda k=key, v=value: self._client.kv.put(k, v, lease=self._lease, timeout=RPC_TIMEOUT)
                )
            self.lease_recoveries += 1
        log.warning(
            "etcd lease %x was lost (etcd restarted without its data, or we were cut off longer "
            "than the TTL); granted lease %x and re-registered %d keys",
            self.lease_id,
            self._lease,
            len(self._own),
        )

    # -- keys ------------------------------------------------------------------------------------
    async def put(self, key: str, value: bytes) -> None:
        async with self._write_lock:
            self._own[key] = value
            await self._call(lambda: self._client.kv.put(key, value, lease=self._lease, timeout=RPC_TIMEOUT))

    async def delete(self, key: str) -> None:
        async with self._write_lock:
            self._own.pop(key, None)
            await self._call(lambda: self._client.kv.delete(key, timeout=RPC_TIMEOUT))

    async def _range(self, prefix: str) -> tuple[int, dict[str, bytes]]:
        end = self._etcd.prefix_range_end(prefix)
        resp = await self._call(lambda: self._client.kv.get(prefix, range_end=end, timeout=RPC_TIMEOUT))
        return int(resp.header.revision), {kv.key.decode(): bytes(kv.value) for kv in resp.kvs}

    async def list(self, prefix: str) -> dict[str, bytes]:
        return (await self._range(prefix))[1]

    async def _watch_stream(self, prefix: str, start_revision: int) -> AsyncIterator[Any]:
        """Raw watch responses from ``start_revision``; returns when etcd cancels the watch."""
        from etcd3aio._protobuf import WatchCreateRequest, WatchRequest, WatchStub

        create = WatchCreateRequest(
            key=prefix.encode(), range_end=self._etcd.prefix_range_end(prefix), start_revision=start_revision
        )

        async def requests() -> AsyncIterator[Any]:
            yield WatchRequest(create_request=create)
            await asyncio.Future()  # keep the request side open

        stub = WatchStub(self._client._channel)
        stream = stub.Watch(requests(), metadata=self._metadata())
        try:
            async for resp in stream:
                if resp.canceled:
                    reason = resp.cancel_reason or (
                        f"compacted at revision {resp.compact_revision}"
                        if resp.compact_revision
                        else "canceled"
                    )
                    raise ConnectionError(f"etcd cancelled the watch: {reason}")
                yield resp
        finally:
            stream.cancel()

    async def watch(self, prefix: str) -> AsyncIterator[WatchEvent]:
        known: dict[str, bytes] = {}
        delay = BACKOFF_MIN
        failing = False
        while not self._closed:
            try:
                revision, current = await self._range(prefix)
                for key, value in current.items():
                    if known.get(key) != value:
                        yield WatchEvent(EventKind.PUT, key, value)
                for key in known.keys() - current.keys():
                    yield WatchEvent(EventKind.DELETE, key)
                known = current
                if failing:
                    log.info("etcd watch on %s resumed at revision %d", prefix, revision)
                    failing = False
                async with contextlib.aclosing(self._watch_stream(prefix, revision + 1)) as stream:
                    async for resp in stream:
                        delay = BACKOFF_MIN
                        for ev in resp.events:
                            key = ev.kv.key.decode()
                            if ev.type == 0:  # PUT
                                value = bytes(ev.kv.value)
                                known[key] = value
                                yield WatchEvent(EventKind.PUT, key, value)
                            elif known.pop(key, None) is not None:
                                yield WatchEvent(EventKind.DELETE, key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if self._closed:
                    return
                if not failing:
                    log.warning(
                        "etcd watch on %s broke (%s); re-listing when etcd is back", prefix, _describe(exc)
                    )
                    failing = True
                if self.username:
                    with contextlib.suppress(Exception):
                        await self._authenticate()
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_MAX)

    # -- shutdown --------------------------------------------------------------------------------
    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._keepalive is not None:
            self._keepalive.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keepalive
        if self._client is None:
            return
        if self._lease:
            try:  # revoking deletes every key on the lease at once
                await self._client.lease.revoke(self._lease, timeout=1.0, max_attempts=1)
            except Exception as exc:
                log.warning(
                    "could not revoke etcd lease %x (%s); its keys expire within %ss",
                    self._lease,
                    exc,
                    self._granted_ttl,
                )
        self._own.clear()
        await self._client.close()
