"""Settings shared by every process, and the flag/env plumbing.

Every setting is a field of a pydantic-settings model read from ``DYN_*`` environment variables;
``parse_args`` turns the same fields into command-line flags, and a flag wins over the
environment. Flags a process does not know are returned, for the engine's own parser.
"""

from __future__ import annotations

import argparse
import enum
import os
import tempfile
import types
import typing
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)


class DiscoveryBackend(str, enum.Enum):
    MEM = "mem"
    FILE = "file"
    ETCD = "etcd"


class RequestPlane(str, enum.Enum):
    TCP = "tcp"
    NATS = "nats"


def default_file_kv_root() -> str:
    return os.environ.get("DYN_FILE_KV") or os.path.join(tempfile.gettempdir(), "dynamo_store_kv")


class RuntimeSettings(BaseSettings):
    """Where processes meet: namespace, discovery and request plane."""

    model_config = SettingsConfigDict(env_prefix="DYN_", extra="ignore", use_enum_values=False)

    namespace: str = Field("dynamo", description="namespace this process serves or watches")
    discovery_backend: DiscoveryBackend = Field(
        DiscoveryBackend.FILE, description="where workers register: mem | file | etcd"
    )
    file_kv: str = Field(
        default_factory=default_file_kv_root, description="root directory of the file discovery backend"
    )
    lease_ttl: float = Field(5.0, gt=0, description="seconds a dead process's records outlive it")
    request_plane: RequestPlane = Field(RequestPlane.TCP, description="tcp | nats")
    etcd_endpoints: str = Field(
        "http://localhost:2379", validation_alias="ETCD_ENDPOINTS", description="etcd URLs, comma separated"
    )
    nats_server: str = Field("nats://localhost:4222", validation_alias="NATS_SERVER", description="NATS URL")
    log: str = Field("info", description="log levels, RUST_LOG syntax (info,dynamo.router=debug)")


#: flags accepted as older names of a field
ALIASES: dict[str, tuple[str, ...]] = {"discovery_backend": ("--store-kv",)}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def add_settings_arguments(parser: argparse.ArgumentParser, cls: type[BaseSettings]) -> None:
    """Add one flag per settings field; defaults are suppressed so unset flags fall back to env."""
    for name, field in cls.model_fields.items():
        kind = _base_type(field.annotation)
        flags = [_flag(name), *ALIASES.get(name, ())]
        env = (field.validation_alias if isinstance(field.validation_alias, str) else f"DYN_{name.upper()}")
        help_text = f"{field.description or ''} [env {env}]"
        if kind is bool:
            parser.add_argument(
                *flags, dest=name, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS,
                help=help_text,
            )
        elif isinstance(kind, type) and issubclass(kind, enum.Enum):
            parser.add_argument(
                *flags, dest=name, choices=[m.value for m in kind], default=argparse.SUPPRESS, help=help_text
            )
        else:
            conv = kind if kind in (int, float) else str
            parser.add_argument(*flags, dest=name, type=conv, default=argparse.SUPPRESS, help=help_text)


def parse_args(
    cls: type[S], argv: Sequence[str] | None, *, prog: str, description: str = "", allow_unknown: bool = False,
    extra: argparse.ArgumentParser | None = None,
) -> tuple[S, list[str], argparse.Namespace]:
    """Build ``cls`` from ``DYN_*`` env plus ``argv`` (flags win).

    Returns the settings, the flags nobody claimed (for an engine's own parser) and the parsed
    namespace (for the ``extra`` parser's flags).
    """
    parser = argparse.ArgumentParser(
        prog=prog, description=description, parents=[extra] if extra else [], allow_abbrev=False
    )
    add_settings_arguments(parser, cls)
    if allow_unknown:
        ns, rest = parser.parse_known_args(argv)
    else:
        ns, rest = parser.parse_args(argv), []
    values = {k: v for k, v in vars(ns).items() if k in cls.model_fields}
    return cls(**values), rest, ns
