"""The NATS event plane against a real nats-server: messages, queries, follow/unfollow, reconnects."""

from __future__ import annotations

import asyncio
import time

import pytest
from dynamo.runtime.events import create_publisher, create_subscriber
from dynamo.runtime.events.base import EventPlaneError
from dynamo.runtime.settings import RuntimeSettings, parse_args
from support.infra import NatsServer

pytest.importorskip(
    "nats", reason="the NATS event plane needs nats-py (pip install -r requirements-test.txt)"
)

from dynamo.runtime.events.nats import NatsPublisher, NatsSubscriber  # noqa: E402
from dynamo.runtime.transport.nats import NatsOptions  # noqa: E402


async def _until(cond, within: float = 5.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_settings_select_nats(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NATS_SERVER", "nats://10.0.0.9:4222")
    s, _, _ = parse_args(RuntimeSettings, ["--event-plane", "nats", "--namespace", "prod"], prog="t")
    pub, sub = create_publisher(s), create_subscriber(s)
    assert isinstance(pub, NatsPublisher) and isinstance(sub, NatsSubscriber)
    assert pub.base.startswith("dynamo_ev.prod.backend.")
    assert sub.options.servers == ["nats://10.0.0.9:4222"]


async def test_messages_queries_and_unfollow(nats_server: NatsServer) -> None:
    opts = NatsOptions(nats_server.url, connect_timeout=3)
    pub = NatsPublisher(opts)
    counter = {"n": 0}

    def snapshot(payload: bytes) -> bytes:
        return b"snap:" + payload + b":" + str(counter["n"]).encode()

    pub.answer("snapshot", snapshot)
    pub.answer("broken", lambda _: 1 / 0)  # type: ignore[arg-type,return-value]
    transport = await pub.start()
    assert set(transport) == {"nats_events"}
    got: list[tuple[str, bytes]] = []
    connects: list[int] = []
    sub = NatsSubscriber(opts)
    sub.start(["kv-events", "kv-metrics"], lambda t, p: got.append((t, p)), connects.append)
    try:
        assert sub.follow(7, {"tcp": "x"}) is False  # no event-plane address: not followed
        assert sub.follow(7, transport) is True
        await _until(lambda: connects == [7])
        for i in range(100):
            pub.publish("kv-events", b"%d" % i)
            counter["n"] += 1
        pub.publish("other-topic", b"not subscribed")
        pub.publish("kv-metrics", b"load")
        # the reply to a query leaves after every message published before it
        assert await sub.query(7, "snapshot", b"x") == b"snap:x:100"
        await _until(lambda: len(got) == 101)
        assert got[:100] == [("kv-events", b"%d" % i) for i in range(100)]
        assert got[100] == ("kv-metrics", b"load")
        with pytest.raises(EventPlaneError, match="ZeroDivisionError"):
            await sub.query(7, "broken")
        with pytest.raises(EventPlaneError, match="nothing answers"):
            await sub.query(7, "nope")
        with pytest.raises(EventPlaneError, match="not followed"):
            await sub.query(8, "snapshot")
        sub.unfollow(7)
        await asyncio.sleep(0.1)
        pub.publish("kv-events", b"after unfollow")
        await asyncio.sleep(0.2)
        assert len(got) == 101
    finally:
        await sub.aclose()
        await pub.aclose()


async def test_query_to_a_gone_publisher_fails_fast(nats_server: NatsServer) -> None:
    opts = NatsOptions(nats_server.url, connect_timeout=3)
    sub = NatsSubscriber(opts)
    sub.start(["kv-events"], lambda t, p: None)
    try:
        sub.follow(1, {"nats_events": "dynamo_ev.test.backend.gone"})
        started = time.monotonic()
        with pytest.raises(EventPlaneError):
            await sub.query(1, "snapshot", timeout=2)
        assert time.monotonic() - started < 1.5  # "no responders", not the full timeout
    finally:
        await sub.aclose()


async def test_reconnect_reports_publishers_again(private_nats: NatsServer) -> None:
    opts = NatsOptions(private_nats.url, connect_timeout=3)
    pub = NatsPublisher(opts)
    transport = await pub.start()
    got: list[bytes] = []
    connects: list[int] = []
    sub = NatsSubscriber(opts)
    sub.start(["kv-events"], lambda t, p: got.append(p), connects.append)
    try:
        sub.follow(3, transport)
        await _until(lambda: connects == [3])
        await asyncio.to_thread(private_nats.restart)
        await _until(lambda: connects == [3, 3])  # the router is told to resynchronise
        deadline = time.monotonic() + 5
        while b"after" not in got:  # the publisher reconnected too; messages flow again
            assert time.monotonic() < deadline
            pub.publish("kv-events", b"after")
            await asyncio.sleep(0.1)
    finally:
        await sub.aclose()
        await pub.aclose()
