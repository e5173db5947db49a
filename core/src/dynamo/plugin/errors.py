"""The one error vocabulary of Dynamo.

Engines and the runtime raise these; only the frontend turns them into HTTP status codes and
OpenAI error bodies (``dynamo.frontend.errors``), in one place.

    DynamoError
    ├── InvalidRequest          400  the request cannot be served as asked (bad field, prompt too long)
    ├── ModelNotFound           404  no worker serves the requested model
    ├── ServiceUnavailable      503  nothing can take the request right now
    │   ├── NoWorkersAvailable       no live worker for the model
    │   └── Overloaded               a worker or the frontend is at its limit (Retry-After)
    ├── EngineError             500  the engine failed while serving a request
    │   └── EngineShutdown           the engine is stopping; the request may be migrated
    ├── WorkerLost              502  a worker vanished mid-stream (no end-of-stream frame)
    │   └── WorkerUnreachable        the request never reached the worker (safe to resend)
    └── PluginError                  start-up problems with engine plugins (never per request)
        ├── EngineNotFound           ``--engine NAME`` names no installed engine
        ├── EngineConflict           two plugins claim the same engine name
        └── EngineUnavailable        the plugin is installed but its engine library is not
"""

from __future__ import annotations

__all__ = [
    "DynamoError",
    "InvalidRequest",
    "ModelNotFound",
    "ServiceUnavailable",
    "NoWorkersAvailable",
    "Overloaded",
    "EngineError",
    "EngineShutdown",
    "WorkerLost",
    "WorkerUnreachable",
    "PluginError",
    "EngineNotFound",
    "EngineConflict",
    "EngineUnavailable",
]


class DynamoError(Exception):
    """Base of every error Dynamo raises on purpose."""

    #: machine-readable code, carried across the request plane and into OpenAI error bodies
    code: str = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class InvalidRequest(DynamoError):
    """The request is malformed or asks for something the engine cannot do; ``param`` names the field."""

    code = "invalid_request"


class ModelNotFound(DynamoError):
    code = "model_not_found"


class ServiceUnavailable(DynamoError):
    code = "service_unavailable"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class NoWorkersAvailable(ServiceUnavailable):
    code = "no_workers"


class Overloaded(ServiceUnavailable):
    code = "overloaded"


class EngineError(DynamoError):
    """The engine failed while serving a request."""

    code = "engine_error"


class EngineShutdown(EngineError):
    """The engine is shutting down; the frontend may migrate the request to another worker."""

    code = "engine_shutdown"


class WorkerLost(DynamoError):
    """The stream from a worker ended without its end-of-stream frame (the worker died)."""

    code = "worker_lost"


class WorkerUnreachable(WorkerLost):
    """The worker could not be reached; the request was never delivered, so it can be resent."""

    code = "worker_unreachable"


class PluginError(DynamoError):
    code = "plugin_error"


class EngineNotFound(PluginError):
    code = "engine_not_found"


class EngineConflict(PluginError):
    code = "engine_conflict"


class EngineUnavailable(PluginError):
    """The plugin is installed but cannot start (usually: its engine library is missing)."""

    code = "engine_unavailable"


#: wire code -> class, used to rebuild errors that crossed the request plane
BY_CODE: dict[str, type[DynamoError]] = {
    cls.code: cls
    for cls in (
        DynamoError,
        InvalidRequest,
        ModelNotFound,
        ServiceUnavailable,
        NoWorkersAvailable,
        Overloaded,
        EngineError,
        EngineShutdown,
        WorkerLost,
        WorkerUnreachable,
    )
}


def from_code(code: str, message: str) -> DynamoError:
    """Rebuild an error from its wire code (unknown codes become ``EngineError``)."""
    return BY_CODE.get(code, EngineError)(message)
