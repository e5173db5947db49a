"""Registers the built-in mocker engine through the same hook as every third-party plugin."""

from __future__ import annotations

from dynamo.plugin import EngineContext, EngineSpec, hookimpl
from dynamo.plugin.engine import Engine


def _build(ctx: EngineContext) -> Engine:
    from dynamo.mocker.engine import MockerEngine

    return MockerEngine(ctx)


def _help() -> str:
    from dynamo.mocker.config import MockerConfig

    return MockerConfig.parser().format_help()


@hookimpl
def dynamo_engines() -> list[EngineSpec]:
    return [
        EngineSpec(
            name="mocker",
            factory=_build,
            description="simulated engine: deterministic tokens, realistic timing, no GPU",
            plugin="dynamo-core",
            help=_help,
        )
    ]
