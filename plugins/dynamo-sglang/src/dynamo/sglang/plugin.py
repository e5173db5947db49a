"""Registers the SGLang engine with Dynamo's plugin manager.

Importing this module must stay cheap: it runs whenever plugins are listed. sglang is imported by
the factory and by ``SglangEngine.start``, never here.
"""

from __future__ import annotations

from dynamo.plugin import Engine, EngineContext, EngineSpec, hookimpl

NAME = "sglang"


def build(ctx: EngineContext) -> Engine:
    """Parse SGLang's flags into ``ServerArgs`` and return an unstarted engine."""
    from dynamo.sglang.engine import SglangEngine

    return SglangEngine.from_context(ctx)


def engine_help() -> str:
    from dynamo.sglang.args import parser

    return parser().format_help()


@hookimpl
def dynamo_engines() -> list[EngineSpec]:
    return [
        EngineSpec(
            name=NAME,
            factory=build,
            description="SGLang in-process (sglang.Engine); every ServerArgs flag passes through",
            plugin="dynamo-sglang",
            help=engine_help,
        )
    ]
