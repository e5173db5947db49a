"""vLLM engine arguments from a command line, parsed by vLLM's own parser.

Every ``AsyncEngineArgs`` flag passes through untouched (``--gpu-memory-utilization``,
``--max-num-seqs``, ``--enable-prefix-caching``, ``--block-size``, ``--tensor-parallel-size``,
``--kv-events-config``, ...). On top of them:

- Dynamo's ``--model-path DIR`` means vLLM's ``--model DIR`` and ``--model-name NAME`` means
  ``--served-model-name NAME`` (also when the worker host already took them off the command line and
  handed them over in ``EngineContext``); ``--kv-cache-block-size N`` means ``--block-size N``.
- Defaults that differ from vLLM's, as Dynamo has them: prefix caching on when not set either way,
  stats on (load metrics come from them), and KV events published over ZMQ on a private ``ipc://``
  address unless the user gave ``--kv-events-config`` (the worker bridges them to the router).

vLLM is imported inside these functions, never at module import.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dynamo.plugin.errors import PluginError

if TYPE_CHECKING:  # pragma: no cover
    from vllm.engine.arg_utils import AsyncEngineArgs

__all__ = ["VllmArgs", "translate_argv", "build_engine_args", "engine_help", "KV_EVENTS_TOPIC"]

#: the ZMQ topic of the KV-event publisher we configure ourselves
KV_EVENTS_TOPIC = "kv"

# Dynamo flag -> vLLM flag
_ALIASES = {
    "--model-path": "--model",
    "--model-name": "--served-model-name",
    "--kv-cache-block-size": "--block-size",
}


@dataclass
class VllmArgs:
    """The parsed engine arguments plus what Dynamo decided on top of them."""

    engine_args: AsyncEngineArgs
    #: True when we turned on vLLM's KV-event publisher ourselves (the user gave no config)
    kv_events_auto: bool = False
    #: a directory we created for ``ipc://`` endpoints; removed when the engine closes
    ipc_dir: str | None = None
    #: the flags as vLLM saw them (after translation), for logs
    argv: list[str] = field(default_factory=list)


def _flag_given(argv: Sequence[str], *names: str) -> bool:
    """Whether any of ``names`` (``--flag``, ``--flag=value``, underscores too) is on ``argv``."""
    pats = [re.compile("^" + re.escape(n).replace("\\-", "[-_]") + "(=|$)") for n in names]
    return any(p.match(a) for a in argv for p in pats)


def translate_argv(
    argv: Sequence[str],
    *,
    model_path: str | None = None,
    model_name: str | None = None,
    kv_block_size: int | None = None,
) -> list[str]:
    """Rename Dynamo's flags to vLLM's and add the ones the worker host handed over separately."""
    out: list[str] = []
    for arg in argv:
        head, eq, value = arg.partition("=")
        norm = head.replace("_", "-")
        if norm in _ALIASES and head.startswith("--"):
            out.append(_ALIASES[norm] + (eq + value if eq else ""))
        else:
            out.append(arg)
    if model_path and not _flag_given(out, "--model"):
        out += ["--model", model_path]
    if model_name and not _flag_given(out, "--served-model-name"):
        out += ["--served-model-name", model_name]
    if kv_block_size and not _flag_given(out, "--block-size"):
        out += ["--block-size", str(kv_block_size)]
    return out


def _parser() -> Any:
    """vLLM's ``FlexibleArgumentParser`` with every ``AsyncEngineArgs`` flag, raising instead of exiting."""
    try:
        from vllm.utils.argparse_utils import FlexibleArgumentParser
    except ImportError:  # older vLLM
        from vllm.utils import FlexibleArgumentParser  # type: ignore[attr-defined,no-redef]
    from vllm.engine.arg_utils import AsyncEngineArgs

    class _Parser(FlexibleArgumentParser):  # type: ignore[misc,valid-type]
        def error(self, message: str) -> Any:  # argparse would print usage and sys.exit(2)
            raise PluginError(f"invalid vLLM engine arguments: {message} (see --help for vLLM's flags)")

        def exit(self, status: int = 0, message: str | None = None) -> Any:
            if status:
                raise PluginError(f"invalid vLLM engine arguments: {message or status}")
            raise SystemExit(status)  # --help

    parser = _Parser(prog="python -m dynamo.vllm", description="vLLM engine flags (AsyncEngineArgs)")
    return AsyncEngineArgs.add_cli_args(parser)


