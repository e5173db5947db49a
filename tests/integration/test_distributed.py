"""Distributed mode on real etcd and NATS: the serving scenarios of test_serving.py, and faults.

Modes: ``etcd-tcp`` (etcd discovery, direct TCP request plane) and ``etcd-nats`` (etcd discovery,
NATS request plane). ``file-tcp`` is test_serving.py. Leases use a 2 s TTL (etcd's minimum with
default timing) so lost workers vanish quickly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from support.cluster import Cluster, FrontendProc, Proc
from support.infra import EtcdServer, NatsServer

pytestmark = pytest.mark.integration
MODEL = "mocker"
TTL = 2
MODES = ["etcd-tcp", "etcd-nats"]


def infra_env(etcd: EtcdServer, nats: NatsServer | None = None) -> dict[str, str]:
    env = {
        "DYN_DISCOVERY_BACKEND": "etcd",
        "ETCD_ENDPOINTS": etcd.url,
        "DYN_LEASE_TTL": str(TTL),
        "DYN_TCP_HOST": "127.0.0.1",
    }
    if nats is not None:
        env.update(
            {
                "DYN_REQUEST_PLANE": "nats",
                "NATS_SERVER": nats.url,
                "DYN_NATS_STREAM_TIMEOUT": "3",
                "DYN_NATS_STREAM_HEARTBEAT": "0.5",
            }
        )
    return env


def _servers(
    request: pytest.FixtureRequest, mode: str, private: bool = False
) -> tuple[EtcdServer, NatsServer | None]:
    etcd = request.getfixturevalue("private_etcd" if private else "etcd_server")
    nats = (
        request.getfixturevalue("private_nats" if private else "nats_server")
        if mode.endswith("nats")
        else None
    )
    return etcd, nats


def _chat(fe: FrontendProc, max_tokens: int = 4, timeout: float = 10) -> httpx.Response:
    return httpx.post(
        f"{fe.url}/v1/chat/completions",
        timeout=timeout,
        json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens},
    )


def _requests_total(worker: Proc) -> int:
    text = httpx.get(f"http://127.0.0.1:{worker.system_port}/metrics").text
    line = next(line for line in text.splitlines() if line.startswith("dynamo_worker_requests_total "))
    return int(float(line.split()[1]))


def _start(c: Cluster, workers: int, *args: str) -> tuple[FrontendProc, list[Proc]]:
    procs = [c.worker("--speedup-ratio", "1000", *args) for _ in range(workers)]
    fe = c.frontend()
    for w in procs:
        c.wait_worker_ready(w)
    fe.wait_workers(MODEL, workers)
    return fe, procs


def _models(fe: FrontendProc) -> list[str]:
    return [m["id"] for m in httpx.get(f"{fe.url}/v1/models", timeout=5).json()["data"]]


# -- serving scenarios, per mode ------------------------------------------------------------------


@pytest.fixture(scope="module", params=MODES)
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Cluster, FrontendProc]]:
    etcd, nats = _servers(request, request.param)
    c = Cluster(tmp_path_factory.mktemp(request.param), env=infra_env(etcd, nats))
    try:
        fe, _ = _start(c, 2)
        yield request.param, c, fe
    finally:
        c.close()


@pytest.fixture
def client(served: tuple[str, Cluster, FrontendProc]) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{served[2].url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_chat_completion(client: openai.OpenAI) -> None:
    resp = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hello"}],
        max_tokens=32,
        extra_body={"ignore_eos": True},
    )
    assert resp.choices[0].message.content and resp.choices[0].finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 32


def test_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    kwargs = dict(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a story"}], max_tokens=24, seed=7
    )
    whole = client.chat.completions.create(**kwargs)
    chunks = list(
        client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True})
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert (
        chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    )


def test_models_and_spread(served: tuple[str, Cluster, FrontendProc], client: openai.OpenAI) -> None:
    _, cluster, fe = served
    assert [m.id for m in client.models.list()] == [MODEL]
    workers = [p for p in cluster.procs if p.name.startswith("worker")]
    before = [_requests_total(w) for w in workers]
    for _ in range(6):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    assert [_requests_total(w) - b for w, b in zip(workers, before, strict=True)] == [3, 3]


@pytest.mark.parametrize("mode", MODES)
def test_sigkilled_workers_leave_within_lease_ttl(
    mode: str, request: pytest.FixtureRequest, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    etcd, nats = _servers(request, mode)
    c = Cluster(tmp_path, env=infra_env(etcd, nats))
    try:
        fe, (a, b) = _start(c, 2)
        client = openai.OpenAI(base_url=f"{fe.url}/v1", api_key="x", max_retries=0, timeout=30)
        a.kill()
        killed = time.monotonic()
        for _ in range(10):  # round-robin would send every other request to the dead worker
            resp = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4
            )
            assert resp.choices[0].message.content
        fe.wait_workers(MODEL, 1, timeout=max(TTL + 1 - (time.monotonic() - killed), 0.1))
        # the last worker goes: the model leaves /v1/models within the lease TTL plus a second
        assert _models(fe) == [MODEL]
        b.kill()
        killed = time.monotonic()
        while _models(fe):
            assert time.monotonic() - killed < TTL + 1, "the dead worker outlived its lease TTL + 1 s"
            time.sleep(0.05)
    finally:
        c.close()


@pytest.mark.parametrize("mode", MODES)
def test_client_disconnect_aborts_engine_request(mode: str, request: pytest.FixtureRequest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    etcd, nats = _servers(request, mode)
    c = Cluster(tmp_path, env=infra_env(etcd, nats))
    try:
        worker = c.worker("--speedup-ratio", "1")  # ~6 ms per token: the stream lasts seconds
        fe = c.frontend()
        c.wait_worker_ready(worker)
        fe.wait_workers(MODEL, 1)
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "go on"}],
            "max_tokens": 3000,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.stream("POST", f"{fe.url}/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            for _ in range(6):
                next(lines)
            assert worker.health()["active_requests"] == 1
        deadline = time.monotonic() + 5
        while worker.health()["active_requests"] != 0:
            assert time.monotonic() < deadline, "the engine request was not aborted"
            time.sleep(0.05)
    finally:
        c.close()


# -- infrastructure faults ----------------------------------------------------------------------------


class Load:
    """Sends requests back to back from a thread and records each status (or exception)."""

    def __init__(self, fe: FrontendProc) -> None:
        self.fe = fe
        self.results: list[int | str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.results.append(_chat(self.fe, timeout=10).status_code)
            except httpx.HTTPError as exc:
                self.results.append(type(exc).__name__)
            time.sleep(0.02)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(15)


def test_etcd_restart_while_serving(request: pytest.FixtureRequest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """etcd restarts (same data) under load; discovery and routing are independent of the request plane."""
    etcd, nats = _servers(request, "etcd-tcp", private=True)
    c = Cluster(tmp_path, env=infra_env(etcd, nats))
    try:
        fe, (a,) = _start(c, 1)
        with Load(fe) as load:
            time.sleep(0.3)
            etcd.restart(down_for=1.0)
            time.sleep(TTL + 0.5)  # past the lease TTL: the worker's keepalives must have resumed
        assert load.results and set(load.results) == {200}, load.results
        assert len(load.results) > 20
        assert _models(fe) == [MODEL]
        # a worker started after the restart is discovered and gets traffic
        b = c.worker("--speedup-ratio", "1000")
        c.wait_worker_ready(b)
        fe.wait_workers(MODEL, 2, timeout=10)
        for _ in range(4):
            assert _chat(fe).status_code == 200
        assert _requests_total(b) == 2
        assert "was lost" not in a.log()  # etcd kept its data: the lease survived, nothing re-registered
    finally:
        c.close()


def test_nats_restart_while_serving(request: pytest.FixtureRequest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    etcd, nats = _servers(request, "etcd-nats", private=True)
    assert nats is not None
    c = Cluster(tmp_path, env=infra_env(etcd, nats))
    try:
        worker = c.worker("--speedup-ratio", "1")
        fe = c.frontend()
        c.wait_worker_ready(worker)
        fe.wait_workers(MODEL, 1)
        assert _chat(fe).status_code == 200
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": "go on"}],
            "max_tokens": 3000,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.stream("POST", f"{fe.url}/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            for _ in range(4):
                next(lines)
            started = time.monotonic()
            nats.restart()
            rest = [line for line in lines if line]
        # the in-flight stream ends cleanly: an error event, then [DONE] (no hang, no silent truncation)
        assert time.monotonic() - started < 6
        assert rest[-1] == "data: [DONE]"
        assert '"error"' in rest[-2], rest[-3:]
        assert "lost the connection to NATS" in rest[-2]
        # new requests succeed once the frontend and the worker are back on NATS
        deadline = time.monotonic() + 10
        while _chat(fe).status_code != 200:
            assert time.monotonic() < deadline, "requests kept failing after NATS came back"
            time.sleep(0.1)
        assert all(_chat(fe).status_code == 200 for _ in range(5))
        # and the worker heard that the frontend gave up on the interrupted request
        deadline = time.monotonic() + 5
        while worker.health()["active_requests"] != 0:
            assert time.monotonic() < deadline, "the interrupted request kept running on the worker"
            time.sleep(0.05)
    finally:
        c.close()


# -- KV-aware routing on the NATS event plane ---------------------------------------------------------


def _metric(fe: FrontendProc, name: str) -> float:
    text = httpx.get(f"{fe.url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def _connection_names(nats: NatsServer) -> list[str]:
    conns = httpx.get(f"http://127.0.0.1:{nats.monitor_port}/connz", timeout=5).json()["connections"] or []
    return [c.get("name", "") for c in conns]


def test_kv_router_on_the_nats_event_plane(request: pytest.FixtureRequest, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from dynamo.mocker.engine import MockerEngine

    etcd, nats = _servers(request, "etcd-nats", private=True)
    assert nats is not None
    c = Cluster(tmp_path, env={**infra_env(etcd, nats), "DYN_EVENT_PLANE": "nats"})
    try:
        workers = [c.worker("--speedup-ratio", "1000") for _ in range(2)]
        fe = c.frontend("--router-mode", "kv")
        for w in workers:
            c.wait_worker_ready(w)
        fe.wait_workers(MODEL, 2)
        assert all("nats_events" in w.log() for w in workers)  # advertised in the instance record
        prompt = "The same long system prompt, repeated so the KV cache can be reused. " * 20
        body = {"model": MODEL, "messages": [{"role": "user", "content": prompt}], "max_tokens": 2}
        assert httpx.post(f"{fe.url}/v1/chat/completions", json=body, timeout=10).status_code == 200
        names = _connection_names(nats)
        assert sum(n.startswith("dynamo-events-") for n in names) == 2  # each worker publishes
        assert "dynamo-router-events" in names  # the frontend's KV router subscribes
        if not hasattr(MockerEngine, "set_kv_event_sink"):
            pytest.skip("the mocker publishes no KV events yet: only the transport was checked")
        deadline = time.monotonic() + 5
        while (
            _metric(fe, "dynamo_router_kv_events_applied") == 0
        ):  # the worker's KV events reached the router
            assert time.monotonic() < deadline, "no KV event arrived over NATS"
            time.sleep(0.05)
        before = [_requests_total(w) for w in workers]
        for _ in range(4):
            assert httpx.post(f"{fe.url}/v1/chat/completions", json=body, timeout=10).status_code == 200
        after = [_requests_total(w) for w in workers]
        # all went where the prefix is cached
        assert sorted(a - b for a, b in zip(after, before, strict=True)) == [0, 4]
        assert _metric(fe, "dynamo_router_kv_overlap_blocks") > 0
    finally:
        c.close()
