"""Discovery and the request plane: is the configured backend usable, do its servers answer?

Probes use the standard library only (an HTTP GET for etcd, the INFO line NATS sends on connect),
so the check works before any client library is installed and tells which of the two is missing.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import ssl
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from dynamo.check.report import Result, error, ok, skip, warning
from dynamo.check.settings import CheckOptions
from dynamo.runtime.settings import DiscoveryBackend, RequestPlane

#: starts etcd and NATS (JetStream on) on their default ports
COMPOSE = "docker compose -f deploy/docker-compose.yml up -d"
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def redact(url: str) -> str:
    """``url`` without a password or token in it, for printing."""
    parts = urlsplit(url)
    if not parts.password and not (parts.username and "@" in parts.netloc):
        return url
    host = parts.hostname or ""
    netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
    return parts._replace(netloc=netloc).geturl()


def _reason(exc: BaseException) -> str:
    inner = getattr(exc, "reason", exc)
    if isinstance(inner, ConnectionRefusedError):
        return "connection refused"
    if isinstance(inner, (TimeoutError, socket.timeout)):
        return "timed out"
    return str(inner) or type(inner).__name__


# -- discovery ---------------------------------------------------------------------------------


def check_file_kv(root: str) -> Result:
    path = Path(root)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return error("discovery", f"file: {root} cannot be created ({existing} is not a directory)",
                     "point DYN_FILE_KV / --file-kv at a writable directory")
    if existing != path:
        if os.access(existing, os.W_OK | os.X_OK):
            return ok("discovery", f"file: {root} (created on first use; {existing} is writable)", root=root)
        return error("discovery", f"file: {root} cannot be created: {existing} is not writable",
                     "point DYN_FILE_KV / --file-kv at a writable directory", root=root)
    try:
        with tempfile.NamedTemporaryFile(dir=path, prefix=".dynamo-check-"):
            pass
    except OSError as exc:
        return error("discovery", f"file: {root} is not writable ({exc.strerror or exc})",
                     "point DYN_FILE_KV / --file-kv at a writable directory, or fix its permissions",
                     root=root)
    return ok("discovery", f"file: {root} is writable", root=root)


@dataclass(frozen=True)
class ClientLibrary:
    """The client a backend needs: found with ``find_spec``, never imported here."""

    what: str
    module: str
    dist: str
    install: str
    #: the dynamo module implementing the backend, when it is optional
    backend: str | None = None

    def check(self, name: str) -> Result:
        if self.backend and importlib.util.find_spec(self.backend) is None:
            return error(name, f"this dynamo-core has no {self.what}", "upgrade dynamo-core")
        if importlib.util.find_spec(self.module) is None:
            return error(name, f"{self.what} needs {self.dist}, which is not installed", self.install)
        return ok(name, f"{self.dist} is installed")


ETCD_CLIENT = ClientLibrary("etcd discovery", "etcd3aio", "etcd3aio",
                            "pip install 'dynamo-core[etcd]' (or pip install etcd3aio)",
                            backend="dynamo.runtime.discovery.etcd")
NATS_CLIENT = ClientLibrary("the NATS planes", "nats", "nats-py",
                            "pip install 'dynamo-core[nats]' (or pip install nats-py)")


def check_discovery(options: CheckOptions) -> Iterator[Result]:
    s = options.settings
    backend = DiscoveryBackend(s.discovery_backend)
    if backend is DiscoveryBackend.FILE:
        yield check_file_kv(s.file_kv)
    elif backend is DiscoveryBackend.MEM:
        yield warning("discovery", "mem: only processes sharing one Python process can find each other",
                      "use --discovery-backend file (one machine) or etcd (several)")
    else:
        yield ok("discovery", "etcd")
        yield ETCD_CLIENT.check("etcd client")
    used = backend is DiscoveryBackend.ETCD
    if used or "etcd_endpoints" in options.explicit:
        yield check_etcd(options, required=used)
    else:
        yield skip("etcd", f"not used (--discovery-backend {backend.value})")


# -- etcd ----------------------------------------------------------------------------------------


def _tls_opener(options: CheckOptions) -> urllib.request.OpenerDirector:
    """An opener for https etcd endpoints that trusts ``--etcd-auth-ca`` and presents the client cert."""
    s = options.settings
    ca, cert, key = (getattr(s, f"etcd_auth_{n}", None) for n in ("ca", "client_cert", "client_key"))
    context = ssl.create_default_context(cafile=ca)
    if cert:
        context.load_cert_chain(cert, key)
    https = urllib.request.HTTPSHandler(context=context)
    return urllib.request.build_opener(urllib.request.ProxyHandler({}), https)


def _probe_etcd(endpoint: str, timeout: float, opener: urllib.request.OpenerDirector) -> tuple[bool, str]:
    url = endpoint if "://" in endpoint else f"http://{endpoint}"
    try:
        with opener.open(f"{url.rstrip('/')}/health", timeout=timeout) as resp:
            health = json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return False, f"answers HTTP {exc.code} on /health (is this etcd?)"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        return False, f"does not answer: {_reason(exc)}"
    if str(health.get("health")).lower() != "true":
        return False, f"answers but is unhealthy: {health.get('reason') or health}"
    try:
        with opener.open(f"{url.rstrip('/')}/version", timeout=timeout) as resp:
            version = json.loads(resp.read()).get("etcdserver", "?")
    except Exception:
        version = "?"
    return True, f"healthy (etcd {version})"


def check_etcd(options: CheckOptions, *, required: bool) -> Result:
    urls = [e.strip() for e in options.settings.etcd_endpoints.split(",") if e.strip()]
    try:
        opener = _tls_opener(options) if any(u.startswith("https://") for u in urls) else _NO_PROXY
    except (OSError, ssl.SSLError) as exc:
        return error("etcd", f"the etcd TLS files do not load: {exc}",
                     "check --etcd-auth-ca / --etcd-auth-client-cert / --etcd-auth-client-key")
    probes = {redact(url): _probe_etcd(url, options.timeout, opener) for url in urls}
    summary = "; ".join(f"{url} {text}" for url, (_, text) in probes.items())
    details = {"endpoints": {u: {"ok": good, "message": text} for u, (good, text) in probes.items()}}
    healthy = sum(good for good, _ in probes.values())
    if urls and healthy == len(urls):
        return ok("etcd", summary, **details)
    fix = (f"start etcd ({COMPOSE} starts etcd and NATS), "
           "or set ETCD_ENDPOINTS / --etcd-endpoints to where it runs"
           + ("" if required else "; it is not used with this discovery backend"))
    bad = error if required and not healthy else warning
    return bad("etcd", summary or "no endpoint configured", fix, **details)


# -- request plane -------------------------------------------------------------------------------


def _probe_nats(server: str, timeout: float) -> tuple[bool, str]:
    parts = urlsplit(server if "://" in server else f"nats://{server}")
    host, port = parts.hostname or "localhost", parts.port or 4222
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            line = b""
            while not line.endswith(b"\r\n") and len(line) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                line += chunk
    except OSError as exc:
        return False, f"does not answer: {_reason(exc)}"
    if not line.startswith(b"INFO "):
        return False, f"answers but is not a NATS server (first bytes {line[:20]!r})"
    try:
        info = json.loads(line[5:].split(b"\r\n", 1)[0])
    except ValueError:
        info = {}
    js = "JetStream on" if info.get("jetstream") else "JetStream off"
    return True, f"answers (nats-server {info.get('version', '?')}, {js})"


def check_nats(servers: str, timeout: float, *, required: bool) -> Result:
    urls = [u.strip() for u in servers.split(",") if u.strip()]
    probes = {redact(url): _probe_nats(url, timeout) for url in urls}
    summary = "; ".join(f"{url} {text}" for url, (_, text) in probes.items())
    details = {"servers": {u: {"ok": good, "message": text} for u, (good, text) in probes.items()}}
    reachable = sum(good for good, _ in probes.values())
    if urls and reachable == len(urls):
        return ok("nats", summary, **details)
    fix = (f"start NATS ({COMPOSE} starts etcd and NATS), or set NATS_SERVER / --nats-server to where it runs"
           + ("" if required else "; it is not used with this configuration"))
    bad = error if required and not reachable else warning
    return bad("nats", summary or "no server configured", fix, **details)


def check_request_plane(options: CheckOptions) -> Iterator[Result]:
    s = options.settings
    plane = RequestPlane(s.request_plane)
    # the event plane (KV events, load metrics) may use NATS too, once the settings carry it
    event_plane = getattr(getattr(s, "event_plane", None), "value", getattr(s, "event_plane", None))
    users = [flag for flag, value in (("--request-plane", plane.value), ("--event-plane", event_plane))
             if value == "nats"]
    yield ok("request plane", "tcp: workers listen directly, no server needed" if plane is RequestPlane.TCP
             else "nats")
    if users:
        yield NATS_CLIENT.check("nats client")
        yield check_nats(s.nats_server, options.timeout, required=True)
    elif "nats_server" in options.explicit:
        yield check_nats(s.nats_server, options.timeout, required=False)
    else:
        planes = f"--request-plane {plane.value}, --event-plane {event_plane or 'direct'}"
        yield skip("nats", f"not used ({planes})")
