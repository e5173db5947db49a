"""Fake ``tensorrt_llm.sampling_params``: ``SamplingParams`` with TensorRT-LLM's field names."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SamplingParams:
    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    bad: str | list[str] | None = None
    bad_token_ids: list[int] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    n: int = 1
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    temperature: float | None = None
    seed: int | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    ignore_eos: bool = False
    detokenize: bool = True
    add_special_tokens: bool = True
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    return_perf_metrics: bool = False

    def __post_init__(self) -> None:
        if self.best_of is None:
            self.best_of = self.n
        if self.n != 1 or self.use_beam_search:
            raise NotImplementedError("the TensorRT-LLM fake serves n=1 without beam search only")

    def _get_stop_reasons_and_words(self) -> list[tuple]:
        return [(token_id, [token_id]) for token_id in self.stop_token_ids or []]
