"""TLS and credentials against real servers: etcd with mutual TLS, NATS with mutual TLS and a password."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from dynamo.plugin.types import Delta, GenerateRequest
from support.infra import Certs, EtcdServer, NatsServer, find_binary, missing_reason

pytest.importorskip("etcd3aio")
pytest.importorskip("nats")

from dynamo.runtime.discovery.base import EventKind  # noqa: E402
from dynamo.runtime.discovery.etcd import EtcdDiscovery  # noqa: E402
from dynamo.runtime.transport.nats import NatsClient, NatsOptions  # noqa: E402
from dynamo.runtime.transport.nats import NatsServer as RPServer


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    try:
        return Certs(tmp_path_factory.mktemp("certs"))
    except FileNotFoundError:
        pytest.skip("openssl is not installed")


def _binary(name: str) -> str:
    binary = find_binary(name)
    if binary is None:
        pytest.skip(missing_reason(name))
    return binary


@pytest.fixture
def tls_etcd(tmp_path: Path, certs: Certs) -> Iterator[EtcdServer]:
    server = EtcdServer(_binary("etcd"), tmp_path / "etcd", certs=certs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_etcd_mutual_tls(tls_etcd: EtcdServer, certs: Certs) -> None:
    assert tls_etcd.url.startswith("https://")
    prefix = f"v1/tls/{uuid.uuid4().hex[:8]}/"
    tls = dict(ca_file=str(certs.ca), cert_file=str(certs.client_cert), key_file=str(certs.client_key))
    async with EtcdDiscovery(tls_etcd.url, ttl=2, **tls) as a:
        await a.put(prefix + "k", b"v")
        watch = a.watch(prefix)
        ev = await asyncio.wait_for(anext(watch), 5)
        assert (ev.kind, ev.key, ev.value) == (EventKind.PUT, prefix + "k", b"v")
        await watch.aclose()  # type: ignore[attr-defined]
    # no client certificate: etcd refuses the handshake, and we say we cannot reach it
    with pytest.raises(RuntimeError, match="etcd"):
        await EtcdDiscovery(tls_etcd.url, ttl=2, ca_file=str(certs.ca), connect_timeout=1).start()


async def test_nats_mutual_tls_and_password(tmp_path: Path, certs: Certs) -> None:
    conf = tmp_path / "auth.conf"
    conf.write_text('authorization { user: "dyn", password: "s3cret" }\n')
    server = NatsServer(_binary("nats-server"), tmp_path / "nats", extra_args=["-c", str(conf)], certs=certs)
    server.start()
    try:
        tls = dict(ca_file=str(certs.ca), cert_file=str(certs.client_cert), key_file=str(certs.client_key))
        opts = NatsOptions(server.url, user="dyn", password="s3cret", connect_timeout=3, **tls)

        async def handler(req: GenerateRequest):  # type: ignore[no-untyped-def]
            yield Delta([42])

        rp = RPServer(opts, "dynamo_rp.tls")
        transport = await rp.start({"generate": handler})
        client = NatsClient(opts)
        try:
            req = GenerateRequest(request_id="t", token_ids=[1])
            got = [d async for d in client.generate(transport, "generate", req)]
            assert [d.token_ids for d in got] == [[42]]
        finally:
            await client.aclose()
            await rp.aclose()
        wrong = NatsOptions(server.url, user="dyn", password="nope", connect_timeout=1, **tls)
        with pytest.raises(RuntimeError, match="cannot reach NATS"):
            await RPServer(wrong).start({})
    finally:
        server.stop()
