"""Registers the TensorRT-LLM engine with Dynamo's plugin manager.

Importing this module must stay cheap: it runs whenever plugins are listed. tensorrt_llm is imported
by the factory and by ``TrtllmEngine.start``, never here.
"""

from __future__ import annotations

from dynamo.plugin import Engine, EngineContext, EngineSpec, hookimpl

NAME = "trtllm"


def build(ctx: EngineContext) -> Engine:
    """Check that TensorRT-LLM imports, read the flags, return an unstarted engine."""
    from dynamo.trtllm.args import TrtllmConfig, require_tensorrt_llm
    from dynamo.trtllm.engine import TrtllmEngine

    require_tensorrt_llm()
    return TrtllmEngine(TrtllmConfig.from_context(ctx))


def engine_help() -> str:
    from dynamo.trtllm.args import parser

    return parser().format_help()


@hookimpl
def dynamo_engines() -> list[EngineSpec]:
    return [
        EngineSpec(
            name=NAME,
            factory=build,
            description="TensorRT-LLM in-process (LLM API, PyTorch backend)",
            plugin="dynamo-trtllm",
            help=engine_help,
        )
    ]
