"""The NATS request plane against a real nats-server: streams, errors, cancellation, lost workers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from dynamo.plugin.errors import (
    EngineShutdown,
    InvalidRequest,
    ServiceUnavailable,
    WorkerLost,
    WorkerUnreachable,
)
from dynamo.plugin.types import Delta, FinishReason, GenerateRequest
from dynamo.runtime.settings import RequestPlane, RuntimeSettings, parse_args
from dynamo.runtime.transport import create_client, create_server
from support.infra import NatsServer

pytest.importorskip(
    "nats", reason="the NATS request plane needs nats-py (pip install -r requirements-test.txt)"
)

from dynamo.runtime.transport.nats import NatsClient, NatsOptions  # noqa: E402
from dynamo.runtime.transport.nats import NatsServer as RPServer


class Engine:
    """A handler that counts tokens out slowly and records what happened to each request."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.active = 0
        self.aborted: list[str] = []

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        self.active += 1
        done = False
        try:
            n = request.stop.max_tokens or 4
            if request.extra.get("fail"):
                raise InvalidRequest("bad request", param="x")
            if request.extra.get("crash"):
                raise RuntimeError("boom")
            for i in range(n):
                if self.delay:
                    await asyncio.sleep(self.delay)
                last = i == n - 1
                yield Delta([i], finish_reason=FinishReason.LENGTH if last else None)
            done = True
        finally:
            self.active -= 1
            if not done:
                self.aborted.append(request.request_id)


def _request(rid: str = "r", max_tokens: int = 4, **extra: object) -> GenerateRequest:
    from dynamo.plugin.types import StopConditions

    return GenerateRequest(
        request_id=rid, token_ids=[1, 2, 3], stop=StopConditions(max_tokens=max_tokens), extra=dict(extra)
    )


async def _collect(client: NatsClient, transport: dict[str, str], req: GenerateRequest) -> list[Delta]:
    return [d async for d in client.generate(transport, "generate", req)]


