"""The direct TCP request plane: persistent connections, many streams multiplexed on each.

Hot path rules: no per-token objects beyond the decoded ``Delta``, frames written by one
``transport.write`` per loop iteration (tokens that are ready together go out together), and
TCP_NODELAY on every socket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
from collections.abc import AsyncIterator

from dynamo.plugin.errors import DynamoError, WorkerLost, WorkerUnreachable, from_code
from dynamo.plugin.types import Delta, GenerateRequest
from dynamo.runtime.transport import codec
from dynamo.runtime.transport.base import Handler, RequestPlaneClient, RequestPlaneServer
from dynamo.runtime.transport.codec import Kind

log = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.0


def _nodelay(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class _Writer:
    """Coalesces frames and writes them once per event-loop iteration; honours back-pressure."""

    __slots__ = ("_transport", "_out", "_scheduled", "_loop", "_resumed", "paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._out: list[bytes] = []
        self._scheduled = False
        self._loop = asyncio.get_running_loop()
        self._resumed = asyncio.Event()
        self._resumed.set()
        #: the transport's buffer is full: producers must ``await drain()``
        self.paused = False

    def send(self, data: bytes) -> None:
        self._out.append(data)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        out, self._out = self._out, []
        if not self._transport.is_closing():
            self._transport.write(out[0] if len(out) == 1 else b"".join(out))

    def pause(self) -> None:
        self.paused = True
        self._resumed.clear()

    def resume(self) -> None:
        self.paused = False
        self._resumed.set()

    async def drain(self) -> None:
        if not self._resumed.is_set():
            await self._resumed.wait()


# ------------------------------------------------------------------------------------------------
# server (worker side)
# ------------------------------------------------------------------------------------------------


class _ServerProtocol(asyncio.Protocol):
    def __init__(self, server: TcpServer) -> None:
        self._server = server
        self._reader = codec.FrameReader()
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._writer: _Writer | None = None
        self._preamble = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _nodelay(transport)
        self._transport = transport  # type: ignore[assignment]
        self._writer = _Writer(transport)  # type: ignore[arg-type]
        self._server._connections.add(self)

    def data_received(self, data: bytes) -> None:
        if len(self._preamble) < len(codec.PREAMBLE):
            need = len(codec.PREAMBLE) - len(self._preamble)
            self._preamble += data[:need]
            data = data[need:]
            if len(self._preamble) < len(codec.PREAMBLE):
                return
            if self._preamble != codec.PREAMBLE:
                log.warning("request plane: rejecting a peer with preamble %r", self._preamble)
                self._reject(f"unsupported request-plane protocol {self._preamble!r}; expected {codec.PREAMBLE!r}")
                return
        try:
            frames = self._reader.feed(data)
        except ValueError as exc:
            self._reject(str(exc))
            return
        for kind, stream_id, payload in frames:
            if kind == Kind.REQUEST:
                self._start(stream_id, payload)
            elif kind == Kind.CANCEL:
                task = self._tasks.get(stream_id)
                if task is not None:
                    task.cancel()

    def _reject(self, message: str) -> None:
        assert self._writer is not None and self._transport is not None
        self._transport.write(codec.frame(Kind.ERROR, 0, codec.encode_payload(codec.ErrorPayload("protocol", message))))
        self._transport.close()

    def _start(self, stream_id: int, payload: bytes) -> None:
        if self._server.draining:  # the frontend has not seen us leave discovery yet: send it elsewhere
            assert self._writer is not None
            err = codec.ErrorPayload("engine_shutdown", "this worker is shutting down")
            self._writer.send(codec.frame(Kind.ERROR, stream_id, codec.encode_payload(err)))
            return
        task = asyncio.get_running_loop().create_task(self._serve(stream_id, payload))
        self._tasks[stream_id] = task
        task.add_done_callback(lambda _t, sid=stream_id: self._tasks.pop(sid, None))

    async def _serve(self, stream_id: int, payload: bytes) -> None:
        writer = self._writer
        assert writer is not None
        self._server._active += 1
        try:
            envelope = codec.decode_envelope(payload)
            handler = self._server._handlers.get(envelope.endpoint)
            if handler is None:
                raise DynamoError(f"no endpoint {envelope.endpoint!r} on this worker")
            delta_frame = codec.delta_frame
            send = writer.send
            stream = handler(envelope.request)
            try:
                async for delta in stream:
                    send(delta_frame(stream_id, delta))
                    if writer.paused:  # a plain attribute test: no coroutine per token
                        await writer.drain()
            finally:
                await stream.aclose()  # type: ignore[attr-defined]
            writer.send(codec.frame(Kind.END, stream_id))
        except asyncio.CancelledError:
            pass  # the client cancelled or went away: it expects nothing more
        except DynamoError as exc:
            writer.send(codec.frame(Kind.ERROR, stream_id, codec.encode_payload(codec.ErrorPayload(exc.code, exc.message))))
        except Exception as exc:
            log.exception("request plane: handler failed")
            msg = f"{type(exc).__name__}: {exc}"
            writer.send(codec.frame(Kind.ERROR, stream_id, codec.encode_payload(codec.ErrorPayload("engine_error", msg))))
        finally:
            self._server._active -= 1

    def pause_writing(self) -> None:
        if self._writer:
            self._writer.pause()

    def resume_writing(self) -> None:
        if self._writer:
            self._writer.resume()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server._connections.discard(self)
        for task in list(self._tasks.values()):
            task.cancel()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


class TcpServer(RequestPlaneServer):
    """Serves endpoints on one TCP port (``host:0`` picks a free port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, advertise_host: str | None = None) -> None:
        self.host = host
        self.port = port
        self.advertise_host = advertise_host
        self._handlers: dict[str, Handler] = {}
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[_ServerProtocol] = set()
        self._active = 0
        self.draining = False

    @property
    def active_streams(self) -> int:
        return self._active

    async def start(self, handlers: dict[str, Handler]) -> dict[str, str]:
        self._handlers = dict(handlers)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _ServerProtocol(self), self.host, self.port)
        port = self._server.sockets[0].getsockname()[1]
        host = self.advertise_host or (self.host if self.host not in ("0.0.0.0", "::", "") else _local_ip())
        return {"tcp": f"{host}:{port}"}

    async def aclose(self, grace: float = 0.0) -> None:
        if self._server is None:
            return
        self.draining = True
        self._server.close()
        deadline = asyncio.get_running_loop().time() + grace
        while self._active and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for conn in list(self._connections):
            conn.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1.0)
        self._server = None


