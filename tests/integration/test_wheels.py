"""Packaging: the distributions build as wheels and install into a clean virtual environment.

What a user does with released packages (``pip install dynamo-core dynamo-vllm``), done here from
wheels built out of this checkout: build, create a fresh venv, install, and ask the worker which
engines it sees. The engine libraries themselves (vllm is a multi-GB GPU build) are left out with
``--no-deps`` on the plugins; dynamo-core's own dependencies install normally (pip's configured
indexes and cache).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core"
#: plugin distributions built and installed when their project exists; dynamo-vllm is required
PLUGINS = {"dynamo-vllm": "vllm", "dynamo-sglang": "sglang", "dynamo-trtllm": "trtllm"}
REQUIRED_PLUGIN = "dynamo-vllm"


def run(argv: list[str], timeout: float = 300, **kwargs: object) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("DYN_")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, **kwargs)  # type: ignore[call-overload]
    assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc


def plugin_projects() -> dict[str, Path]:
    projects = {name: ROOT / "plugins" / name for name in PLUGINS}
    return {name: path for name, path in projects.items() if (path / "pyproject.toml").is_file()}


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One wheel per distribution, built with pip's PEP 517 front end (same backend as python -m build)."""
    projects = plugin_projects()
    if REQUIRED_PLUGIN not in projects:
        pytest.skip(f"plugins/{REQUIRED_PLUGIN}/pyproject.toml does not exist yet: nothing to package")
    out = tmp_path_factory.mktemp("wheels")
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(out),
         str(CORE), *map(str, projects.values())])
    built = {}
    for name in ("dynamo-core", *projects):
        found = sorted(out.glob(name.replace("-", "_") + "-*.whl"))
        assert len(found) == 1, f"expected one wheel for {name}: {sorted(p.name for p in out.iterdir())}"
        built[name] = found[0]
    return built


@pytest.fixture(scope="module")
def venv(wheels: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A fresh venv with dynamo-core (and its dependencies) and the plugins (no engine libraries)."""
    root = tmp_path_factory.mktemp("venv")
    # no pip inside: the test's own pip installs into it (--python), which saves a few seconds
    run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    python = root / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet"]
    run([*pip, str(wheels["dynamo-core"])])
    plugins = [str(path) for name, path in wheels.items() if name != "dynamo-core"]
    run([*pip, "--no-deps", *plugins])
    yield python


def names_in(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as z:
        return {n for n in z.namelist() if ".dist-info/" not in n}


def test_no_wheel_ships_the_namespace_init(wheels: dict[str, Path]) -> None:
    for name, wheel in wheels.items():
        files = names_in(wheel)
        assert "dynamo/__init__.py" not in files, f"{name} ships dynamo/__init__.py (breaks the namespace)"
        assert all(f.startswith("dynamo/") for f in files), f"{name} ships files outside dynamo/: {files}"


def test_no_file_is_shipped_by_two_distributions(wheels: dict[str, Path]) -> None:
    owners: dict[str, str] = {}
    for name, wheel in wheels.items():
        for path in names_in(wheel):
            assert path not in owners, f"{path} is in both {owners[path]} and {name}"
            owners[path] = name


def test_each_plugin_ships_only_its_own_package(wheels: dict[str, Path]) -> None:
    for name, engine in PLUGINS.items():
        if name in wheels:
            assert {f.split("/")[1] for f in names_in(wheels[name])} == {engine}


def test_worker_lists_the_installed_engines(venv: Path, wheels: dict[str, Path]) -> None:
    listed = run([str(venv), "-m", "dynamo.worker", "--list-engines"], timeout=60).stdout.split()
    expected = {"mocker", *(PLUGINS[name] for name in wheels if name in PLUGINS)}
    assert "mocker" in listed and "vllm" in listed
    assert set(listed) == expected


def test_module_entry_points_run_from_the_wheels(venv: Path) -> None:
    out = run([str(venv), "-m", "dynamo.frontend", "--help"], timeout=60).stdout
    assert "--http-port" in out
    scripts = venv.parent
    for script in ("dynamo", "dynamo-frontend", "dynamo-worker"):
        assert (scripts / script).is_file(), f"console script {script} is missing"


def test_self_check_from_the_wheels_names_the_missing_engine_library(venv: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "ETCD_", "NATS_", "PYTHONPATH"))}
    argv = [str(venv.parent / "dynamo"), "check", "--json", "--http-port", "0",
            "--file-kv", str(tmp_path / "kv")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=env)
    report = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout  # engine libraries missing are warnings, not errors
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["dynamo-core"]["status"] == "ok"
    assert checks["plugin dynamo-core"]["status"] == "ok"
    vllm = checks["plugin dynamo-vllm"]
    assert vllm["status"] == "warning" and "vllm is not installed" in vllm["message"]
    assert "pip install vllm" in vllm["fix"]
