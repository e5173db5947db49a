"""Start real frontend and worker processes on loopback for tests, and stop every one of them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    system_port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.popen.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive():
            self.popen.send_signal(sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout: float = 15) -> int:
        self.signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def health(self) -> dict:
        assert self.system_port is not None, "start the worker with a system port"
        return httpx.get(f"http://127.0.0.1:{self.system_port}/health", timeout=5).json()


@dataclass
class Cluster:
    """Processes sharing one file-discovery directory and namespace."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    procs: list[Proc] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.kv_dir = self.workdir / "kv"
        self.kv_dir.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("DYN_")}
        base.update({"DYN_FILE_KV": str(self.kv_dir), "DYN_NAMESPACE": f"test{os.getpid()}-{id(self):x}",
                     "DYN_LOG": "info", "PYTHONUNBUFFERED": "1"})
        base.update(self.env)
        self.env = base

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
               python: str = PYTHON) -> subprocess.Popen[bytes]:
        log_path = self.workdir / f"{name}-{len(self.procs)}.log"
        out = open(log_path, "wb")  # noqa: SIM115 - the child owns it
        popen = subprocess.Popen([python, *args], env={**self.env, **(env or {})}, stdout=out,
                                 stderr=subprocess.STDOUT, cwd=self.workdir)
        out.close()
        return popen

    def worker(self, *args: str, engine: str = "mocker", env: dict[str, str] | None = None,
               python: str = PYTHON, module: str = "dynamo.worker") -> Proc:
        sport = free_port()
        argv = ["-m", module, *(["--engine", engine] if module == "dynamo.worker" else []),
                "--system-port", str(sport), *args]
        popen = self._spawn(f"worker-{engine}", argv, env, python)
        proc = Proc(f"worker-{engine}", popen, self.workdir / f"worker-{engine}-{len(self.procs)}.log", sport)
        self.procs.append(proc)
        return proc

    def frontend(self, *args: str, port: int | None = None, env: dict[str, str] | None = None) -> "FrontendProc":
        port = port or free_port()
        argv = ["-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(port), *args]
        popen = self._spawn("frontend", argv, env)
        proc = FrontendProc("frontend", popen, self.workdir / f"frontend-{len(self.procs)}.log", port=port)
        self.procs.append(proc)
        return proc

    def wait_worker_ready(self, proc: Proc, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise AssertionError(f"{proc.name} exited early:\n{proc.log()}")
            try:
                if proc.health().get("status") == "healthy":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"{proc.name} not ready after {timeout}s:\n{proc.log()}")

    def close(self) -> None:
        for proc in reversed(self.procs):
            if proc.alive():
                proc.stop(timeout=10)


@dataclass
class FrontendProc(Proc):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_workers(self, model: str, count: int, timeout: float = 60) -> None:
        """Wait until /health reports ``count`` workers for ``model``."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"frontend exited early:\n{self.log()}")
            try:
                last = httpx.get(f"{self.url}/health", timeout=5).json()
                if last.get("models", {}).get(model, 0) == count:
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.1)
        raise AssertionError(f"model {model!r} never had {count} workers (last health {last}):\n{self.log()}")
