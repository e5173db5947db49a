"""The public plugin API of Dynamo. Plugin authors import from here and nowhere else.

- ``hookimpl`` and the ``dynamo_engines`` hook (``hookspecs``) to offer engines;
- ``Engine``, ``EngineSpec``, ``EngineContext``: the engine contract;
- the request/response types (``GenerateRequest``, ``Delta``, ``Usage``, ``ModelInfo``, ...);
- the error vocabulary (``errors``);
- optional abilities (``capabilities``).
"""

from dynamo.plugin import errors
from dynamo.plugin.capabilities import (
    KvEvent,
    KvEventKind,
    KvEventSink,
    LoadMetrics,
    PublishesKvEvents,
    ReportsLoad,
)
from dynamo.plugin.engine import Engine, EngineContext, EngineSpec
from dynamo.plugin.errors import (
    DynamoError,
    EngineError,
    EngineShutdown,
    EngineUnavailable,
    InvalidRequest,
)
from dynamo.plugin.hookspecs import hookimpl
from dynamo.plugin.manager import PluginManager, plugin_manager
from dynamo.plugin.types import (
    Delta,
    FinishReason,
    GenerateRequest,
    ModelInfo,
    OutputOptions,
    SamplingOptions,
    StopConditions,
    Usage,
)

__all__ = [
    "errors",
    "hookimpl",
    "Engine",
    "EngineContext",
    "EngineSpec",
    "PluginManager",
    "plugin_manager",
    "GenerateRequest",
    "SamplingOptions",
    "StopConditions",
    "OutputOptions",
    "Delta",
    "FinishReason",
    "Usage",
    "ModelInfo",
    "LoadMetrics",
    "ReportsLoad",
    "KvEvent",
    "KvEventKind",
    "KvEventSink",
    "PublishesKvEvents",
    "DynamoError",
    "InvalidRequest",
    "EngineError",
    "EngineShutdown",
    "EngineUnavailable",
]
