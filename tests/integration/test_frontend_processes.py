"""The frontend as several processes sharing one port (``--http-workers``)."""

from __future__ import annotations

import time

import httpx
import pytest

from support.cluster import Cluster

pytestmark = pytest.mark.integration


def test_two_frontend_processes_share_the_port_and_the_workers(cluster: Cluster) -> None:
    worker = cluster.worker("--speedup-ratio", "1000")
    fe = cluster.frontend("--http-workers", "2")
    cluster.wait_worker_ready(worker)
    fe.wait_workers("mocker", 1)
    # /health answers from whichever process took the connection: wait until both are ready
    ready, deadline = 0, time.monotonic() + 30
    while ready < 20:
        assert time.monotonic() < deadline, fe.log()
        with httpx.Client() as client:
            ok = client.get(f"{fe.url}/health").json().get("models", {}).get("mocker") == 1
        ready = ready + 1 if ok else 0
    body = {"model": "mocker", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    for _ in range(40):  # new connections: the kernel spreads them over both processes
        with httpx.Client() as client:
            r = client.post(f"{fe.url}/v1/chat/completions", json=body, timeout=30)
            assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 3
    # every process discovered the model on its own: each answers /v1/models with it
    for _ in range(10):
        with httpx.Client() as client:
            assert [m["id"] for m in client.get(f"{fe.url}/v1/models").json()["data"]] == ["mocker"]
    assert worker.health()["active_requests"] == 0
    log = fe.log()
    assert log.count("worker") and log.count("joined model 'mocker'") == 2, log
