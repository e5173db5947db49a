"""The NATS request plane (``--request-plane nats``; ``NATS_SERVER``).

Each worker subscribes to a subject of its own and publishes it in its instance record
(``{"nats": "<subject>"}``), so a request goes to exactly the instance the router picked. The
frontend keeps one wildcard inbox subscription (``_INBOX.<id>.*``) and gives every request its own
reply subject under it; replies for all streams share that one subscription.

Message bodies (payloads reuse ``codec``'s msgpack encodings)::

    client -> worker   u8 kind | payload
        REQUEST  RequestEnvelope, reply subject = the stream's inbox
        CANCEL   the stream's reply subject (utf-8): stop generating; acknowledged with an empty
                 reply, and re-sent until it is (a cancel must survive a NATS restart)
    worker -> client   u8 kind | u32 seq | payload        (seq counts 0, 1, 2... per stream)
        HEARTBEAT  empty: sent at once as an acknowledgement, then whenever the stream was
                   silent for ``nats_stream_heartbeat`` seconds
        DATA       Delta
        END        empty: the stream finished
        ERROR      ErrorPayload; ends the stream

Failure handling on the client side:

* a request nobody is subscribed to gets NATS's "no responders" status: ``WorkerUnreachable``
  (the router tries another worker), unless we are reconnecting to NATS or did a moment ago and
  the worker may not have resubscribed yet; then it is re-sent for up to ``RECONNECT_GRACE`` s;
* no frame for ``nats_stream_timeout`` seconds: ``WorkerUnreachable`` if the worker never
  acknowledged the request, else ``WorkerLost``;
* a gap in ``seq`` (NATS is at-most-once; frames are dropped while a peer reconnects):
  ``WorkerLost`` at once, never a silently truncated answer;
* losing our own NATS connection mid-stream: ``ServiceUnavailable`` at once for every stream in
  flight (the workers are fine; it is the bus that went away, so they must not be set aside).

Closing the client-side iterator early publishes CANCEL; the worker cancels the handler, which
aborts the engine request.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import re
import ssl
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from dynamo.plugin.errors import (
    DynamoError,
    EngineShutdown,
    InvalidRequest,
    ServiceUnavailable,
    WorkerLost,
    WorkerUnreachable,
    from_code,
)
from dynamo.plugin.types import Delta, GenerateRequest
from dynamo.runtime.transport import codec
from dynamo.runtime.transport.base import Handler, RequestPlaneClient, RequestPlaneServer
from dynamo.runtime.transport.codec import Kind

if TYPE_CHECKING:
    from dynamo.runtime.settings import RuntimeSettings

log = logging.getLogger(__name__)

HEARTBEAT = 0x10  # worker -> client only, on this transport
REPLY_HEADER = struct.Struct(">BI")
#: how long an initial connection to NATS may take before start-up fails
CONNECT_TIMEOUT = 10.0
#: how long a request waits for the client's first connection to NATS before failing
FIRST_CONNECT_WAIT = 3.0
#: after our own reconnect, "no responders" is retried this long (workers are resubscribing)
RECONNECT_GRACE = 3.0
STATUS_NO_RESPONDERS = "503"
#: how long a client keeps re-sending an unacknowledged cancel (the worker may be reconnecting)
CANCEL_PATIENCE = 5.0

_SUBJECT_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def _import_nats() -> Any:
    try:
        import nats
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("the NATS request plane needs nats-py: pip install 'dynamo-core[nats]'") from exc
    return nats


# ------------------------------------------------------------------------------------------------
# connection (shared with the NATS event plane)
# ------------------------------------------------------------------------------------------------


class NatsOptions:
    """How to reach NATS: servers, credentials and TLS, from settings or explicit values."""

    def __init__(
        self,
        servers: str = "nats://localhost:4222",
        *,
        user: str | None = None,
        password: str | None = None,
        token: str | None = None,
        credentials_file: str | None = None,
        ca_file: str | None = None,
        cert_file: str | None = None,
        key_file: str | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.servers = [s.strip() for s in servers.split(",") if s.strip()]
        if not self.servers:
            raise ValueError("no NATS server given (NATS_SERVER / --nats-server)")
        self.user, self.password, self.token = user, password, token
        self.credentials_file = credentials_file
        self.ca_file, self.cert_file, self.key_file = ca_file, cert_file, key_file
        if (cert_file or key_file) and not (cert_file and key_file):
            raise ValueError(
                "NATS client TLS needs both a certificate and a key (NATS_TLS_CERT_PATH/KEY_PATH)"
            )
        self.connect_timeout = connect_timeout

    @classmethod
    def from_settings(cls, settings: RuntimeSettings) -> NatsOptions:
        def secret(value: Any) -> str | None:
            return value.get_secret_value() if value is not None else None

        return cls(
            settings.nats_server,
            user=settings.nats_auth_username or None,
            password=secret(settings.nats_auth_password),
            token=secret(settings.nats_auth_token),
            credentials_file=settings.nats_auth_credentials_file or None,
            ca_file=settings.nats_tls_ca_cert_path or None,
            cert_file=settings.nats_tls_cert_path or None,
            key_file=settings.nats_tls_key_path or None,
        )

    @property
    def display(self) -> str:
        return ",".join(self.servers)

    def tls_context(self) -> ssl.SSLContext | None:
        wants_tls = any(s.startswith("tls://") for s in self.servers)
        if not (self.ca_file or self.cert_file or wants_tls):
            return None
        ctx = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file and self.key_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx

    async def connect(self, name: str, **callbacks: Any) -> Any:
        """A connected nats-py client that reconnects forever, or ``RuntimeError`` after the timeout."""
        nats = _import_nats()
        last_error: list[BaseException] = []

        async def error_cb(exc: BaseException) -> None:
            if not last_error or type(last_error[-1]) is not type(exc):
                log.warning("NATS (%s): %s: %s", self.display, type(exc).__name__, exc)
            last_error[:] = [exc]
            user_cb = callbacks.get("error_cb")
            if user_cb is not None:
                await user_cb(exc)

        kwargs: dict[str, Any] = {
            **callbacks,
            "error_cb": error_cb,
            "name": name,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
            "connect_timeout": max(1, int(min(self.connect_timeout, 2))),
            "ping_interval": 10,
            "max_outstanding_pings": 2,
        }
        if self.user:
            kwargs["user"], kwargs["password"] = self.user, self.password or ""
        if self.token:
            kwargs["token"] = self.token
        if self.credentials_file:
            kwargs["user_credentials"] = self.credentials_file
        tls = self.tls_context()
        if tls is not None:
            kwargs["tls"] = tls
        nc = nats.NATS()
        try:
            await asyncio.wait_for(nc.connect(self.servers, **kwargs), self.connect_timeout)
        except (TimeoutError, Exception) as exc:
            with contextlib.suppress(Exception):
                await nc.close()
            cause = last_error[-1] if last_error else exc
            raise RuntimeError(
                f"cannot reach NATS at {self.display} (NATS_SERVER) after {self.connect_timeout:g}s: "
                f"{type(cause).__name__}: {cause}. Is nats-server running and the port open?"
            ) from exc
        return nc


def _subject_token(text: str) -> str:
    return _SUBJECT_TOKEN.sub("_", text) or "_"


# ------------------------------------------------------------------------------------------------
# server (worker side)
# ------------------------------------------------------------------------------------------------


class _ServedStream:
    __slots__ = ("task", "seq", "last_sent")

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.seq = 0
        self.last_sent = 0.0


class NatsServer(RequestPlaneServer):
    """Serves endpoints on one NATS subject of this instance's own."""

    def __init__(
        self, options: NatsOptions, subject_prefix: str = "dynamo.backend.generate", heartbeat: float = 1.0
    ) -> None:
        self.options = options
        self.subject = f"{subject_prefix}.{uuid.uuid4().hex[:16]}"
        self.heartbeat = heartbeat
        self._handlers: dict[str, Handler] = {}
        self._nc: Any = None
        self._sub: Any = None
        self._streams: dict[str, _ServedStream] = {}
        self._heartbeats: asyncio.Task[None] | None = None
        self._closing = False
        #: shutting down: new requests are refused with ``engine_shutdown`` (the router sends them
        #: elsewhere), while streams in flight finish and cancels still arrive
        self.draining = False

    @classmethod
    def from_settings(cls, settings: RuntimeSettings) -> NatsServer:
        parts = [
            settings.namespace,
            getattr(settings, "component", "backend"),
            getattr(settings, "endpoint", "generate"),
        ]
        prefix = "dynamo_rp." + ".".join(_subject_token(p) for p in parts)
        return cls(NatsOptions.from_settings(settings), prefix, heartbeat=settings.nats_stream_heartbeat)

    @property
    def active_streams(self) -> int:
        return len(self._streams)

    async def start(self, handlers: dict[str, Handler]) -> dict[str, str]:
        self._handlers = dict(handlers)

        async def reconnected_cb() -> None:
            log.info("request plane: reconnected to NATS at %s", self._nc.connected_url.netloc)

        async def disconnected_cb() -> None:
            if not self._closing:
                log.warning("request plane: disconnected from NATS; reconnecting")

        self._nc = await self.options.connect(
            f"dynamo-worker-{self.subject.rsplit('.', 1)[1]}",
            reconnected_cb=reconnected_cb,
            disconnected_cb=disconnected_cb,
        )
        self._sub = await self._nc.subscribe(
            self.subject, cb=self._on_message, pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30
        )
        await self._nc.flush()
        self._heartbeats = asyncio.create_task(self._heartbeat_loop(), name="nats-rp-heartbeats")
        return {"nats": self.subject}

    async def _on_message(self, msg: Any) -> None:
        data = msg.data
        if not data:
            return
        kind = data[0]
        if kind == Kind.REQUEST:
            if not msg.reply:
                return
            st = _ServedStream()
            if self.draining:
                err = codec.ErrorPayload(EngineShutdown.code, "this worker is shutting down")
                with contextlib.suppress(Exception):
                    await self._send(msg.reply, st, Kind.ERROR, codec.encode_payload(err))
                return
            self._streams[msg.reply] = st
            st.task = asyncio.get_running_loop().create_task(self._serve(msg.reply, st, data[1:]))
        elif kind == Kind.CANCEL:
            st = self._streams.get(bytes(data[1:]).decode(errors="replace"))
            if st is not None and st.task is not None:
                st.task.cancel()
            if msg.reply:  # acknowledge, so the client stops re-sending it
                with contextlib.suppress(Exception):
                    await self._nc.publish(msg.reply, b"")

    async def _send(self, reply: str, st: _ServedStream, kind: int, payload: bytes = b"") -> None:
        body = REPLY_HEADER.pack(kind, st.seq) + payload
        st.seq += 1
        st.last_sent = time.monotonic()
        await self._nc.publish(reply, body)

    async def _serve(self, reply: str, st: _ServedStream, payload: bytes) -> None:
        send = self._send
        encode = codec.encode_payload
        try:
            await send(reply, st, HEARTBEAT)  # acknowledge: the request reached a live worker
            envelope = codec.decode_envelope(payload)
            handler = self._handlers.get(envelope.endpoint)
            if handler is None:
                raise DynamoError(f"no endpoint {envelope.endpoint!r} on this worker")
            stream = handler(envelope.request)
            try:
                async for delta in stream:
                    await send(reply, st, Kind.DATA, encode(delta))
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            await send(reply, st, Kind.END)
        except asyncio.CancelledError:
            if self._closing:  # shutting down: tell the client at once (it may migrate the request)
                with contextlib.suppress(Exception):
                    err = codec.ErrorPayload(EngineShutdown.code, "the worker is shutting down")
                    await send(reply, st, Kind.ERROR, encode(err))
            # else: the client cancelled; it expects nothing more
        except DynamoError as exc:
            await self._send_error(reply, st, exc.code, exc.message)
        except Exception as exc:
            if self._nc is None or not self._nc.is_connected:
                log.warning("request plane: abandoning the stream to %s, NATS is unreachable: %s", reply, exc)
                return
            log.exception("request plane: handler failed")
            await self._send_error(reply, st, "engine_error", f"{type(exc).__name__}: {exc}")
        finally:
            self._streams.pop(reply, None)

    async def _send_error(self, reply: str, st: _ServedStream, code: str, message: str) -> None:
        try:
            await self._send(reply, st, Kind.ERROR, codec.encode_payload(codec.ErrorPayload(code, message)))
        except Exception as exc:
            log.warning("request plane: could not send an error to %s: %s", reply, exc)

    async def _heartbeat_loop(self) -> None:
        period = self.heartbeat
        while True:
            await asyncio.sleep(period / 2)
            if not self._nc.is_connected:
                continue
            now = time.monotonic()
            for reply, st in list(self._streams.items()):
                if now - st.last_sent >= period:
                    with contextlib.suppress(Exception):
                        await self._send(reply, st, HEARTBEAT)

    async def aclose(self, grace: float = 0.0) -> None:
        if self._nc is None:
            return
        self.draining = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self._streams and loop.time() < deadline:  # noqa: ASYNC110 - polls two conditions
            await asyncio.sleep(0.05)
        self._closing = True
        tasks = [st.task for st in self._streams.values() if st.task is not None]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()
        if self._heartbeats is not None:
            self._heartbeats.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeats
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._nc.flush(), 1.0)
        with contextlib.suppress(Exception):
            await self._nc.close()
        self._nc = None


