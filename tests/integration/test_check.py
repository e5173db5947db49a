"""The environment self-check, run the way a user runs it: ``python -m dynamo.check`` as a subprocess.

Every case builds its own environment (no ``DYN_*``, ``ETCD_*`` or ``NATS_*`` from the caller), and
anything "unreachable" is a closed port on 127.0.0.1, never another address.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest
from support.cluster import free_port

pytestmark = pytest.mark.integration

PYTHON = sys.executable
MOCKER_MODEL = Path(__file__).resolve().parents[2] / "core" / "src" / "dynamo" / "mocker" / "model"


def clean_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DYN_", "ETCD_", "NATS_")) and k not in ("PYTHONPATH",)}
    env.update({"DYN_FILE_KV": str(tmp_path / "kv"), "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def run_check(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
              command: list[str] | None = None) -> tuple[int, dict, str]:
    """Run the check twice, as JSON (for assertions) and as text (what the user reads)."""
    env = env if env is not None else clean_env(tmp_path)
    base = command or [PYTHON, "-m", "dynamo.check"]
    as_json = subprocess.run([*base, *args, "--json"], env=env, capture_output=True, text=True, timeout=60)
    assert as_json.stdout.strip(), as_json.stderr
    report = json.loads(as_json.stdout)
    as_text = subprocess.run([*base, *args], env=env, capture_output=True, text=True, timeout=60)
    assert as_text.returncode == as_json.returncode, (as_text.stdout, as_json.stdout)
    return as_json.returncode, report, as_text.stdout


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def statuses(report: dict) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A loopback port nothing listens on, held (bound, not listening) so nobody else takes it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port another process-like listener holds for the whole test."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# -- healthy set-ups -----------------------------------------------------------------------------


def test_healthy_file_discovery_setup_is_all_ok(tmp_path: Path) -> None:
    http_port, system_port = free_port(), free_port()
    code, report, text = run_check(
        tmp_path, "--engine", "mocker", "--model-path", str(MOCKER_MODEL), "--http-host", "127.0.0.1",
        "--http-port", str(http_port), "--system-port", str(system_port),
    )
    assert code == 0, text
    assert report["ok"] is True and report["errors"] == 0
    found = statuses(report)
    must_be_ok = ["python", "dynamo-core", "plugin dynamo-core", "engine", "discovery", "request plane",
                  "http port", "system port", "model", "tokenizer", "chat template", "config",
                  "kv block size"]
    assert {name: found.get(name) for name in must_be_ok} == dict.fromkeys(must_be_ok, "ok"), text
    assert found["gpu"] in ("ok", "warning")  # depends on the machine; the mocker needs no GPU
    assert found["etcd"] == "skip" and found["nats"] == "skip"
    checks = by_name(report)
    assert checks["config"]["details"]["context_length"] == 8192
    assert checks["kv block size"]["details"]["block_size"] == 16
    assert "mocker" in checks["plugin dynamo-core"]["message"]
    # other plugins may lack their engine library here (a warning), but nothing is an error
    assert all(c["status"] != "error" for c in report["checks"]), text
    assert "ready: 0 errors" in text
    assert f"127.0.0.1:{http_port} is free" in text


def test_engine_flags_set_the_block_size(tmp_path: Path) -> None:
    code, report, _ = run_check(tmp_path, "--engine", "mocker", "--model-path", str(MOCKER_MODEL),
                                "--http-port", str(free_port()), "--block-size", "64")
    assert code == 0
    checks = by_name(report)
    assert checks["kv block size"]["details"]["block_size"] == 64
    assert "--block-size 64" in checks["engine flags"]["message"]


def test_real_etcd_and_nats_answer(tmp_path: Path, etcd_server, nats_server) -> None:  # noqa: ANN001
    env = clean_env(tmp_path, ETCD_ENDPOINTS=etcd_server.url, NATS_SERVER=nats_server.url)
    code, report, text = run_check(
        tmp_path, "--discovery-backend", "etcd", "--request-plane", "nats", "--http-port", str(free_port()),
        env=env,
    )
    checks = by_name(report)
    assert checks["etcd"]["status"] == "ok", text
    assert "healthy" in checks["etcd"]["message"] and etcd_server.url in checks["etcd"]["message"]
    assert checks["nats"]["status"] == "ok", text
    assert "JetStream on" in checks["nats"]["message"]
    assert code == (1 if report["errors"] else 0)


def test_dynamo_console_script(tmp_path: Path) -> None:
    script = Path(PYTHON).parent / "dynamo"
    if not script.is_file():
        pytest.skip(f"no {script}: reinstall dynamo-core (pip install -e core) to get the dynamo script")
    code, report, text = run_check(tmp_path, "--http-port", str(free_port()), command=[str(script), "check"])
    assert code == 0, text
    assert statuses(report)["discovery"] == "ok"
    assert text.startswith("dynamo check")


# -- what goes wrong ----------------------------------------------------------------------------


def test_unreachable_etcd_and_nats_are_errors_naming_the_endpoint(tmp_path: Path, closed_port: int) -> None:
    etcd, nats = f"http://127.0.0.1:{closed_port}", f"nats://127.0.0.1:{closed_port}"
    env = clean_env(tmp_path, ETCD_ENDPOINTS=etcd, NATS_SERVER=nats)
    code, report, text = run_check(
        tmp_path, "--discovery-backend", "etcd", "--request-plane", "nats", "--http-port", str(free_port()),
        "--probe-timeout", "1", env=env,
    )
    assert code != 0
    checks = by_name(report)
    for name, endpoint in (("etcd", etcd), ("nats", nats)):
        assert checks[name]["status"] == "error", text
        assert endpoint in checks[name]["message"]
        assert "does not answer" in checks[name]["message"]
        assert checks[name]["fix"]
    assert f"{etcd} does not answer" in text and f"{nats} does not answer" in text
    assert "fix: start etcd" in text and "fix: start NATS" in text


def test_flags_win_over_the_environment(tmp_path: Path, closed_port: int) -> None:
    env = clean_env(tmp_path, DYN_DISCOVERY_BACKEND="etcd", ETCD_ENDPOINTS="http://127.0.0.1:1")
    etcd = f"http://127.0.0.1:{closed_port}"
    code, report, _ = run_check(tmp_path, "--store-kv", "etcd", "--etcd-endpoints", etcd,
                                "--http-port", str(free_port()), "--probe-timeout", "1", env=env)
    assert code != 0
    assert report["config"]["etcd_endpoints"] == etcd
    assert etcd in by_name(report)["etcd"]["message"]


def test_an_unused_server_set_in_the_environment_only_warns(tmp_path: Path, closed_port: int) -> None:
    env = clean_env(tmp_path, NATS_SERVER=f"nats://127.0.0.1:{closed_port}")
    code, report, _ = run_check(tmp_path, "--http-port", str(free_port()), "--probe-timeout", "1", env=env)
    assert code == 0
    assert by_name(report)["nats"]["status"] == "warning"


def test_taken_ports_are_errors(tmp_path: Path, taken_port: int) -> None:
    code, report, text = run_check(tmp_path, "--http-host", "127.0.0.1", "--http-port", str(taken_port),
                                   "--system-port", str(taken_port))
    assert code != 0
    checks = by_name(report)
    assert checks["http port"]["status"] == "error"
    assert f"127.0.0.1:{taken_port} is already in use" in checks["http port"]["message"]
    assert "--http-port" in checks["http port"]["fix"]
    assert checks["system port"]["status"] == "error"
    assert "--system-port" in checks["system port"]["fix"]
    assert f"127.0.0.1:{taken_port} is already in use" in text


def test_process_choice_decides_which_ports_matter(tmp_path: Path, taken_port: int) -> None:
    code, report, _ = run_check(tmp_path, "--process", "worker", "--http-host", "127.0.0.1",
                                "--http-port", str(taken_port))
    assert code == 0
    assert "http port" not in statuses(report)


def test_model_directory_without_tokenizer(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    shutil.copy(MOCKER_MODEL / "config.json", model / "config.json")
    code, report, text = run_check(tmp_path, "--model-path", str(model), "--http-port", str(free_port()))
    assert code != 0
    checks = by_name(report)
    assert checks["tokenizer"]["status"] == "error"
    assert "no tokenizer.json" in checks["tokenizer"]["message"]
    assert "tokenizer.json" in checks["tokenizer"]["fix"]
    assert checks["config"]["status"] == "ok"  # the config still says what it can
    assert checks["config"]["details"]["context_length"] == 8192
    assert "no tokenizer.json" in text


def test_model_path_that_is_not_a_directory(tmp_path: Path) -> None:
    # the mocker reads a local directory: a hub name is an error
    code, report, _ = run_check(tmp_path, "--engine", "mocker", "--model-path", "Org/not-downloaded",
                                "--http-port", str(free_port()))
    assert code != 0
    model = by_name(report)["model"]
    assert model["status"] == "error" and "hf download Org/not-downloaded" in model["fix"]
    # for another engine it may be a hub name the engine downloads: a warning
    code, report, _ = run_check(tmp_path, "--model-path", "Org/not-downloaded",
                                "--http-port", str(free_port()))
    assert code == 0
    assert by_name(report)["model"]["status"] == "warning"
    # a path that does not exist is an error whatever the engine
    code, report, _ = run_check(tmp_path, "--model-path", str(tmp_path / "nope" / "model"),
                                "--http-port", str(free_port()))
    assert code != 0 and "does not exist" in by_name(report)["model"]["message"]


def test_unknown_engine_is_an_error(tmp_path: Path) -> None:
    code, report, _ = run_check(tmp_path, "--engine", "nope", "--http-port", str(free_port()))
    assert code != 0
    engine = by_name(report)["engine"]
    assert engine["status"] == "error" and "mocker" in engine["message"]


# -- plugins whose engine library is missing -----------------------------------------------------

PLUGIN_MODULE = '''
from dynamo.plugin import EngineSpec, hookimpl


def _build(ctx):
    import {library}  # the engine library: imported in the factory only

    raise AssertionError("never reached in these tests")


@hookimpl
def dynamo_engines():
    return [EngineSpec(name="{engine}", factory=_build, description="test plugin")]
'''


def install_fake_plugin(site: Path, dist: str, module: str, engine: str, requires: list[str]) -> None:
    """A plugin distribution "installed" into ``site`` (a directory put on PYTHONPATH): its module
    plus a dist-info with the ``dynamo`` entry point, exactly what pip would leave behind."""
    pkg = site / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "plugin.py").write_text(PLUGIN_MODULE.format(library=module + "_lib", engine=engine))
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir()
    meta = ["Metadata-Version: 2.1", f"Name: {dist}", "Version: 0.1.0", "Requires-Python: >=3.10",
            *(f"Requires-Dist: {r}" for r in requires)]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    (info / "entry_points.txt").write_text(f"[dynamo]\n{engine} = {module}.plugin\n")
    (info / "RECORD").write_text("")


def test_third_party_plugin_without_its_engine_library_warns(tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_fake_plugin(site, "zeta-dynamo", "zeta_dynamo", "zeta", ["dynamo-core", "zeta-engine-lib>=1.0"])
    env = clean_env(tmp_path, PYTHONPATH=str(site))
    code, report, text = run_check(tmp_path, "--http-port", str(free_port()), env=env)
    assert code == 0, text  # not the engine asked for: a warning
    plugin = by_name(report)["plugin zeta-dynamo"]
    assert plugin["status"] == "warning"
    assert "engine zeta" in plugin["message"] and "zeta-engine-lib is not installed" in plugin["message"]
    assert plugin["fix"] == "pip install 'zeta-engine-lib>=1.0'"
    assert "fix: pip install 'zeta-engine-lib>=1.0'" in text

    # asked for by --engine, the same gap stops the worker: an error
    code, report, _ = run_check(tmp_path, "--engine", "zeta", "--http-port", str(free_port()), env=env)
    assert code != 0
    assert by_name(report)["plugin zeta-dynamo"]["status"] == "error"


def test_sglang_plugin_without_sglang_warns_with_the_install_command(tmp_path: Path) -> None:
    try:
        metadata.version("sglang")
        pytest.skip("sglang is installed here")
    except metadata.PackageNotFoundError:
        pass
    env = clean_env(tmp_path)
    try:
        metadata.version("dynamo-sglang")  # the real plugin, when this environment has it
    except metadata.PackageNotFoundError:
        site = tmp_path / "site"
        install_fake_plugin(site, "dynamo-sglang", "fake_dynamo_sglang", "sglang", ["dynamo-core"])
        env["PYTHONPATH"] = str(site)
    code, report, text = run_check(tmp_path, "--http-port", str(free_port()), env=env)
    assert code == 0, text
    plugin = by_name(report)["plugin dynamo-sglang"]
    assert plugin["status"] == "warning"
    assert "sglang is not installed" in plugin["message"]
    assert plugin["fix"].startswith("pip install sglang")
    assert plugin["details"]["engines"]["sglang"] == {"library": None, "version": None}

    code, report, _ = run_check(tmp_path, "--engine", "sglang", "--http-port", str(free_port()), env=env)
    assert code != 0
    checks = by_name(report)
    assert checks["plugin dynamo-sglang"]["status"] == "error"
    assert checks["gpu"]["status"] in ("ok", "error")  # error exactly when no GPU is seen
    if not checks["gpu"]["details"]["gpus"]:
        assert checks["gpu"]["status"] == "error" and "--engine mocker" in checks["gpu"]["fix"]


def test_broken_plugin_is_reported_not_fatal(tmp_path: Path) -> None:
    site = tmp_path / "site"
    install_fake_plugin(site, "broken-dynamo", "broken_dynamo", "broken", [])
    (site / "broken_dynamo" / "plugin.py").write_text("raise ImportError('boom')\n")
    env = clean_env(tmp_path, PYTHONPATH=str(site))
    code, report, _ = run_check(tmp_path, "--http-port", str(free_port()), env=env)
    assert code == 0
    plugin = by_name(report)["plugin broken-dynamo"]
    assert plugin["status"] == "warning" and "boom" in plugin["message"]


# -- GPUs, through a stand-in nvidia-smi (these machines have none) ------------------------------

SMI_HEADER = """\
+-----------------------------------------------------------------------------------------+
| NVIDIA-SMI 550.54.15              Driver Version: 550.54.15      CUDA Version: 12.4     |
+-----------------------------------------------------------------------------------------+
"""


def fake_nvidia_smi(bin_dir: Path, body: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)


def fake_dist(site: Path, name: str, version: str) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


def test_gpus_seen_through_nvidia_smi(tmp_path: Path) -> None:
    fake_nvidia_smi(tmp_path / "bin", f"""\
