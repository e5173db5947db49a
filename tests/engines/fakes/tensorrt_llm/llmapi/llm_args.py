"""Fake ``tensorrt_llm.llmapi.llm_args``: ``KvCacheConfig``, ``SchedulerConfig`` and the accepted
``LLM`` keyword arguments (a subset of ``TorchLlmArgs``' fields)."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass
class KvCacheConfig:
    enable_block_reuse: bool = True
    max_tokens: int | None = None
    max_attention_window: list | None = None
    sink_token_length: int | None = None
    free_gpu_memory_fraction: float | None = 0.9
    host_cache_size: int | None = None
    onboard_blocks: bool = True
    cross_kv_cache_fraction: float | None = None
    secondary_offload_min_priority: int | None = None
    event_buffer_max_size: int = 0
    attention_dp_events_gather_period_ms: int = 5
    enable_partial_reuse: bool = True
    copy_on_partial_reuse: bool = True
    use_uvm: bool = False
    dtype: str = "auto"
    tokens_per_block: int = 32


@dataclasses.dataclass
class SchedulerConfig:
    capacity_scheduler_policy: str = "GUARANTEED_NO_EVICT"
    context_chunking_policy: str | None = None


@dataclasses.dataclass
class TorchLlmArgs:
    model: str
    tokenizer: Any = None
    tokenizer_mode: str = "auto"
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    moe_expert_parallel_size: int | None = None
    gpus_per_node: int | None = None
    enable_attention_dp: bool = False
    dtype: str = "auto"
    revision: str | None = None
    tokenizer_revision: str | None = None
    backend: str | None = "pytorch"
    load_format: str = "auto"
    kv_cache_config: KvCacheConfig = dataclasses.field(default_factory=KvCacheConfig)
    scheduler_config: SchedulerConfig = dataclasses.field(default_factory=SchedulerConfig)
    max_batch_size: int | None = 2048
    max_num_tokens: int | None = 8192
    max_seq_len: int | None = None
    max_beam_width: int = 1
    enable_chunked_prefill: bool = False
    enable_iter_perf_stats: bool = False
    return_perf_metrics: bool = False
    guided_decoding_backend: str | None = None
    stream_interval: int = 1
    num_postprocess_workers: int = 0

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> TorchLlmArgs:
        args = cls(**kwargs)
        if isinstance(args.kv_cache_config, dict):  # pydantic coerces dicts in TensorRT-LLM
            args.kv_cache_config = KvCacheConfig(**args.kv_cache_config)
        if isinstance(args.scheduler_config, dict):
            args.scheduler_config = SchedulerConfig(**args.scheduler_config)
        return args

    @classmethod
    def field_names(cls) -> set:
        return {f.name for f in dataclasses.fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