# ------------------------------------------------------------------------------------------------
# client (frontend side)
# ------------------------------------------------------------------------------------------------

_END = object()
_NO_RESPONDERS = object()


class _Stream:
    __slots__ = ("items", "waiter", "next_seq", "last_seen", "acked", "failed", "ended")

    def __init__(self, now: float) -> None:
        self.items: collections.deque[object] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None
        self.next_seq = 0
        self.last_seen = now
        self.acked = False  # the worker has the request
        self.failed = False  # we gave up on the stream (lost frames, silence, NATS connection lost)
        self.ended = False  # the worker ended it (END or ERROR): nothing to cancel

    def push(self, item: object) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def fail(self, exc: DynamoError) -> None:
        if not self.failed:
            self.failed = True
            self.push(exc)


class NatsClient(RequestPlaneClient):
    """One NATS connection and one wildcard inbox subscription for every stream of this process."""

    def __init__(
        self,
        options: NatsOptions,
        stream_timeout: float = 5.0,
        first_connect_wait: float = FIRST_CONNECT_WAIT,
    ) -> None:
        self.options = options
        self.stream_timeout = stream_timeout
        self.first_connect_wait = first_connect_wait
        self._nc: Any = None
        self._inbox = ""
        self._streams: dict[str, _Stream] = {}
        self._next_id = 0
        self._connector: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._watchdog: asyncio.Task[None] | None = None
        #: until then, "no responders" may mean a worker that has not resubscribed after a NATS restart
        self._unsettled_until = float("-inf")
        self._closing = False
        self._cancels: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(cls, settings: RuntimeSettings) -> NatsClient:
        return cls(NatsOptions.from_settings(settings), stream_timeout=settings.nats_stream_timeout)

    # -- connection ----------------------------------------------------------------------------
    async def _connection(self) -> Any:
        """The NATS connection; the first call starts connecting in the background, for good.

        A request waits at most ``first_connect_wait`` seconds for it, then fails with
        ``ServiceUnavailable``; the connection keeps being tried, so once NATS is up requests flow.
        """
        if self._nc is not None:
            return self._nc
        if self._connector is None:
            self._connector = asyncio.create_task(self._connect(), name="nats-rp-connect")
        try:
            await asyncio.wait_for(asyncio.shield(self._ready.wait()), self.first_connect_wait)
        except TimeoutError:
            raise ServiceUnavailable(
                f"cannot reach NATS at {self.options.display} (NATS_SERVER); still trying", retry_after=1
            ) from None
        return self._nc

    async def _connect(self) -> None:
        while True:
            try:
                nc = await self.options.connect(
                    "dynamo-frontend",
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                )
                break
            except RuntimeError as exc:
                log.error("request plane: %s; retrying", exc)
                await asyncio.sleep(1.0)
        self._inbox = nc.new_inbox()
        await nc.subscribe(
            self._inbox + ".*", cb=self._on_reply, pending_msgs_limit=1_000_000, pending_bytes_limit=1 << 30
        )
        await nc.flush()
        self._watchdog = asyncio.create_task(self._watch_streams(), name="nats-rp-watchdog")
        self._nc = nc
        self._ready.set()

    async def _on_disconnected(self) -> None:
        self._unsettled_until = float("inf")
        if self._closing:
            return
        log.warning(
            "request plane: disconnected from NATS; failing %d stream(s) in flight", len(self._streams)
        )
        # Frames published while we are away are dropped by NATS, so these streams cannot finish.
        # Not WorkerLost: the workers are fine, and routers must not set them aside for it.
        lost = ServiceUnavailable(
            "lost the connection to NATS during the stream; retry the request", retry_after=1
        )
        for stream in self._streams.values():
            if stream.acked:
                stream.fail(lost)

    async def _on_reconnected(self) -> None:
        self._unsettled_until = time.monotonic() + RECONNECT_GRACE
        log.info(
            "request plane: reconnected to NATS at %s", self._nc.connected_url.netloc if self._nc else "?"
        )

    async def _watch_streams(self) -> None:
        """Fail streams that went silent: the worker died or is unreachable."""
        timeout = self.stream_timeout
        period = min(0.25, timeout / 4)
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for stream in self._streams.values():
                if not stream.failed and now - stream.last_seen > timeout:
                    if stream.acked:
                        stream.fail(WorkerLost(f"the worker went silent for {timeout:g}s mid-stream"))
                    else:
                        stream.fail(WorkerUnreachable(f"no answer from the worker within {timeout:g}s"))

    # -- replies -------------------------------------------------------------------------------
    async def _on_reply(self, msg: Any) -> None:
        stream = self._streams.get(msg.subject)
        if stream is None or stream.failed:
            return
        stream.last_seen = time.monotonic()
        data = msg.data
        if len(data) < REPLY_HEADER.size:
            headers = msg.headers
            if headers and headers.get("Status") == STATUS_NO_RESPONDERS:
                stream.push(_NO_RESPONDERS)
            return
        kind, seq = REPLY_HEADER.unpack_from(data)
        if seq != stream.next_seq:
            stream.fail(
                WorkerLost(
                    f"frames of the stream were lost in NATS (expected #{stream.next_seq}, got #{seq})"
                )
            )
            return
        stream.next_seq = seq + 1
        stream.acked = True
        if kind == Kind.DATA:
            stream.push(codec.decode_delta(data[REPLY_HEADER.size :]))
        elif kind == Kind.END:
            stream.ended = True
            stream.push(_END)
        elif kind == Kind.ERROR:
            stream.ended = True
            err = codec.decode_error(data[REPLY_HEADER.size :])
            stream.push(from_code(err.code, err.message))

    # -- requests ------------------------------------------------------------------------------
    async def generate(
        self,
        transport: dict[str, str],
        endpoint: str,
        request: GenerateRequest,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[Delta]:
        subject = transport.get("nats")
        if subject is None:
            raise WorkerUnreachable(
                f"worker has no nats subject (transport {transport}); "
                "frontend and workers must use the same --request-plane"
            )
        nc = await self._connection()
        self._next_id += 1
        reply = f"{self._inbox}.{self._next_id:x}"
        loop = asyncio.get_running_loop()
        stream = _Stream(time.monotonic())
        self._streams[reply] = stream
        envelope = codec.RequestEnvelope(endpoint=endpoint, request=request, headers=headers or {})
        body = bytes([Kind.REQUEST]) + codec.encode_payload(envelope)
        try:
            await self._publish(nc, subject, body, reply)
            items = stream.items
            while True:
                while items:
                    item = items.popleft()
                    if type(item) is Delta:
                        yield item
                    elif item is _END:
                        return
                    elif item is _NO_RESPONDERS:
                        if stream.acked or time.monotonic() > self._unsettled_until:
                            stream.ended = True
                            raise WorkerUnreachable(f"no worker is listening on {subject}")
                        await asyncio.sleep(0.1)  # we just reconnected: the worker may not have resubscribed
                        stream.last_seen = time.monotonic()
                        await self._publish(nc, subject, body, reply)
                    else:
                        assert isinstance(item, BaseException)
                        raise item
                stream.waiter = loop.create_future()
                await stream.waiter
                stream.waiter = None
        finally:
            self._streams.pop(reply, None)
            if not stream.ended and not nc.is_closed:
                task = loop.create_task(self._cancel(nc, subject, reply))
                self._cancels.add(task)
                task.add_done_callback(self._cancels.discard)

    async def _cancel(self, nc: Any, subject: str, reply: str) -> None:
        """Tell the worker to stop the stream; re-sent until acknowledged (a NATS restart can drop it)."""
        body = bytes([Kind.CANCEL]) + reply.encode()
        deadline = time.monotonic() + CANCEL_PATIENCE
        while time.monotonic() < deadline and not nc.is_closed:
            try:
                await nc.request(subject, body, timeout=0.5)
                return
            except Exception:  # no responders (worker not resubscribed yet, or gone), timeout
                await asyncio.sleep(0.1)
        log.debug("request plane: the cancel of %s was never acknowledged by %s", reply, subject)

    async def _publish(self, nc: Any, subject: str, body: bytes, reply: str) -> None:
        nats = _import_nats()
        try:
            await nc.publish(subject, body, reply=reply)
        except nats.errors.MaxPayloadError as exc:
            raise InvalidRequest(
                f"the request ({len(body)} bytes) is larger than NATS's max_payload ({nc.max_payload} bytes)"
            ) from exc
        except nats.errors.OutboundBufferLimitError as exc:
            raise WorkerUnreachable("NATS is unreachable and the outgoing buffer is full") from exc
        except nats.errors.ConnectionClosedError as exc:
            raise ServiceUnavailable("the NATS connection is closed", retry_after=1) from exc

    def forget(self, transport: dict[str, str]) -> None:
        return None  # nothing per worker to drop: one connection serves them all

    async def aclose(self) -> None:
        self._closing = True
        for task in list(self._cancels):
            task.cancel()
        if self._connector is not None and not self._connector.done():
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._connector
        if self._watchdog is not None:
            self._watchdog.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watchdog
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
            self._nc = None
