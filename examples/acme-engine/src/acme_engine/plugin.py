"""Registers the acme engine with Dynamo: the module the ``dynamo`` entry point names.

Dynamo imports it whenever plugins are listed (``python -m dynamo.worker --list-engines``), so it
stays cheap: the engine is imported inside the factory, as a GPU engine's library would be.
"""

from __future__ import annotations

from dynamo.plugin import Engine, EngineContext, EngineSpec, hookimpl

NAME = "acme"


def build(ctx: EngineContext) -> Engine:
    """Parse the flags and return an unstarted engine (``start`` is the worker host's to call)."""
    from acme_engine.config import AcmeConfig
    from acme_engine.engine import AcmeEngine

    return AcmeEngine(AcmeConfig.from_context(ctx))


def engine_help() -> str:
    from acme_engine.config import parser

    return parser().format_help()


@hookimpl
def dynamo_engines() -> list[EngineSpec]:
    return [
        EngineSpec(
            name=NAME,
            factory=build,
            description="Acme's n-gram engine: continues a prompt from its own bigrams (no GPU)",
            plugin="acme-dynamo-engine",
            help=engine_help,
        )
    ]