def engine_help() -> str:
    """vLLM's own ``--help`` text for the engine flags (the plugin's ``EngineSpec.help``)."""
    aliases = (
        "Dynamo aliases: --model-path DIR = --model DIR; --model-name NAME = --served-model-name NAME; "
        "--kv-cache-block-size N = --block-size N.\n\n"
    )
    return aliases + _parser().format_help()


def _kv_events_config(engine_args: Any) -> tuple[Any, str | None]:
    """A ZMQ publisher on private addresses: ``ipc://`` for one rank, loopback-reachable TCP for DP."""
    from vllm.config import KVEventsConfig

    dp = int(getattr(engine_args, "data_parallel_size", 1) or 1)
    if dp == 1:
        ipc_dir = tempfile.mkdtemp(prefix="dynamo-vllm-")
        return (
            KVEventsConfig(
                enable_kv_cache_events=True,
                publisher="zmq",
                endpoint=f"ipc://{ipc_dir}/kv-events",
                replay_endpoint=f"ipc://{ipc_dir}/kv-replay",
                topic=KV_EVENTS_TOPIC,
            ),
            ipc_dir,
        )
    # vLLM offsets a tcp port by the DP rank (and refuses ipc:// for ranks > 0)
    base = _free_port_block(2 * dp)
    return (
        KVEventsConfig(
            enable_kv_cache_events=True,
            publisher="zmq",
            endpoint=f"tcp://*:{base}",
            replay_endpoint=f"tcp://*:{base + dp}",
            topic=KV_EVENTS_TOPIC,
        ),
        None,
    )


def _free_port_block(n: int) -> int:
    import socket

    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n >= 65535:
            continue
        ok = True
        for port in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise PluginError(f"no block of {n} free TCP ports for vLLM's KV-event publisher")


def build_engine_args(
    argv: Sequence[str] = (),
    *,
    model_path: str | None = None,
    model_name: str | None = None,
    kv_block_size: int | None = None,
    kv_events: bool = True,
) -> VllmArgs:
    """Parse ``argv`` (Dynamo or vLLM spelling) into ``AsyncEngineArgs`` with Dynamo's defaults.

    Raises ``PluginError`` for flags vLLM does not know or values it rejects.
    """
    from vllm.engine.arg_utils import AsyncEngineArgs

    args = translate_argv(argv, model_path=model_path, model_name=model_name, kv_block_size=kv_block_size)
    if not _flag_given(args, "--model", "--config"):
        raise PluginError("no model given: pass --model-path DIR (or vLLM's --model NAME_OR_DIR)")
    ns = _parser().parse_args(args)
    engine_args = AsyncEngineArgs.from_cli_args(ns)

    # Dynamo's defaults (components/src/dynamo/vllm/args.py does the same)
    if engine_args.enable_prefix_caching is None:
        engine_args.enable_prefix_caching = True
    engine_args.skip_tokenizer_init = False  # newer vLLM needs the tokenizer in update_from_tokenizer

    result = VllmArgs(engine_args=engine_args, argv=args)
    if (
        kv_events
        and engine_args.kv_events_config is None
        and engine_args.enable_prefix_caching
        and os.environ.get("DYN_VLLM_KV_EVENTS", "1").lower() not in ("0", "false", "off", "no")
    ):
        engine_args.kv_events_config, result.ipc_dir = _kv_events_config(engine_args)
        result.kv_events_auto = True
    return result
