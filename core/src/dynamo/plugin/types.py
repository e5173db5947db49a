"""Request and response types that cross the engine seam and the request plane.

They are ``msgspec.Struct``s so the request plane encodes them directly (no dict building on the
per-token path). Every field has a default, so old peers decode new messages and new peers decode
old ones: unknown trailing fields are ignored, missing ones take their default.
"""

from __future__ import annotations

import enum
from typing import Any

import msgspec

__all__ = [
    "FinishReason",
    "SamplingOptions",
    "StopConditions",
    "OutputOptions",
    "GenerateRequest",
    "Usage",
    "Delta",
    "ModelInfo",
]


class FinishReason(str, enum.Enum):
    """Why a sequence ended. The frontend maps these onto OpenAI's finish reasons."""

    EOS = "eos"  # the model produced an end-of-sequence token
    STOP = "stop"  # a stop token id or stop string matched
    LENGTH = "length"  # max_tokens (or the context length) reached
    CANCELLED = "cancelled"  # aborted on request
    ERROR = "error"  # the engine failed this request


class SamplingOptions(msgspec.Struct, omit_defaults=True, kw_only=True):
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None


class StopConditions(msgspec.Struct, omit_defaults=True, kw_only=True):
    max_tokens: int | None = None
    min_tokens: int | None = None
    #: token ids that end generation (in addition to the model's EOS unless ``ignore_eos``)
    stop_token_ids: list[int] = msgspec.field(default_factory=list)
    ignore_eos: bool = False


class OutputOptions(msgspec.Struct, omit_defaults=True, kw_only=True):
    #: number of top log-probabilities per token (0 = only the sampled token's), ``None`` = none
    logprobs: int | None = None


class GenerateRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What an engine is asked to do: continue ``token_ids``."""

    request_id: str
    token_ids: list[int]
    model: str = ""
    sampling: SamplingOptions = msgspec.field(default_factory=SamplingOptions)
    stop: StopConditions = msgspec.field(default_factory=StopConditions)
    output: OutputOptions = msgspec.field(default_factory=OutputOptions)
    #: the model's end-of-sequence ids, as the frontend's tokenizer knows them
    eos_token_ids: list[int] = msgspec.field(default_factory=list)
    #: free-form extension data: ``"response_format"`` (OpenAI's object, only for engines whose
    #: ``ModelInfo.response_formats`` lists its type), engine-specific knobs
    extra: dict[str, Any] = msgspec.field(default_factory=dict)


class Usage(msgspec.Struct, omit_defaults=True, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    #: prompt tokens served from the engine's prefix cache
    cached_tokens: int = 0


class Delta(msgspec.Struct, array_like=True, omit_defaults=True):
    """One step of a stream: the new token ids. The last delta carries ``finish_reason`` and ``usage``.

    ``array_like`` keeps the per-token wire frame to a few bytes.
    """

    token_ids: list[int]
    finish_reason: FinishReason | None = None
    usage: Usage | None = None
    #: one log-probability per token in ``token_ids``, when asked for
    logprobs: list[float] | None = None
    #: per token, a map of token id to log-probability for the top alternatives
    top_logprobs: list[dict[int, float]] | None = None


class ModelInfo(msgspec.Struct, omit_defaults=True, kw_only=True):
    """What an engine reports about the model it serves, once started.

    The worker host turns it into the model card that the frontend discovers.
    """

    #: the name clients put in ``"model"``
    served_model_name: str
    #: a local directory with ``tokenizer.json`` / ``tokenizer_config.json`` (and ``config.json``)
    model_path: str
    context_length: int
    kv_block_size: int = 16
    total_kv_blocks: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None
    #: the OpenAI ``response_format`` types the engine enforces besides "text" ("json_object",
    #: "json_schema"); the frontend refuses others with a 400. The request carries the format as
    #: ``GenerateRequest.extra["response_format"]``, exactly as the client sent it.
    response_formats: list[str] = msgspec.field(default_factory=list)
