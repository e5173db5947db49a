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

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)


class DiscoveryBackend(str, enum.Enum):
    MEM = "mem"
    FILE = "file"
    ETCD = "etcd"


class RequestPlane(str, enum.Enum):
    TCP = "tcp"
    NATS = "nats"


class EventPlane(str, enum.Enum):
    DIRECT = "direct"  # each worker serves its events on a TCP port; no infrastructure
    NATS = "nats"


def default_file_kv_root() -> str:
    return os.environ.get("DYN_FILE_KV") or os.path.join(tempfile.gettempdir(), "dynamo_store_kv")


class RuntimeSettings(BaseSettings):
    """Where processes meet: namespace, discovery and request plane."""

    model_config = SettingsConfigDict(env_prefix="DYN_", extra="ignore", use_enum_values=False, populate_by_name=True)

    namespace: str = Field("dynamo", description="namespace this process serves or watches")
    discovery_backend: DiscoveryBackend = Field(
        DiscoveryBackend.FILE, description="where workers register: mem | file | etcd"
    )
    file_kv: str = Field(
        default_factory=default_file_kv_root, description="root directory of the file discovery backend"
    )
    lease_ttl: float = Field(5.0, gt=0, description="seconds a dead process's records outlive it")
    request_plane: RequestPlane = Field(RequestPlane.TCP, description="tcp | nats")
    event_plane: EventPlane = Field(
        EventPlane.DIRECT, description="how KV events and load metrics travel: direct (no infrastructure) | nats"
    )
    etcd_endpoints: str = Field(
        "http://localhost:2379", validation_alias="ETCD_ENDPOINTS", description="etcd URLs, comma separated"
    )
    etcd_auth_username: str | None = Field(
        None, validation_alias="ETCD_AUTH_USERNAME", description="etcd user (auth enabled on etcd)"
    )
    etcd_auth_password: SecretStr | None = Field(
        None, validation_alias="ETCD_AUTH_PASSWORD",
        description="etcd password (prefer the env var to the flag)",
    )
    etcd_auth_ca: str | None = Field(
        None, validation_alias="ETCD_AUTH_CA", description="CA certificate (PEM) verifying etcd's TLS"
    )
    etcd_auth_client_cert: str | None = Field(
        None, validation_alias="ETCD_AUTH_CLIENT_CERT", description="client certificate (PEM) for etcd mTLS"
    )
    etcd_auth_client_key: str | None = Field(
        None, validation_alias="ETCD_AUTH_CLIENT_KEY", description="client private key (PEM) for etcd mTLS"
    )
    nats_server: str = Field(
        "nats://localhost:4222", validation_alias="NATS_SERVER", description="NATS URL(s), comma separated"
    )
    nats_auth_username: str | None = Field(
        None, validation_alias="NATS_AUTH_USERNAME", description="NATS user"
    )
    nats_auth_password: SecretStr | None = Field(
        None, validation_alias="NATS_AUTH_PASSWORD",
        description="NATS password (prefer the env var to the flag)",
    )
    nats_auth_token: SecretStr | None = Field(
        None, validation_alias="NATS_AUTH_TOKEN", description="NATS token"
    )
    nats_auth_credentials_file: str | None = Field(
        None, validation_alias="NATS_AUTH_CREDENTIALS_FILE", description="NATS .creds file (JWT + nkey seed)"
    )
    nats_tls_ca_cert_path: str | None = Field(
        None, validation_alias="NATS_TLS_CA_CERT_PATH", description="CA certificate (PEM) for NATS TLS"
    )
    nats_tls_cert_path: str | None = Field(
        None, validation_alias="NATS_TLS_CERT_PATH", description="client certificate (PEM) for NATS mTLS"
    )
    nats_tls_key_path: str | None = Field(
        None, validation_alias="NATS_TLS_KEY_PATH", description="client private key (PEM) for NATS mTLS"
    )
    nats_stream_heartbeat: float = Field(
        1.0, gt=0, description="NATS request plane: a worker marks a silent stream alive this often (s)"
    )
    nats_stream_timeout: float = Field(
        5.0, gt=0, description="NATS request plane: a stream silent this long fails with WorkerLost (s)"
    )
    log: str = Field("info", description="log levels, RUST_LOG syntax (info,dynamo.router=debug)")


#: flags accepted as older names of a field
ALIASES: dict[str, tuple[str, ...]] = {
    "discovery_backend": ("--store-kv",),
    "router_kv_overlap_score_credit": ("--kv-overlap-score-weight", "--router-kv-overlap-score-weight"),
    "router_kv_events": ("--kv-events",),
    "router_ttl_secs": ("--router-ttl",),
}


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


def build_parser(
    cls: type[BaseSettings], *, prog: str, description: str = "", extra: argparse.ArgumentParser | None = None,
    add_help: bool = True, epilog: str | None = None,
) -> argparse.ArgumentParser:
    """The command-line parser of ``cls``: one flag per field (plus ``extra``'s flags)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=description, parents=[extra] if extra else [], allow_abbrev=False,
        add_help=add_help, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_arguments(parser, cls)
    return parser


def parse_args(
    cls: type[S], argv: Sequence[str] | None, *, prog: str, description: str = "", allow_unknown: bool = False,
    extra: argparse.ArgumentParser | None = None,
) -> tuple[S, list[str], argparse.Namespace]:
    """Build ``cls`` from ``DYN_*`` env plus ``argv`` (flags win).

    Returns the settings, the flags nobody claimed (for an engine's own parser) and the parsed
    namespace (for the ``extra`` parser's flags).
    """
    parser = build_parser(cls, prog=prog, description=description, extra=extra)
    if allow_unknown:
        ns, rest = parser.parse_known_args(argv)
    else:
        ns, rest = parser.parse_args(argv), []
    values = {k: v for k, v in vars(ns).items() if k in cls.model_fields}
    return cls(**values), rest, ns
