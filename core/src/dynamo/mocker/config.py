"""The mocker's own flags (Dynamo's names), parsed from the argv the worker host passes on."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

DEFAULT_MODEL_PATH = str(Path(__file__).resolve().parent / "model")


@dataclass(frozen=True)
class MockerConfig:
    speedup_ratio: float = 1.0
    decode_speedup_ratio: float = 1.0
    block_size: int = 16
    num_gpu_blocks_override: int = 16384
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    enable_prefix_caching: bool = True
    #: share of KV blocks kept free when admitting new requests (vLLM's watermark)
    watermark: float = 0.01
    #: tokens a response runs to before its natural end-of-sequence, unless the seed says otherwise
    min_output_len: int = 16
    max_output_len: int = 256
    startup_time: float = 0.0

    @classmethod
    def parser(cls) -> argparse.ArgumentParser:
        p = argparse.ArgumentParser(prog="mocker engine flags", add_help=False)
        p.add_argument("--speedup-ratio", type=float, default=cls.speedup_ratio,
                       help="divide every simulated duration by this (1e6: effectively free)")
        p.add_argument("--decode-speedup-ratio", type=float, default=cls.decode_speedup_ratio,
                       help="an extra divisor for decode steps only")
        p.add_argument("--block-size", type=int, default=None, help="KV block size in tokens (default 16)")
        p.add_argument("--num-gpu-blocks-override", type=int, default=cls.num_gpu_blocks_override,
                       help="simulated KV cache size in blocks")
        p.add_argument("--max-num-seqs", type=int, default=cls.max_num_seqs,
                       help="most requests running at once (more wait)")
        p.add_argument("--max-num-batched-tokens", type=int, default=cls.max_num_batched_tokens,
                       help="token budget of one scheduler step (prefill is chunked to fit)")
        p.add_argument(
            "--enable-prefix-caching",
            action=argparse.BooleanOptionalAction,
            default=cls.enable_prefix_caching,
            help="reuse cached prompt prefixes (KV events need it)",
        )
        p.add_argument(
            "--watermark",
            type=float,
            default=cls.watermark,
            help="share of KV blocks kept free when admitting a new request",
        )
        p.add_argument("--min-output-len", type=int, default=cls.min_output_len)
        p.add_argument("--max-output-len", type=int, default=cls.max_output_len)
        p.add_argument(
            "--startup-time",
            type=float,
            default=cls.startup_time,
            help="simulated model loading time in seconds",
        )
        return p

    @classmethod
    def from_argv(cls, argv: Sequence[str], kv_block_size: int | None = None) -> MockerConfig:
        ns = cls.parser().parse_args(list(argv))
        values = {f.name: getattr(ns, f.name) for f in fields(cls)}
        values["block_size"] = ns.block_size or kv_block_size or cls.block_size
        if values["speedup_ratio"] <= 0 or values["decode_speedup_ratio"] <= 0:
            raise ValueError("--speedup-ratio and --decode-speedup-ratio must be > 0")
        if values["block_size"] <= 0 or values["num_gpu_blocks_override"] <= 0:
            raise ValueError("--block-size and --num-gpu-blocks-override must be > 0")
        if values["max_num_seqs"] <= 0 or values["max_num_batched_tokens"] <= 0:
            raise ValueError("--max-num-seqs and --max-num-batched-tokens must be > 0")
        if not 0 <= values["watermark"] < 1:
            raise ValueError("--watermark must be in [0, 1)")
        if values["min_output_len"] > values["max_output_len"]:
            raise ValueError("--min-output-len must not exceed --max-output-len")
        return cls(**values)
