"""The check's configuration: every frontend and worker setting, so a user can paste their own flags.

``dynamo check --discovery-backend etcd --http-port 8001 --engine vllm --model-path DIR --block-size 32``
checks exactly what ``python -m dynamo.frontend`` and ``python -m dynamo.worker`` would use with those
flags and the same ``DYN_*`` / ``ETCD_ENDPOINTS`` / ``NATS_SERVER`` environment.
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from dynamo.frontend.settings import FrontendSettings
from dynamo.runtime.settings import parse_args
from dynamo.worker.settings import WorkerSettings


class CheckSettings(FrontendSettings, WorkerSettings):
    """The union of the frontend's and the worker's settings (same flags, same environment)."""


class Process(str, enum.Enum):
    """Which process the machine is being checked for; it decides which ports must be free."""

    ALL = "all"
    FRONTEND = "frontend"
    WORKER = "worker"


@dataclass(frozen=True)
class CheckOptions:
    settings: CheckSettings
    process: Process = Process.ALL
    #: flags no Dynamo process claims: the engine's own (``--block-size``, ``--gpu-memory-utilization``)
    engine_argv: tuple[str, ...] = ()
    as_json: bool = False
    timeout: float = 2.0
    #: settings given explicitly, by flag or environment (a server set this way is probed even if unused)
    explicit: frozenset[str] = field(default_factory=frozenset)

    def wants(self, process: Process) -> bool:
        return self.process in (Process.ALL, process)


def _extra_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--json", action="store_true", help="print the report as JSON (same content)")
    p.add_argument(
        "--process", choices=[m.value for m in Process], default=Process.ALL.value,
        help="check for this process only: 'frontend' skips the worker's ports, 'worker' the HTTP port",
    )
    p.add_argument("--probe-timeout", type=float, default=2.0,
                   help="seconds to wait for etcd / NATS to answer")
    return p


def parse_check_args(argv: Sequence[str] | None, prog: str) -> CheckOptions:
    settings, rest, ns = parse_args(
        CheckSettings, argv, prog=prog, allow_unknown=True, extra=_extra_parser(),
        description="Check this machine for running Dynamo: Python, packages and engine plugins, GPUs, "
                    "etcd / NATS, free ports and (with --model-path) the model directory. Accepts every "
                    "frontend and worker flag; other flags are taken as the engine's own.",
    )
    return CheckOptions(
        settings=settings, process=Process(ns.process), engine_argv=tuple(rest), as_json=ns.json,
        timeout=ns.probe_timeout, explicit=frozenset(settings.model_fields_set),
    )
