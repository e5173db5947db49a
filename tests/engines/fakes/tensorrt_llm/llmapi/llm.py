"""Fake ``tensorrt_llm.llmapi.llm``: ``LLM`` (the PyTorch-backend ``_TorchLLM``) and ``RequestOutput``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal

from tensorrt_llm.executor.executor import ToyExecutor
from tensorrt_llm.executor.result import GenerationResult, IterationResult
from tensorrt_llm.llmapi.llm_args import TorchLlmArgs
from tensorrt_llm.sampling_params import SamplingParams

#: the toy model's end-of-sequence id and context length (used when the model dir has no config.json)
EOS_TOKEN_ID = 2
DEFAULT_MAX_POSITION_EMBEDDINGS = 4096


class RequestOutput(GenerationResult):
    """The output of a request; created by the LLM, never by users."""


class _ToyTokenizer:
    eos_token_id = EOS_TOKEN_ID
    pad_token_id = 0


class LLM:
    def __init__(
        self,
        model: str | Path,
        tokenizer: Any = None,
        tokenizer_mode: Literal["auto", "slow"] = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        valid = TorchLlmArgs.field_names() | {"_mpi_session", "backend"}
        for key in kwargs:
            if key not in valid:
                raise ValueError(f"{self.__class__.__name__} got invalid argument: {key}")
        self.args = TorchLlmArgs.from_kwargs(
            model=str(model),
            tokenizer=tokenizer,
            tokenizer_mode=tokenizer_mode,
            skip_tokenizer_init=skip_tokenizer_init,
            trust_remote_code=trust_remote_code,
            tensor_parallel_size=tensor_parallel_size,
            dtype=dtype,
            revision=revision,
            tokenizer_revision=tokenizer_revision,
            **kwargs,
        )
        if self.args.tensor_parallel_size > 1:
            raise RuntimeError(
                f"Only 1 GPUs are available, but {self.args.tensor_parallel_size} are required."
            )
        self._tokenizer = None if skip_tokenizer_init else _ToyTokenizer()
        self._executor: ToyExecutor | None = ToyExecutor(self.args, self._max_seq_len())

    def _max_seq_len(self) -> int:
        if self.args.max_seq_len is not None:
            return self.args.max_seq_len
        config = os.path.join(self.args.model, "config.json")
        if os.path.isfile(config):
            with open(config) as f:
                return int(json.load(f).get("max_position_embeddings", DEFAULT_MAX_POSITION_EMBEDDINGS))
        return DEFAULT_MAX_POSITION_EMBEDDINGS

    @property
    def tokenizer(self) -> _ToyTokenizer | None:
        return self._tokenizer

    def generate_async(
        self,
        inputs: Any,
        sampling_params: SamplingParams | None = None,
        lora_request: Any = None,
        prompt_adapter_request: Any = None,
        streaming: bool = False,
        kv_cache_retention_config: Any = None,
        disaggregated_params: Any = None,
        _postproc_params: Any = None,
        scheduling_params: Any = None,
        cache_salt: str | None = None,
    ) -> RequestOutput:
        if self._executor is None or self._executor.is_shutdown():
            raise RuntimeError("LLM is shutting down")
        sampling_params = self._prepare_sampling_params(sampling_params)
        if isinstance(inputs, dict) and "prompt_token_ids" in inputs:
            prompt_token_ids = list(inputs["prompt_token_ids"])
        elif isinstance(inputs, list) and all(isinstance(t, int) for t in inputs):
            prompt_token_ids = list(inputs)
        else:
            raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")
        self._check_arguments(len(prompt_token_ids), 0, sampling_params)
        executor = self._executor
        result = RequestOutput(next(executor.ids), prompt_token_ids, sampling_params, streaming, executor)
        executor.submit(result)
        return result

    def _prepare_sampling_params(self, sampling_params: SamplingParams | None) -> SamplingParams:
        if sampling_params is None:
            sampling_params = SamplingParams()
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError(
                f"The sampling_params must be type SamplingParams or None, but got {type(sampling_params)}"
            )
        if sampling_params.end_id is None:
            if self.tokenizer is None:
                raise ValueError(
                    "tokenizer is required to reset end_id if it is None, or you can explicitly specify "
                    "the end_id for sampling_params"
                )
            sampling_params.end_id = self.tokenizer.eos_token_id
        return sampling_params

    def _check_arguments(self, prompt_len: int, query_len: int, sampling_params: SamplingParams) -> None:
        # the PyTorch backend checks only the prompt against max_num_tokens here
        max_num_tokens = self.args.max_num_tokens
        if (
            not self.args.enable_chunked_prefill
            and max_num_tokens
            and prompt_len + query_len > max_num_tokens
        ):
            raise ValueError(
                f"The sum of prompt length ({prompt_len}), query length ({query_len}) should not exceed "
                f"max_num_tokens ({max_num_tokens})"
            )

    def get_stats_async(self, timeout: float | None = 2) -> IterationResult:
        assert self._executor is not None
        self._executor.stats.set_timeout(timeout)
        return self._executor.stats

    def get_kv_cache_events_async(self, timeout: float | None = 2) -> IterationResult:
        """KV cache events (one dict per event); needs ``event_buffer_max_size > 0`` and block reuse."""
        assert self._executor is not None
        pool = self._executor.block_pool
        assert pool is not None, "KV Event IterationResult is not properly instantiated."
        pool.events.set_timeout(timeout)
        return pool.events

    def shutdown(self) -> None:
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None