async def _until(cond, within: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


def _pair(url: str, heartbeat: float = 0.2, timeout: float = 1.0) -> tuple[RPServer, NatsClient]:
    opts = NatsOptions(url, connect_timeout=3)
    return RPServer(opts, "dynamo_rp.test", heartbeat=heartbeat), NatsClient(opts, stream_timeout=timeout)


def test_settings_build_nats_plane(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_SERVER", "nats://10.0.0.5:4222")
    monkeypatch.setenv("NATS_AUTH_USERNAME", "u")
    monkeypatch.setenv("NATS_AUTH_PASSWORD", "p")
    s, _, _ = parse_args(RuntimeSettings, ["--request-plane", "nats", "--nats-stream-timeout", "7"], prog="t")
    assert s.request_plane is RequestPlane.NATS
    server, client = create_server(s), create_client(s)
    assert isinstance(server, RPServer) and isinstance(client, NatsClient)
    assert client.stream_timeout == 7
    assert (client.options.servers, client.options.user, client.options.password) == (
        ["nats://10.0.0.5:4222"],
        "u",
        "p",
    )
    assert server.subject.startswith("dynamo_rp.dynamo.backend.generate.")


async def test_stream_end_error_and_cancel(nats_server: NatsServer) -> None:
    engine = Engine(delay=0.01)
    server, client = _pair(nats_server.url)
    transport = await server.start({"generate": engine.generate})
    assert set(transport) == {"nats"}
    try:
        deltas = await _collect(client, transport, _request(max_tokens=5))
        assert [d.token_ids for d in deltas] == [[0], [1], [2], [3], [4]]
        assert deltas[-1].finish_reason is FinishReason.LENGTH
        with pytest.raises(InvalidRequest, match="bad request"):
            await _collect(client, transport, _request(fail=True))
        with pytest.raises(Exception, match="RuntimeError: boom") as err:
            await _collect(client, transport, _request(crash=True))
        assert err.value.code == "engine_error"  # type: ignore[attr-defined]
        # closing the stream early cancels the request on the worker
        stream = client.generate(transport, "generate", _request("cancel-me", max_tokens=1000))
        assert (await anext(stream)).token_ids == [0]
        await stream.aclose()  # type: ignore[attr-defined]
        await _until(lambda: "cancel-me" in engine.aborted and server.active_streams == 0)
        # a long silent prefill is kept alive by heartbeats, not mistaken for a lost worker
        slow = Engine(delay=1.5)
        server2, _ = _pair(nats_server.url)
        t2 = await server2.start({"generate": slow.generate})
        assert len(await _collect(client, t2, _request(max_tokens=1))) == 1
        await server2.aclose()
    finally:
        await client.aclose()
        await server.aclose()


async def test_no_listener_is_unreachable_fast(nats_server: NatsServer) -> None:
    _, client = _pair(nats_server.url)
    try:
        started = time.monotonic()
        with pytest.raises(WorkerUnreachable, match="no worker is listening"):
            await _collect(client, {"nats": "dynamo_rp.test.nobody"}, _request())
        assert time.monotonic() - started < 0.5
        with pytest.raises(WorkerUnreachable, match="no nats subject"):
            await _collect(client, {"tcp": "127.0.0.1:1"}, _request())
    finally:
        await client.aclose()


async def test_silent_worker_is_lost(nats_server: NatsServer) -> None:
    engine = Engine(delay=0.05)
    server, client = _pair(nats_server.url, heartbeat=0.2, timeout=0.8)
    transport = await server.start({"generate": engine.generate})
    try:
        stream = client.generate(transport, "generate", _request(max_tokens=1000))
        assert (await anext(stream)).token_ids == [0]
        server._heartbeats.cancel()  # type: ignore[union-attr]
        for st in server._streams.values():  # freeze the worker: no frames, no heartbeats
            st.task.cancel()  # type: ignore[union-attr]
        started = time.monotonic()
        with pytest.raises(WorkerLost, match="silent"):
            async for _ in stream:
                pass
        assert 0.5 < time.monotonic() - started < 2.0
    finally:
        await client.aclose()
        await server.aclose()


async def test_worker_shutdown_ends_streams_with_engine_shutdown(nats_server: NatsServer) -> None:
    engine = Engine(delay=0.02)
    server, client = _pair(nats_server.url)
    transport = await server.start({"generate": engine.generate})
    try:
        stream = client.generate(transport, "generate", _request(max_tokens=1000))
        await anext(stream)
        closing = asyncio.create_task(server.aclose(grace=0.5))
        await _until(lambda: server.draining)
        # while draining, a new request is refused at once (the router sends it elsewhere) ...
        with pytest.raises(EngineShutdown, match="shutting down"):
            await _collect(client, transport, _request("late"))
        assert "late" not in engine.aborted
        # ... and the stream in flight, not done when the grace period ends, is told so too
        with pytest.raises(EngineShutdown):
            async for _ in stream:
                pass
        await closing
    finally:
        await client.aclose()


async def test_oversized_request_is_invalid(nats_server: NatsServer) -> None:
    engine = Engine()
    server, client = _pair(nats_server.url)
    transport = await server.start({"generate": engine.generate})
    try:
        big = GenerateRequest(request_id="big", token_ids=list(range(1_000_000)))
        with pytest.raises(InvalidRequest, match="max_payload"):
            await _collect(client, transport, big)
    finally:
        await client.aclose()
        await server.aclose()


async def test_unreachable_nats_fails_with_a_clear_error() -> None:
    from support.cluster import free_port

    server = RPServer(NatsOptions(f"nats://127.0.0.1:{free_port()}", connect_timeout=0.5))
    with pytest.raises(RuntimeError, match="cannot reach NATS at nats://127.0.0.1"):
        await server.start({})


async def test_nats_restart(private_nats: NatsServer) -> None:
    """In-flight streams fail at once with a clean error; new requests succeed once both sides reconnect."""
    engine = Engine(delay=0.02)
    server, client = _pair(private_nats.url, heartbeat=0.2, timeout=2.0)
    transport = await server.start({"generate": engine.generate})
    try:
        assert len(await _collect(client, transport, _request(max_tokens=3))) == 3
        stream = client.generate(transport, "generate", _request("inflight", max_tokens=100_000))
        await anext(stream)
        started = time.monotonic()
        await asyncio.to_thread(private_nats.restart)
        with pytest.raises(ServiceUnavailable, match="lost the connection to NATS"):
            async for _ in stream:
                pass
        assert time.monotonic() - started < 5
        deadline = time.monotonic() + 10
        while True:
            try:
                assert len(await _collect(client, transport, _request("after", max_tokens=3))) == 3
                break
            except (WorkerUnreachable, WorkerLost):
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        # the worker heard the cancel for the stream the client gave up on
        await _until(lambda: "inflight" in engine.aborted, within=5)
    finally:
        await client.aclose()
        await server.aclose()


async def test_frontend_started_before_nats(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """NATS is down: requests fail fast with 503 (not a hang); once it is up, requests flow."""
    from support.infra import NatsServer as Server
    from support.infra import find_binary

    binary = find_binary("nats-server")
    if binary is None:
        pytest.skip("nats-server not installed")
    nats = Server(binary, tmp_path / "nats")  # ports chosen, server not started yet
    client = NatsClient(NatsOptions(nats.url, connect_timeout=1), first_connect_wait=0.5)
    try:
        started = time.monotonic()
        with pytest.raises(ServiceUnavailable, match="cannot reach NATS"):
            await _collect(client, {"nats": "dynamo_rp.test.x"}, _request())
        assert time.monotonic() - started < 1.5
        await asyncio.to_thread(nats.start)
        server = RPServer(NatsOptions(nats.url, connect_timeout=3), "dynamo_rp.test")
        engine = Engine()
        transport = await server.start({"generate": engine.generate})
        try:
            assert len(await _collect(client, transport, _request(max_tokens=2))) == 2
        finally:
            await server.aclose()
    finally:
        await client.aclose()
        nats.stop()
