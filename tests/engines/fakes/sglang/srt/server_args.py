"""Fake ``sglang.srt.server_args``: the ``ServerArgs`` dataclass and its argparse helpers.

Only the fields the Dynamo plugin and its tests touch, with SGLang 0.5.23's flag spellings and
defaults. As in 0.5.23, the fields keep what was given (``None`` for "auto"): the engine resolves the
defaults once (``resolve_once``) and the resolved values are read with ``resolved_dict()``.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


@dataclasses.dataclass
class ServerArgs:
    model_path: str
    tokenizer_path: str | None = None
    served_model_name: str | None = None
    context_length: int | None = None
    dtype: str = "auto"
    load_format: str = "auto"
    trust_remote_code: bool = False
    skip_tokenizer_init: bool = False
    mem_fraction_static: float | None = None
    max_running_requests: int | None = None
    max_total_tokens: int | None = None
    chunked_prefill_size: int | None = None
    page_size: int | None = None
    tp_size: int = 1
    dp_size: int = 1
    random_seed: int | None = None
    stream_interval: int = 1
    incremental_streaming_output: bool = False
    allow_auto_truncate: bool = False
    kv_events_config: str | None = None
    enable_metrics: bool = False
    disaggregation_mode: str = "null"
    log_level: str = "info"

    def resolve_once(self) -> None:
        if getattr(self, "_resolved", None) is not None:
            return
        resolved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        resolved["tokenizer_path"] = self.tokenizer_path or self.model_path
        resolved["served_model_name"] = self.served_model_name or self.model_path
        resolved["page_size"] = self.page_size or 1
        resolved["chunked_prefill_size"] = self.chunked_prefill_size or 4096
        self._resolved = resolved

    def resolved_dict(self) -> dict[str, Any]:
        if getattr(self, "_resolved", None) is None:
            raise RuntimeError("ServerArgs is not resolved yet")
        return dict(self._resolved)

    @staticmethod
    def add_cli_args(parser: argparse.ArgumentParser) -> None:
        add = parser.add_argument
        add("--model-path", "--model", type=str, required=True, help="The path of the model weights.")
        add("--tokenizer-path", type=str, default=ServerArgs.tokenizer_path)
        add("--served-model-name", type=str, default=ServerArgs.served_model_name)
        add("--context-length", type=int, default=ServerArgs.context_length)
        add("--dtype", type=str, default=ServerArgs.dtype)
        add(
            "--load-format",
            type=str,
            default=ServerArgs.load_format,
            choices=["auto", "pt", "safetensors", "dummy"],
        )
        add("--trust-remote-code", action="store_true")
        add("--skip-tokenizer-init", action="store_true")
        add("--mem-fraction-static", type=float, default=ServerArgs.mem_fraction_static)
        add("--max-running-requests", type=int, default=ServerArgs.max_running_requests)
        add("--max-total-tokens", type=int, default=ServerArgs.max_total_tokens)
        add("--chunked-prefill-size", type=int, default=ServerArgs.chunked_prefill_size)
        add("--page-size", type=int, default=ServerArgs.page_size)
        add("--tp-size", "--tensor-parallel-size", type=int, default=ServerArgs.tp_size)
        add("--dp-size", "--data-parallel-size", type=int, default=ServerArgs.dp_size)
        add("--random-seed", type=int, default=ServerArgs.random_seed)
        add("--stream-interval", type=int, default=ServerArgs.stream_interval)
        add("--incremental-streaming-output", action="store_true")
        add("--allow-auto-truncate", action="store_true")
        add("--kv-events-config", type=str, default=ServerArgs.kv_events_config)
        add("--enable-metrics", action="store_true")
        add("--disaggregation-mode", type=str, default="null", choices=["null", "prefill", "decode"])
        add("--log-level", type=str, default=ServerArgs.log_level)

    @classmethod
    def from_cli_args(cls, args: argparse.Namespace) -> ServerArgs:
        names = [f.name for f in dataclasses.fields(cls) if hasattr(args, f.name)]
        return cls(**{name: getattr(args, name) for name in names})
