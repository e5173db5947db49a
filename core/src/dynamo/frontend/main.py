"""``python -m dynamo.frontend``: the OpenAI-compatible HTTP frontend."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

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

    from dynamo.frontend.app import build_app

    app: object = build_app(settings)
    if settings.max_inflight_requests:
        from dynamo.frontend.admission import AdmissionControl

        app = AdmissionControl(app, settings.max_inflight_requests)
    log.info(
        "frontend on http://%s:%d (router %s, discovery %s, request plane %s, namespace %s)",
        settings.http_host, settings.http_port, settings.router_mode.value, settings.discovery_backend.value,
        settings.request_plane.value, settings.namespace,
    )
    loop = "uvloop"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        loop = "asyncio"
    uvicorn.run(
        app, host=settings.http_host, port=settings.http_port, log_level="warning", access_log=False,
        loop=loop, http="auto", timeout_graceful_shutdown=settings.graceful_shutdown_timeout, log_config=None,
    )


if __name__ == "__main__":
    main()
