"""From the worker's context to SGLang's ``ServerArgs``, through SGLang's own argument parser.

SGLang's flags pass through untouched; Dynamo's ``--model-path``, ``--model-name`` and
``--kv-cache-block-size`` (which the worker host may have claimed) become SGLang's ``--model-path``,
``--served-model-name`` and ``--page-size`` unless the SGLang spelling is given too. Two settings are
forced, on the namespace before ``ServerArgs.from_cli_args`` resolves it (``ServerArgs`` is read-only
afterwards): incremental streaming output (Dynamo streams disjoint deltas) and skipping SGLang's
tokenizer (the frontend tokenizes; only token ids cross the engine seam).

sglang is imported inside the functions; a missing library raises ``EngineUnavailable``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any, NoReturn

from dynamo.plugin import EngineContext, errors

INSTALL_HINT = "pip install dynamo-sglang"
#: Dynamo's spelling -> SGLang's
RENAMED_FLAGS = {"--model-name": "--served-model-name"}


def require_sglang() -> None:
    """Raise ``EngineUnavailable`` (one line) unless SGLang imports."""
    try:
        import sglang.srt.server_args  # noqa: F401
    except ImportError as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise errors.EngineUnavailable(
            f"the sglang engine needs the SGLang library, which could not be imported ({reason}); "
            f"install it with: {INSTALL_HINT}"
        ) from exc


class _Parser(argparse.ArgumentParser):
    """SGLang's flags; a bad flag is a ``PluginError``, not an exit from inside a factory."""

    def error(self, message: str) -> NoReturn:
        raise errors.PluginError(f"invalid sglang flags: {message} (see python -m dynamo.sglang --help)")


def parser() -> argparse.ArgumentParser:
    require_sglang()
    from sglang.srt.server_args import ServerArgs

    p = _Parser(prog="python -m dynamo.sglang", description="Serve a model with SGLang in a Dynamo worker.")
    ServerArgs.add_cli_args(p)
    return p


def has_flag(argv: Sequence[str], *flags: str) -> bool:
    return any(arg == flag or arg.startswith(flag + "=") for arg in argv for flag in flags)


def rename(arg: str) -> str:
    name, sep, value = arg.partition("=")
    return RENAMED_FLAGS.get(name, name) + sep + value


def engine_argv(ctx: EngineContext) -> list[str]:
    """SGLang's command line: the flags the worker host left, plus what it claimed."""
    argv = [rename(arg) for arg in ctx.argv]
    if ctx.model_path and not has_flag(argv, "--model-path", "--model"):
        argv += ["--model-path", ctx.model_path]
    if ctx.model_name and not has_flag(argv, "--served-model-name"):
        argv += ["--served-model-name", ctx.model_name]
    if ctx.kv_block_size and not has_flag(argv, "--page-size"):
        argv += ["--page-size", str(ctx.kv_block_size)]
    return argv


def server_args(ctx: EngineContext) -> Any:
    """SGLang's ``ServerArgs`` for this worker."""
    namespace = parser().parse_args(engine_argv(ctx))
    from sglang.srt.server_args import ServerArgs

    # older releases call incremental streaming "stream_output"
    streaming = "incremental_streaming_output"
    setattr(namespace, streaming if hasattr(namespace, streaming) else "stream_output", True)
    namespace.skip_tokenizer_init = True
    return ServerArgs.from_cli_args(namespace)
