"""What workers publish in discovery: the instance record and the model card, and their keys.

Keys follow Dynamo's layout: ``v1/instances/{ns}/{component}/{endpoint}/{id:x}`` and
``v1/mdc/{ns}/{component}/{endpoint}/{id:x}``. Values are JSON so a person can read them.
"""

from __future__ import annotations

import secrets

import msgspec

INSTANCES = "v1/instances"
MODEL_CARDS = "v1/mdc"
DEFAULT_COMPONENT = "backend"
DEFAULT_ENDPOINT = "generate"


def new_instance_id() -> int:
    """A random non-zero 63-bit id (fits a signed 64-bit integer everywhere)."""
    return secrets.randbits(63) or 1


def instance_key(namespace: str, component: str, endpoint: str, instance_id: int) -> str:
    return f"{INSTANCES}/{namespace}/{component}/{endpoint}/{instance_id:x}"


def model_card_key(namespace: str, component: str, endpoint: str, instance_id: int) -> str:
    return f"{MODEL_CARDS}/{namespace}/{component}/{endpoint}/{instance_id:x}"


def namespace_prefix(root: str, namespace: str | None) -> str:
    return f"{root}/{namespace}/" if namespace else f"{root}/"


class InstanceRecord(msgspec.Struct, kw_only=True):
    """Where to reach one worker instance."""

    namespace: str
    component: str
    endpoint: str
    instance_id: int
    #: tagged transport address, e.g. ``{"tcp": "127.0.0.1:40123"}`` or ``{"nats": "subject"}``
    transport: dict[str, str]


class RuntimeConfig(msgspec.Struct, kw_only=True, omit_defaults=True):
    total_kv_blocks: int | None = None
    max_num_seqs: int | None = None
    max_num_batched_tokens: int | None = None


class ModelCard(msgspec.Struct, kw_only=True):
    """What the frontend needs to serve a model through a worker (Dynamo's "MDC")."""

    display_name: str
    #: local directory with tokenizer.json / tokenizer_config.json / config.json
    model_path: str
    context_length: int
    kv_cache_block_size: int
    namespace: str
    component: str
    endpoint: str
    instance_id: int
    engine: str = ""
    model_type: list[str] = msgspec.field(default_factory=lambda: ["chat", "completions"])
    model_input: str = "tokens"
    worker_type: str = "aggregated"
    runtime_config: RuntimeConfig = msgspec.field(default_factory=RuntimeConfig)
    #: OpenAI response_format types the engine enforces besides "text" (from ``ModelInfo``)
    response_formats: list[str] = msgspec.field(default_factory=list)


def encode(record: InstanceRecord | ModelCard) -> bytes:
    return msgspec.json.encode(record)


def decode_instance(data: bytes) -> InstanceRecord:
    return msgspec.json.decode(data, type=InstanceRecord)


def decode_model_card(data: bytes) -> ModelCard:
    return msgspec.json.decode(data, type=ModelCard)
