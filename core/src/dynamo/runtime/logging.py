"""Logging set-up from ``DYN_LOG``, which uses ``RUST_LOG`` syntax.

``DYN_LOG=debug`` sets the default level; ``DYN_LOG=info,dynamo.router=debug`` adds per-module
levels. Rust-style paths (``dynamo::router``) are accepted too.
"""

from __future__ import annotations

import logging
import os
import sys

_LEVELS = {
    "trace": logging.DEBUG,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "off": logging.CRITICAL + 10,
}


def _level(name: str) -> int:
    try:
        return _LEVELS[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r} (use one of {', '.join(_LEVELS)})") from None


def parse_log_spec(spec: str, default: int = logging.INFO) -> tuple[int, dict[str, int]]:
    """Parse ``"info,dynamo.router=debug"`` into ``(root_level, {logger_name: level})``."""
    root = default
    modules: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if "=" in part:
            target, _, level = part.partition("=")
            modules[target.strip().replace("::", ".")] = _level(level)
        elif part.lower() in _LEVELS:
            root = _level(part)
        else:  # a bare module name means "everything from it", like RUST_LOG
            modules[part.replace("::", ".")] = logging.DEBUG
    return root, modules


def configure_logging(spec: str | None = None) -> None:
    """Configure the root logger from ``spec`` (default: ``$DYN_LOG``, else ``info``)."""
    spec = spec if spec is not None else os.environ.get("DYN_LOG", "info")
    root_level, modules = parse_log_spec(spec)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)-5s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(root_level)
    for name, level in modules.items():
        logging.getLogger(name).setLevel(level)
    # uvicorn's access log is one line per request: keep it off unless asked for by name
    if "uvicorn.access" not in modules:
        logging.getLogger("uvicorn.access").setLevel(max(root_level, logging.WARNING))
