"""The acme engine's flags, parsed from what the worker host hands the factory.

The worker host claims its own flags (``--model-path``, ``--model-name``, ``--kv-cache-block-size``)
and passes the rest (``EngineContext.argv``) to the engine untouched; those are parsed here. A bad
flag is a ``PluginError``, never an exit from inside the factory.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from dynamo.plugin import EngineContext, errors

DEFAULT_CONTEXT_LENGTH = 2048
DEFAULT_BLOCK_SIZE = 16


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise errors.PluginError(
            f"invalid acme flags: {message} (see python -m dynamo.worker --engine acme --help)"
        )


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m dynamo.worker --engine acme",
        add_help=False,
        description="Acme's n-gram engine: continues a prompt from the prompt's own bigrams.",
    )
    p.add_argument(
        "--context-length",
        type=int,
        help="prompt plus output tokens (default: the model's "
        f"max_position_embeddings, else {DEFAULT_CONTEXT_LENGTH})",
    )
    p.add_argument("--step-ms", type=float, default=0.0, help="milliseconds per generated token (default 0)")
    return p


@dataclass(frozen=True)
class AcmeConfig:
    model_path: str
    served_model_name: str
    context_length: int
    kv_block_size: int = DEFAULT_BLOCK_SIZE
    step_s: float = 0.0

    @classmethod
    def from_context(cls, ctx: EngineContext) -> AcmeConfig:
        flags = parser().parse_args(list(ctx.argv))
        if not ctx.model_path:
            raise errors.PluginError(
                "the acme engine needs --model-path DIR, the model whose tokenizer the frontend uses"
            )
        model = Path(ctx.model_path)
        context_length = flags.context_length or model_context_length(model) or DEFAULT_CONTEXT_LENGTH
        if context_length < 2 or flags.step_ms < 0:
            raise errors.PluginError("invalid acme flags: --context-length must be >= 2, --step-ms >= 0")
        return cls(
            model_path=str(model),
            served_model_name=ctx.model_name or model.name,
            context_length=context_length,
            kv_block_size=ctx.kv_block_size or DEFAULT_BLOCK_SIZE,
            step_s=flags.step_ms / 1000,
        )


def model_context_length(model: Path) -> int | None:
    """``max_position_embeddings`` from the model directory's ``config.json``, if it says."""
    try:
        value = json.loads((model / "config.json").read_text()).get("max_position_embeddings")
    except (OSError, ValueError, AttributeError):
        return None
    return int(value) if value else None
