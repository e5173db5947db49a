"""Whether the ports the processes will listen on are free, tried the way uvicorn binds them."""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterator

from dynamo.check.report import Result, error, ok, skip
from dynamo.check.settings import CheckOptions, Process
from dynamo.runtime.settings import DiscoveryBackend


def bind_error(host: str, port: int) -> OSError | None:
    """The error binding ``host:port`` gives now, or ``None`` when the port is free."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return exc
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # uvicorn sets SO_REUSEADDR, so a port held only by TIME_WAIT connections counts as free
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(addr)
        except OSError as exc:
            return exc
    return None


def check_port(name: str, host: str, port: int, flag: str) -> Result:
    where = f"{host}:{port}"
    exc = bind_error(host, port)
    if exc is None:
        return ok(name, f"{where} is free", host=host, port=port)
    if exc.errno == errno.EADDRINUSE:
        fix = f"stop what listens there (ss -ltnp 'sport = :{port}' shows it), or pass {flag} PORT"
        if flag == "--http-port":
            fix += "; checking next to a frontend you already started? add --process worker"
        return error(name, f"{where} is already in use", fix, host=host, port=port)
    if exc.errno == errno.EACCES:
        return error(name, f"{where}: permission denied (ports below 1024 need root)",
                     f"pass {flag} with a port above 1023", host=host, port=port)
    if exc.errno == errno.EADDRNOTAVAIL:
        return error(name, f"{where}: {host} is not an address of this machine",
                     "bind to 0.0.0.0 or one of this machine's addresses", host=host, port=port)
    return error(name, f"{where} cannot be bound: {exc}", f"pass {flag} with another port",
                 host=host, port=port)


def check_ports(options: CheckOptions) -> Iterator[Result]:
    s = options.settings
    if options.wants(Process.FRONTEND):
        yield check_port("http port", s.http_host, s.http_port, "--http-port")
    if not options.wants(Process.WORKER):
        return
    if s.system_port is None:
        yield skip("system port", "not enabled (--system-port / DYN_SYSTEM_PORT)")
    elif s.system_port == 0:
        yield ok("system port", "0: the worker picks a free port")
    else:
        yield check_port("system port", "0.0.0.0", s.system_port, "--system-port")
    if s.tcp_port:
        local = DiscoveryBackend(s.discovery_backend) is not DiscoveryBackend.ETCD
        host = s.tcp_host or ("127.0.0.1" if local else "0.0.0.0")
        yield check_port("tcp port", host, s.tcp_port, "--tcp-port")