case "$1" in
  --query-gpu=*)
    echo "0, NVIDIA H100 80GB HBM3, 81559, 550.54.15"
    echo "1, NVIDIA H100 80GB HBM3, 81559, 550.54.15";;
  *) cat <<'OUT'
{SMI_HEADER}OUT
esac
""")
    env = clean_env(tmp_path, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    code, report, text = run_check(tmp_path, "--http-port", str(free_port()), env=env)
    gpu = by_name(report)["gpu"]
    assert gpu["status"] == "ok", text
    assert "2 GPUs" in gpu["message"] and "NVIDIA H100 80GB HBM3 79 GiB" in gpu["message"]
    assert "driver 550.54.15, CUDA 12.4" in gpu["message"]
    assert gpu["details"]["cuda"] == "12.4" and len(gpu["details"]["gpus"]) == 2

    # a torch built for a newer CUDA than the driver offers is flagged (read from metadata, not imported)
    site = tmp_path / "site"
    fake_dist(site, "torch", "2.13.0+cu128")
    env["PYTHONPATH"] = str(site)
    code, report, _ = run_check(tmp_path, "--http-port", str(free_port()), env=env)
    gpu = by_name(report)["gpu"]
    assert gpu["status"] == "warning"
    assert "CUDA 12.8" in gpu["message"] and "12.4" in gpu["message"]


def test_broken_gpu_driver_is_reported(tmp_path: Path) -> None:
    message = "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver."
    fake_nvidia_smi(tmp_path / "bin", f'echo "{message}" >&2\nexit 9\n')
    env = clean_env(tmp_path, PATH=f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    code, report, _ = run_check(tmp_path, "--http-port", str(free_port()), env=env)
    assert code == 0  # the mocker does not need it
    gpu = by_name(report)["gpu"]
    assert gpu["status"] == "warning" and "couldn't communicate with the NVIDIA driver" in gpu["message"]
