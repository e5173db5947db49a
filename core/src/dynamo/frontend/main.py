"""``python -m dynamo.frontend``: the OpenAI-compatible HTTP frontend."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from pydantic import SecretStr

from dynamo.frontend.settings import FrontendSettings
from dynamo.runtime.logging import configure_logging
from dynamo.runtime.settings import parse_args

log = logging.getLogger("dynamo.frontend")


def main(argv: Sequence[str] | None = None) -> None:
    settings, _, _ = parse_args(
        FrontendSettings, list(sys.argv[1:] if argv is None else argv), prog="python -m dynamo.frontend",
        description="OpenAI-compatible HTTP frontend: routes requests to Dynamo workers.",
    )
    configure_logging(settings.log)
    import uvicorn

    log.info(
        "frontend on http://%s:%d (router %s, discovery %s, request plane %s, namespace %s, %d process%s)",
        settings.http_host, settings.http_port, settings.router_mode.value, settings.discovery_backend.value,
        settings.request_plane.value, settings.namespace, settings.http_workers,
        "" if settings.http_workers == 1 else "es",
    )
    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    common: dict[str, Any] = dict(
        host=settings.http_host, port=settings.http_port, log_level="warning", access_log=False, loop=loop,
        http="auto", timeout_graceful_shutdown=settings.graceful_shutdown_timeout, log_config=None,
    )
    if settings.http_workers > 1:
        # each process runs its own discovery watcher, router and request-plane connections;
        # they share the listening socket, and the kernel spreads connections over them
        os.environ[SETTINGS_ENV] = settings_json(settings)
        uvicorn.run("dynamo.frontend.main:app_factory", factory=True, workers=settings.http_workers, **common)
    else:
        uvicorn.run(make_app(settings), **common)


SETTINGS_ENV = "DYN_FRONTEND_SETTINGS_JSON"


def settings_json(settings: FrontendSettings) -> str:
    """The settings for the child processes, secrets (``--api-key``) in clear: pydantic would
    write them as ``**********``. They travel in the environment, as ``DYN_API_KEY`` would."""
    data = settings.model_dump(mode="json")
    for name in type(settings).model_fields:
        value = getattr(settings, name)
        if isinstance(value, SecretStr):
            data[name] = value.get_secret_value()
    return json.dumps(data)


def make_app(settings: FrontendSettings) -> Any:
    from dynamo.frontend.app import build_app

    app: Any = build_app(settings)
    if settings.max_inflight_requests:
        from dynamo.frontend.admission import AdmissionControl

        # per process: with N processes the frontend admits up to N x the limit
        app = AdmissionControl(app, settings.max_inflight_requests)
    return app


def app_factory() -> object:
    """The app of one process of a multi-process frontend (settings come from the parent)."""
    settings = FrontendSettings.model_validate_json(os.environ[SETTINGS_ENV])
    configure_logging(settings.log)
    return make_app(settings)


if __name__ == "__main__":
    main()
