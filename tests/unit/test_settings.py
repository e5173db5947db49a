from __future__ import annotations

import pytest

from dynamo.frontend.settings import FrontendSettings
from dynamo.router import RouterMode
from dynamo.runtime.settings import DiscoveryBackend, parse_args
from dynamo.worker.settings import WorkerSettings


def test_defaults_need_no_infrastructure(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("DYN_DISCOVERY_BACKEND", "DYN_REQUEST_PLANE", "DYN_HTTP_PORT"):
        monkeypatch.delenv(var, raising=False)
    s, rest, _ = parse_args(FrontendSettings, [], prog="t")
    assert s.discovery_backend is DiscoveryBackend.FILE
    assert s.request_plane.value == "tcp"
    assert s.http_port == 8000
    assert s.router_mode is RouterMode.ROUND_ROBIN
    assert rest == []


def test_env_is_read_and_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DYN_HTTP_PORT", "9001")
    monkeypatch.setenv("DYN_ROUTER_MODE", "random")
    s, _, _ = parse_args(FrontendSettings, [], prog="t")
    assert (s.http_port, s.router_mode) == (9001, RouterMode.RANDOM)
    s, _, _ = parse_args(FrontendSettings, ["--http-port", "9002"], prog="t")
    assert (s.http_port, s.router_mode) == (9002, RouterMode.RANDOM)


def test_store_kv_is_an_alias_of_discovery_backend() -> None:
    s, _, _ = parse_args(WorkerSettings, ["--store-kv", "mem"], prog="t", allow_unknown=True)
    assert s.discovery_backend is DiscoveryBackend.MEM


def test_engine_flags_pass_through_untouched() -> None:
    argv = ["--engine", "vllm", "--model-path", "/m", "--gpu-memory-utilization", "0.5", "--enforce-eager"]
    s, rest, _ = parse_args(WorkerSettings, argv, prog="t", allow_unknown=True)
    assert (s.engine, s.model_path) == ("vllm", "/m")
    assert rest == ["--gpu-memory-utilization", "0.5", "--enforce-eager"]


def test_etcd_endpoints_use_dynamo_env_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ETCD_ENDPOINTS", "http://10.0.0.1:2379")
    s, _, _ = parse_args(WorkerSettings, [], prog="t", allow_unknown=True)
    assert s.etcd_endpoints == "http://10.0.0.1:2379"


def test_invalid_value_is_rejected() -> None:
    with pytest.raises(SystemExit):
        parse_args(FrontendSettings, ["--router-mode", "fastest"], prog="t")
