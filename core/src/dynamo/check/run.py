"""Runs every check in the order a user reads them: software, hardware, services, ports, model."""

from __future__ import annotations

from dynamo.check.gpu import check_gpu
from dynamo.check.model import check_model
from dynamo.check.packages import check_packages, inventory
from dynamo.check.ports import check_ports
from dynamo.check.report import Report
from dynamo.check.services import check_discovery, check_request_plane, redact
from dynamo.check.settings import CheckOptions


def run_checks(options: CheckOptions) -> Report:
    s = options.settings
    report = Report(context={
        "process": options.process.value,
        "namespace": s.namespace,
        "discovery_backend": s.discovery_backend.value,
        "request_plane": s.request_plane.value,
        "event_plane": getattr(getattr(s, "event_plane", None), "value", None),
        "file_kv": s.file_kv,
        "etcd_endpoints": ",".join(redact(u) for u in s.etcd_endpoints.split(",")),
        "nats_server": ",".join(redact(u) for u in s.nats_server.split(",")),
        "http": f"{s.http_host}:{s.http_port}",
        "system_port": s.system_port,
        "engine": s.engine,
        "model_path": s.model_path,
    })
    report.extend(check_packages(options, inventory()))
    report.results.append(check_gpu(s.engine))
    report.extend(check_discovery(options))
    report.extend(check_request_plane(options))
    report.extend(check_ports(options))
    report.extend(check_model(options))
    return report
