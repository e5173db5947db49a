"""Fake ``sglang.srt.sampling.sampling_params``: SGLang's ``SamplingParams`` fields and checks.

The request's ``sampling_params`` dict is expanded into this class, so an unknown key raises
``TypeError`` and a bad value ``ValueError``, as in SGLang.
"""

from __future__ import annotations

import dataclasses
import math

TOP_K_ALL = 1 << 30


@dataclasses.dataclass
class SamplingParams:
    max_new_tokens: int | None = 128
    stop: str | list[str] | None = None
    stop_token_ids: set[int] | None = None
    stop_regex: str | list[str] | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = TOP_K_ALL
    min_p: float = 0.0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_new_tokens: int = 0
    n: int = 1
    json_schema: str | None = None
    regex: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    custom_params: dict | None = None
    stream_interval: int | None = None
    logit_bias: dict[str, float] | None = None
    sampling_seed: int | None = None

    def __post_init__(self) -> None:
        self.stop_token_ids = {int(t) for t in self.stop_token_ids} if self.stop_token_ids else None
        if self.top_k is None or self.top_k == -1:
            self.top_k = TOP_K_ALL
        if self.temperature is not None and 0 <= self.temperature < 1e-6:
            self.temperature, self.top_k = 1.0, 1  # greedy

    def verify(self, vocab_size: int) -> None:
        if not math.isfinite(self.temperature) or self.temperature < 0.0:
            raise ValueError(f"temperature must be a non-negative finite number, got {self.temperature}.")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}.")
        if self.top_k < 1:
            raise ValueError(f"top_k must be -1 (disable) or at least 1, got {self.top_k}.")
        if self.max_new_tokens is not None and self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be at least 0, got {self.max_new_tokens}.")
        too_many = self.max_new_tokens is not None and self.min_new_tokens > self.max_new_tokens
        if self.min_new_tokens < 0 or too_many:
            raise ValueError(f"min_new_tokens must be in [0, max_new_tokens], got {self.min_new_tokens}.")

    def normalize(self, tokenizer: object) -> None:
        if tokenizer is None and (self.stop or self.stop_regex):
            raise ValueError(f"stop={self.stop!r} is unavailable when skip_tokenizer_init=True")
        if tokenizer is None and self.min_new_tokens > 0:
            raise ValueError(
                f"min_new_tokens={self.min_new_tokens} is unavailable when skip_tokenizer_init=True "
                "(requires tokenizer for eos_token_id)."
            )