def _local_ip() -> str:
    """The address other hosts can reach us on (best effort, no packets sent)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("10.254.254.254", 1))
        return str(s.getsockname()[0])
    return "127.0.0.1"


# ------------------------------------------------------------------------------------------------
# client (frontend side)
# ------------------------------------------------------------------------------------------------

_END = object()


class _Stream:
    """Receive side of one stream: a deque of decoded items and one waiter."""

    __slots__ = ("items", "waiter")

    def __init__(self) -> None:
        self.items: collections.deque[object] = collections.deque()
        self.waiter: asyncio.Future[None] | None = None

    def push(self, item: object) -> None:
        self.items.append(item)
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class _ClientProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self._reader = codec.FrameReader()
        self.streams: dict[int, _Stream] = {}
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._next_id = 1

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        _nodelay(transport)
        self.transport = transport  # type: ignore[assignment]
        transport.write(codec.PREAMBLE)  # type: ignore[attr-defined]

    def open_stream(self) -> tuple[int, _Stream]:
        stream_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
        stream = _Stream()
        self.streams[stream_id] = stream
        return stream_id, stream

    def data_received(self, data: bytes) -> None:
        try:
            frames = self._reader.feed(data)
        except ValueError as exc:
            log.error("request plane: bad frame from worker: %s", exc)
            assert self.transport is not None
            self.transport.close()
            return
        streams = self.streams
        decode_delta = codec.decode_delta
        decode_tokens = codec.decode_tokens
        for kind, stream_id, payload in frames:
            stream = streams.get(stream_id)
            if stream is None:
                if kind == Kind.ERROR and stream_id == 0:
                    err = codec.decode_error(payload)
                    log.error("request plane: worker rejected the connection: %s", err.message)
                continue
            if kind == Kind.TOKENS:
                tokens = decode_tokens(payload)
                pending = stream.items
                last = pending[-1] if pending else None
                # tokens that arrived together go up together: extend a plain delta not yet consumed
                if type(last) is Delta and last.finish_reason is None and last.logprobs is None:
                    last.token_ids.extend(tokens)
                else:
                    stream.push(Delta(tokens))
            elif kind == Kind.DATA:
                stream.push(decode_delta(payload))
            elif kind == Kind.END:
                stream.push(_END)
            elif kind == Kind.ERROR:
                err = codec.decode_error(payload)
                stream.push(from_code(err.code, err.message))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        lost = WorkerLost("connection to the worker was lost before the end of the stream")
        for stream in self.streams.values():
            stream.push(lost)


class TcpClient(RequestPlaneClient):
    """One persistent connection per worker address, shared by all streams to it."""

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.connect_timeout = connect_timeout
        self._conns: dict[str, _ClientProtocol] = {}
        self._connecting: dict[str, asyncio.Future[_ClientProtocol]] = {}

    async def _connection(self, address: str) -> _ClientProtocol:
        conn = self._conns.get(address)
        if conn is not None and not conn.closed:
            return conn
        pending = self._connecting.get(address)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[_ClientProtocol] = asyncio.get_running_loop().create_future()
        self._connecting[address] = fut
        try:
            conn = await self._connect(address)
            self._conns[address] = conn
            fut.set_result(conn)
            return conn
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            del self._connecting[address]

    async def _connect(self, address: str) -> _ClientProtocol:
        host, _, port = address.rpartition(":")
        loop = asyncio.get_running_loop()
        try:
            _, proto = await asyncio.wait_for(
                loop.create_connection(_ClientProtocol, host.strip("[]"), int(port)), self.connect_timeout
            )
        except (OSError, asyncio.TimeoutError) as exc:
            raise WorkerUnreachable(f"cannot connect to worker at {address}: {exc}") from exc
        return proto

    async def generate(
        self, transport: dict[str, str], endpoint: str, request: GenerateRequest,
        headers: dict[str, str] | None = None,
    ) -> AsyncIterator[Delta]:
        address = transport.get("tcp")
        if address is None:
            raise WorkerUnreachable(f"worker has no tcp address (transport {transport})")
        conn = await self._connection(address)
        if conn.transport is None or conn.closed:
            raise WorkerUnreachable(f"connection to worker at {address} is closed")
        stream_id, stream = conn.open_stream()
        envelope = codec.RequestEnvelope(endpoint=endpoint, request=request, headers=headers or {})
        conn.transport.write(codec.frame(Kind.REQUEST, stream_id, codec.encode_payload(envelope)))
        finished = False
        loop = asyncio.get_running_loop()
        items = stream.items
        try:
            while True:
                while items:
                    item = items.popleft()
                    if type(item) is Delta:
                        yield item
                    elif item is _END:
                        finished = True
                        return
                    else:
                        finished = True
                        assert isinstance(item, BaseException)
                        raise item
                stream.waiter = loop.create_future()
                await stream.waiter
                stream.waiter = None
        finally:
            conn.streams.pop(stream_id, None)
            if not finished and not conn.closed and conn.transport is not None:
                conn.transport.write(codec.frame(Kind.CANCEL, stream_id))

    def forget(self, transport: dict[str, str]) -> None:
        address = transport.get("tcp")
        conn = self._conns.pop(address, None) if address else None
        if conn is not None and conn.transport is not None and not conn.streams:
            conn.transport.close()

    async def aclose(self) -> None:
        for conn in self._conns.values():
            if conn.transport is not None:
                conn.transport.close()
        self._conns.clear()
