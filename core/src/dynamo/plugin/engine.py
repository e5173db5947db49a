"""The engine contract: what every engine plugin implements.

An engine object serves token-id requests. The worker host calls, in this order::

    engine = spec.factory(ctx)          # build from config; no heavy work yet
    info = await engine.start()         # load the model, return what it serves
    async for delta in engine.generate(request): ...   # many at once
    await engine.abort(request_id)      # stop one request early (idempotent)
    await engine.check_health()         # raises if the engine is broken
    await engine.aclose()               # release everything (idempotent)

Optional abilities (KV events, load metrics) are separate small protocols in
``dynamo.plugin.capabilities``; an engine has them by implementing them, never by stubbing them.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from dynamo.plugin.types import Delta, GenerateRequest, ModelInfo

__all__ = ["Engine", "EngineContext", "EngineSpec"]


@dataclass(frozen=True)
class EngineContext:
    """What the worker host hands an engine factory.

    ``argv`` holds the command-line flags the worker host did not claim: the engine parses them
    with its own parser (vLLM's ``AsyncEngineArgs``, SGLang's ``ServerArgs``, ...).
    """

    argv: Sequence[str] = ()
    #: ``--model-path`` (may be ``None``: the engine decides, e.g. its own ``--model`` flag)
    model_path: str | None = None
    #: ``--model-name``: the served model name, when given
    model_name: str | None = None
    #: ``--kv-cache-block-size``, when given
    kv_block_size: int | None = None
    #: the worker's 64-bit instance id
    instance_id: int = 0
    #: free-form extras for in-process use (tests, embedders)
    extra: dict[str, Any] = field(default_factory=dict)


class Engine(abc.ABC):
    """Base class of every engine. ``generate`` is called concurrently, one call per request."""

    @abc.abstractmethod
    async def start(self) -> ModelInfo:
        """Load the model and get ready to serve; return what is served. Called once."""

    @abc.abstractmethod
    def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        """Stream the continuation of ``request.token_ids`` as deltas of new token ids.

        The last delta, and only it, carries ``finish_reason`` and ``usage``
        (``usage.prompt_tokens`` is the prompt's length, ``usage.completion_tokens`` the number of
        tokens streamed). A stop token id ends the stream with ``FinishReason.STOP`` (also under
        ``ignore_eos``, which ignores only the model's EOS) and is not part of the output. Raise
        ``InvalidRequest`` for requests the engine cannot serve (an empty prompt, a prompt or
        ``max_tokens`` beyond the context) and ``EngineError`` for failures, at the latest when the
        stream is first iterated (an ``async def`` generator raises there anyway). When the
        consumer stops iterating (``aclose`` on the generator), the engine request must be released.

        After ``aclose``, ``generate`` raises ``EngineError``; prefer its subclass
        ``EngineShutdown``, which tells the frontend that the request may be migrated to another
        worker.
        """

    @abc.abstractmethod
    async def abort(self, request_id: str) -> None:
        """Stop ``request_id`` early; unknown or finished ids are ignored.

        The request's open stream then ends with a final delta whose ``finish_reason`` is
        ``FinishReason.CANCELLED`` (it may carry the last tokens too), instead of running to its
        end; an engine that implements ``ReportsLoad`` then no longer counts it as active.
        """

    async def check_health(self) -> None:
        """Raise ``EngineError`` when the engine cannot serve. The default trusts the engine."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Release the engine. Safe to call twice, before ``start`` and after a failed ``start``.

        From then on ``generate`` raises ``EngineError`` (preferably ``EngineShutdown``).
        """

    async def __aenter__(self) -> "Engine":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


@dataclass(frozen=True)
class EngineSpec:
    """An engine a plugin offers, returned by the ``dynamo_engines`` hook.

    ``factory`` builds an (unstarted) engine from an ``EngineContext``. It is the only place a
    plugin may import its engine library (vllm, sglang, tensorrt_llm, torch), so listing plugins
    stays cheap. When the library is missing, the factory raises ``EngineUnavailable`` with a
    one-line explanation and the install command.
    """

    name: str
    factory: Callable[[EngineContext], Engine]
    description: str = ""
    #: the distribution that provides it (filled in by the plugin manager when empty)
    plugin: str = ""
    #: a callable returning the engine's own ``--help`` text (shown by ``--engine NAME --help``);
    #: like ``factory`` it may import the engine library, and raises ``EngineUnavailable`` without it
    help: Callable[[], str] | None = None
