"""A worker whose engine fails its health check leaves discovery and exits non-zero."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from support.cluster import Cluster

pytestmark = pytest.mark.integration

# a third-party plugin, "installed" on PYTHONPATH with its entry point: the mocker, plus a fault
# switch — once the file named by FAULTY_ENGINE_SWITCH exists, its health check fails
PLUGIN = '''
import os
from pathlib import Path

from dynamo.plugin import EngineContext, EngineSpec, hookimpl
from dynamo.plugin.errors import EngineError


def _build(ctx: EngineContext):
    from dynamo.mocker.engine import MockerEngine

    class FaultyEngine(MockerEngine):
        async def check_health(self) -> None:
            if Path(os.environ["FAULTY_ENGINE_SWITCH"]).exists():
                raise EngineError("simulated device fault")
            await super().check_health()

    return FaultyEngine(ctx)


@hookimpl
def dynamo_engines():
    return [EngineSpec(name="faulty", factory=_build, description="mocker with a fault switch")]
'''


def _install(site: Path) -> None:
    (site / "faulty_engine").mkdir(parents=True)
    (site / "faulty_engine" / "__init__.py").write_text("")
    (site / "faulty_engine" / "plugin.py").write_text(PLUGIN)
    info = site / "faulty_engine-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: faulty-engine\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[dynamo]\nfaulty = faulty_engine.plugin\n")


def test_unhealthy_engine_deregisters_and_exits_non_zero(cluster: Cluster, tmp_path: Path) -> None:
    site, switch = tmp_path / "site", tmp_path / "fault"
    _install(site)
    env = {"PYTHONPATH": str(site), "FAULTY_ENGINE_SWITCH": str(switch)}
    worker = cluster.worker("--speedup-ratio", "1000", "--model-name", "faulty", "--health-check-interval", "0.3",
                            engine="faulty", env=env)
    fe = cluster.frontend()
    cluster.wait_worker_ready(worker)
    fe.wait_workers("faulty", 1)
    body = {"model": "faulty", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    assert httpx.post(f"{fe.url}/v1/chat/completions", json=body, timeout=30).status_code == 200

    switch.touch()
    assert worker.popen.wait(15) == 3, worker.log()
    assert "failed its health check" in worker.log()
    deadline = time.monotonic() + 5
    while httpx.get(f"{fe.url}/v1/models").json()["data"]:
        assert time.monotonic() < deadline, "the unhealthy worker is still listed"
        time.sleep(0.1)
