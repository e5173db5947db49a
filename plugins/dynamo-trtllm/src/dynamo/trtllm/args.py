"""The TensorRT-LLM worker's flags and the ``LLM(...)`` keyword arguments they make.

The LLM API has no argument parser of its own, so this module has one, with Dynamo's flag names.
``--extra-engine-args`` names a YAML file of ``LLM`` keyword arguments (nested, as ``trtllm-serve``'s
``--extra_llm_api_options``). Precedence: explicit flags, then the YAML file, then the defaults.
KV cache events are on by default where block reuse is (``kv_cache_config.event_buffer_max_size``,
the size Dynamo sets, for KV-aware routing); the YAML file may set the size, 0 turns them off, and so
does ``DYN_TRTLLM_KV_EVENTS=0``.
Nested sections such as ``kv_cache_config`` stay plain dicts here; ``TrtllmEngine.start`` turns them
into TensorRT-LLM's classes, so this module never imports tensorrt_llm (``require_tensorrt_llm`` does).
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

from dynamo.plugin import EngineContext, errors

INSTALL_HINT = "pip install dynamo-trtllm"
#: LLM keyword arguments before the YAML file and the flags
DEFAULTS: dict[str, Any] = {
    "backend": "pytorch",
    "enable_iter_perf_stats": True,  # get_stats_async feeds load_metrics
    "kv_cache_config": {},
}
DEFAULT_TOKENS_PER_BLOCK = 32  # TensorRT-LLM's KvCacheConfig default
#: KV cache events kept for the plugin to read (Dynamo's value); 0 = no events
DEFAULT_EVENT_BUFFER_MAX_SIZE = 100_000


def require_tensorrt_llm() -> None:
    """Raise ``EngineUnavailable`` (one line) unless TensorRT-LLM imports."""
    try:
        import tensorrt_llm  # noqa: F401
    except (ImportError, OSError) as exc:  # OSError: the wheel is there, its CUDA/MPI libraries are not
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise errors.EngineUnavailable(
            f"the trtllm engine needs TensorRT-LLM, which could not be imported ({reason}); "
            f"install it with: {INSTALL_HINT}"
        ) from exc


class _Parser(argparse.ArgumentParser):
    """A bad flag is a ``PluginError``, not an exit from inside a factory."""

    def error(self, message: str) -> NoReturn:
        raise errors.PluginError(f"invalid trtllm flags: {message} (see python -m dynamo.trtllm --help)")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="python -m dynamo.trtllm", description="Serve a model with TensorRT-LLM in a Dynamo worker."
    )
    add = p.add_argument
    add("--model-path", "--model", dest="model", help="model directory or Hugging Face id")
    add("--served-model-name", "--model-name", dest="served_model_name", help="the name clients use")
    add("--extra-engine-args", metavar="YAML", help="a YAML file of LLM(...) keyword arguments")
    add(
        "--free-gpu-memory-fraction", type=float, help="GPU memory share for the KV cache (TensorRT-LLM: 0.9)"
    )
    add(
        "--kv-block-size", "--tokens-per-block", dest="tokens_per_block", type=int, help="tokens per KV block"
    )
    add("--max-num-tokens", type=int, help="tokens per engine step")
    add("--max-batch-size", type=int, help="requests per engine step")
    add("--max-seq-len", type=int, help="prompt plus output tokens (default: the model's)")
    add("--tensor-parallel-size", "--tp-size", "--tp", dest="tensor_parallel_size", type=int)
    add("--pipeline-parallel-size", "--pp-size", "--pp", dest="pipeline_parallel_size", type=int)
    add("--trust-remote-code", action="store_true", default=None)
    return p


@dataclass(frozen=True)
class TrtllmConfig:
    """What ``TrtllmEngine`` builds ``LLM(model=model, **llm_kwargs)`` from."""

    model: str
    served_model_name: str | None = None
    llm_kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_context(cls, ctx: EngineContext) -> TrtllmConfig:
        ns = parser().parse_args(list(ctx.argv))
        model = ns.model or ctx.model_path
        if not model:
            raise errors.PluginError("invalid trtllm flags: --model-path is required")
        kwargs = deep_merge(DEFAULTS, read_yaml(ns.extra_engine_args) if ns.extra_engine_args else {})
        kv = dict(kwargs.get("kv_cache_config") or {})
        flags = {
            "max_num_tokens": ns.max_num_tokens,
            "max_batch_size": ns.max_batch_size,
            "max_seq_len": ns.max_seq_len,
            "tensor_parallel_size": ns.tensor_parallel_size,
            "pipeline_parallel_size": ns.pipeline_parallel_size,
            "trust_remote_code": ns.trust_remote_code,
        }
        kwargs.update({k: v for k, v in flags.items() if v is not None})
        if ns.free_gpu_memory_fraction is not None:
            kv["free_gpu_memory_fraction"] = ns.free_gpu_memory_fraction
        tokens_per_block = ns.tokens_per_block or ctx.kv_block_size  # the worker's --kv-cache-block-size
        if tokens_per_block:
            kv["tokens_per_block"] = tokens_per_block
        if kv_events_wanted() and kv.get("enable_block_reuse", True):  # no reuse, no events
            kv.setdefault("event_buffer_max_size", DEFAULT_EVENT_BUFFER_MAX_SIZE)
        kwargs["kv_cache_config"] = kv
        kwargs.pop("model", None)
        return cls(
            model=str(model), served_model_name=ns.served_model_name or ctx.model_name, llm_kwargs=kwargs
        )

    @property
    def tokens_per_block(self) -> int:
        return int(self.llm_kwargs["kv_cache_config"].get("tokens_per_block") or DEFAULT_TOKENS_PER_BLOCK)

    @property
    def kv_events(self) -> bool:
        """Whether TensorRT-LLM reports KV cache events: an event buffer and block reuse."""
        kv = self.llm_kwargs["kv_cache_config"]
        return int(kv.get("event_buffer_max_size") or 0) > 0 and bool(kv.get("enable_block_reuse", True))


def kv_events_wanted() -> bool:
    return os.environ.get("DYN_TRTLLM_KV_EVENTS", "1").lower() not in ("0", "false", "off", "no")


def read_yaml(path: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise errors.PluginError(f"--extra-engine-args {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise errors.PluginError(f"--extra-engine-args {path}: expected a mapping of LLM arguments")
    return data


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``override``; nested mappings merge instead of being replaced."""
    merged = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
