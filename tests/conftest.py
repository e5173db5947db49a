from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from support.cluster import Cluster
from support.infra import EtcdServer, NatsServer, find_binary, missing_reason


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """Real processes on loopback, sharing a private file-discovery directory and namespace."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.close()


# -- real etcd and NATS servers (tests/support/infra.py) ------------------------------------------


def _infra_binary(name: str) -> str:
    binary = find_binary(name)
    if binary is None:
        pytest.skip(missing_reason(name))
    return binary


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """One etcd for the whole run; tests keep apart by namespace or key prefix. Do not restart it."""
    server = EtcdServer(_infra_binary("etcd"), tmp_path_factory.mktemp("etcd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """One NATS (JetStream on) for the whole run. Do not restart it."""
    server = NatsServer(_infra_binary("nats-server"), tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_etcd(tmp_path: Path) -> Iterator[EtcdServer]:
    """An etcd of this test's own, free to restart, wipe or kill."""
    server = EtcdServer(_infra_binary("etcd"), tmp_path / "etcd")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_nats(tmp_path: Path) -> Iterator[NatsServer]:
    """A NATS of this test's own, free to restart or kill."""
    server = NatsServer(_infra_binary("nats-server"), tmp_path / "nats")
    server.start()
    try:
        yield server
    finally:
        server.stop()
