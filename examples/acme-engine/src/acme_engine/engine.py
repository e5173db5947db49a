"""``AcmeEngine``: the n-gram model of ``model.py`` behind Dynamo's ``Engine`` contract.

Each request is generated inside its own ``generate`` stream, one token per step (``--step-ms``
apart), so there is no background task to manage: ``abort`` marks the request, and its stream ends
at its next step with a ``CANCELLED`` delta; ``aclose`` marks the engine, and every open stream ends
at its next step with ``EngineShutdown`` (the frontend may migrate it). The engine also reports its
load (``ReportsLoad``): the number of requests in flight.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass

from dynamo.plugin import (
    Delta,
    Engine,
    EngineError,
    EngineShutdown,
    FinishReason,
    GenerateRequest,
    InvalidRequest,
    LoadMetrics,
    ModelInfo,
    Usage,
)

from acme_engine.config import AcmeConfig
from acme_engine.model import Bigrams


@dataclass
class _Request:
    """One request in flight: its model, how far it got, and whether ``abort`` asked it to stop."""

    model: Bigrams
    rng: random.Random | None
    prompt_tokens: int
    produced: int = 0
    cancelled: bool = False

    def last(self, token_ids: list[int], reason: FinishReason) -> Delta:
        usage = Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.produced)
        return Delta(token_ids, reason, usage)


class AcmeEngine(Engine):
    def __init__(self, config: AcmeConfig) -> None:
        self.config = config
        self._info: ModelInfo | None = None
        self._closed = False
        self._active: dict[str, _Request] = {}

    # ---------------------------------------------------------------- lifecycle

    async def start(self) -> ModelInfo:
        if self._closed:
            raise EngineShutdown("the acme engine is shut down")
        cfg = self.config
        self._info = ModelInfo(
            served_model_name=cfg.served_model_name,
            model_path=cfg.model_path,
            context_length=cfg.context_length,
            kv_block_size=cfg.kv_block_size,
        )
        return self._info

    async def check_health(self) -> None:
        self._serving()

    async def aclose(self) -> None:
        self._closed = True  # open streams see it at their next step

    def _serving(self) -> ModelInfo:
        if self._closed:
            raise EngineShutdown("the acme engine is shut down")
        if self._info is None:
            raise EngineError("the acme engine is not started")
        return self._info

    # ---------------------------------------------------------------- requests

    async def generate(self, request: GenerateRequest) -> AsyncIterator[Delta]:
        limit = max_new_tokens(request, self._serving().context_length)
        rid = request.request_id
        if rid in self._active:
            raise InvalidRequest(f"request id {rid!r} is already in flight", param="request_id")
        state = _Request(Bigrams(request.token_ids), sampler(request), len(request.token_ids))
        self._active[rid] = state
        try:
            while state.produced < limit:
                await asyncio.sleep(self.config.step_s)  # one step; other requests run meanwhile
                delta = self._step(request, state, limit)
                yield delta
                if delta.finish_reason is not None:
                    return
            yield state.last([], FinishReason.LENGTH)  # max_tokens=0
        finally:  # finished, aborted, failed, or the consumer closed the stream
            self._active.pop(rid, None)

    def _step(self, request: GenerateRequest, state: _Request, limit: int) -> Delta:
        """The next token of ``request`` as a delta, or the stream's last delta."""
        if self._closed:
            raise EngineShutdown("the acme engine shut down during the request")
        if state.cancelled:
            return state.last([], FinishReason.CANCELLED)
        token = state.model.next_token(state.rng)
        stop = request.stop
        if state.produced >= (stop.min_tokens or 0):
            if token in stop.stop_token_ids:  # the stop token is not part of the output
                return state.last([], FinishReason.STOP)
            if not stop.ignore_eos and token in request.eos_token_ids:
                return state.last([], FinishReason.EOS)
        state.model.append(token)
        state.produced += 1
        if state.produced == limit:
            return state.last([token], FinishReason.LENGTH)
        return Delta([token])

    async def abort(self, request_id: str) -> None:
        state = self._active.get(request_id)
        if state is not None:  # unknown and finished ids are ignored
            state.cancelled = True

    # ---------------------------------------------------------------- optional abilities

    def load_metrics(self) -> LoadMetrics:
        """``ReportsLoad``: requests in flight (the engine has no queue and no KV cache to report)."""
        return LoadMetrics(active_requests=len(self._active))


def max_new_tokens(request: GenerateRequest, context_length: int) -> int:
    """How many tokens ``request`` may generate; ``InvalidRequest`` when it cannot be served."""
    n = len(request.token_ids)
    if n == 0:
        raise InvalidRequest("the prompt is empty", param="prompt")
    room = context_length - n
    if room < 1:
        raise InvalidRequest(
            f"the prompt has {n} tokens; the context length is {context_length}", param="prompt"
        )
    wanted = request.stop.max_tokens
    if wanted is None:
        return room
    if wanted < 0 or wanted > room:
        raise InvalidRequest(
            f"max_tokens={wanted} does not fit: prompt {n} tokens, context length {context_length}",
            param="max_tokens",
        )
    return wanted


def sampler(request: GenerateRequest) -> random.Random | None:
    """``None`` for greedy decoding (temperature unset or 0), else a generator seeded by the request."""
    temperature = request.sampling.temperature
    if not temperature:
        return None
    return random.Random(request.sampling.seed)
