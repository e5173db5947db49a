"""The engine conformance kit: the one test suite every Dynamo engine passes.

An engine package runs it from its own tests by subclassing ``EngineConformance``::

    import pytest
    from dynamo.plugin import EngineContext
    from dynamo.plugin.testing import EngineConformance

    class TestAcmeEngine(EngineConformance):
        max_tokens = 8                      # keep the suite fast

        @pytest.fixture(scope="class")
        @classmethod
        def engine_environment(cls, tmp_path_factory):   # optional: prepare the process first
            cls.model_dir = tmp_path_factory.mktemp("model")
            yield

        def make_engine(self):
            return acme_plugin.build(EngineContext(argv=["--model-path", str(self.model_dir)]))

pytest collects the subclass (its name starts with ``Test``) and runs every ``test_*`` method on one
engine, built with ``make_engine`` and started once per class (the class's tests share one event
loop). ``engine_environment`` is a class-scoped fixture run before the engine is built: override it
(as a classmethod) for environment variables, a model directory, or a fake engine library on
``sys.path``. The lifecycle tests build fresh engines of their own while the shared one runs, so size
GPU memory for two. Attributes such as ``max_tokens``, ``long_max_tokens``, ``concurrency`` and
``timeout_s`` tune the suite; ``prompt`` must hold token ids the model knows.

What the suite holds an engine to (the ``Engine`` contract, made concrete):

- ``generate`` streams several deltas of ``int`` token ids; only the last delta has a
  ``finish_reason``, and it carries ``usage`` whose ``prompt_tokens`` is the prompt's length and whose
  ``completion_tokens`` is the number of tokens streamed.
- With ``ignore_eos``, exactly ``max_tokens`` tokens come back, ending with ``FinishReason.LENGTH``.
- A stop token id ends generation with ``FinishReason.STOP``, also under ``ignore_eos`` (which ignores
  only the model's EOS). **The stop token is not part of the output**: the tokens streamed are the
  ones before it. ``usage.completion_tokens`` may count it (it was generated) or not.
- Closing the stream (``aclose`` on the generator) releases the engine request; ``abort(request_id)``
  ends the stream with a last delta whose ``finish_reason`` is ``CANCELLED``; aborting an unknown id
  is a no-op. An engine that implements ``ReportsLoad`` reports 0 active requests afterwards.
- Many concurrent requests all complete.
- Requests the engine cannot serve raise ``InvalidRequest`` while iterating: an empty prompt, a prompt
  longer than the context, ``max_tokens`` that cannot fit in the context.
- ``check_health`` passes on a started engine; ``aclose`` is idempotent, also before ``start``; after
  ``aclose``, ``generate`` raises ``EngineError`` (preferably ``EngineShutdown``).

Requests use greedy sampling (``temperature=0``) so that a request repeated gives the same tokens.

This module imports pytest and pytest-asyncio: only tests import it, never the runtime, and it is not
registered as a pytest plugin.
"""

from __future__ import annotations

import asyncio
import inspect
import uuid
from collections.abc import AsyncIterator, Awaitable, Iterator, Sequence
from dataclasses import dataclass

import pytest
import pytest_asyncio

from dynamo.plugin.capabilities import LoadMetrics, ReportsLoad
from dynamo.plugin.engine import Engine
from dynamo.plugin.errors import EngineError, InvalidRequest
from dynamo.plugin.types import (
    Delta,
    FinishReason,
    GenerateRequest,
    ModelInfo,
    SamplingOptions,
    StopConditions,
)

__all__ = ["EngineConformance", "StartedEngine", "collect", "drain", "tokens"]


@dataclass(frozen=True)
class StartedEngine:
    """The engine under test and what its ``start`` reported."""

    engine: Engine
    info: ModelInfo


async def drain(stream: AsyncIterator[Delta]) -> list[Delta]:
    """Every delta left in ``stream``."""
    return [delta async for delta in stream]


async def collect(engine: Engine, request: GenerateRequest, limit_s: float) -> list[Delta]:
    """Run ``request`` to its end and return its deltas; fail if it takes longer than ``limit_s``."""
    return await asyncio.wait_for(drain(engine.generate(request)), limit_s)


def tokens(deltas: Sequence[Delta]) -> list[int]:
    """All token ids of a stream, in order."""
    return [t for delta in deltas for t in delta.token_ids]


@pytest.mark.asyncio(loop_scope="class")
class EngineConformance:
    """Base class of the conformance suite; subclass it as ``Test...`` and implement ``make_engine``."""

    #: prompt of every request; the ids must be valid for the engine's model
    prompt: Sequence[int] = tuple(range(10, 26))
    #: max_tokens of ordinary requests; it bounds how long the suite takes
    max_tokens: int = 8
    #: max_tokens of the requests that the cancellation tests cut short (capped by the context)
    long_max_tokens: int = 512
    #: number of requests sent at once by the concurrency test
    concurrency: int = 32
    #: seconds a stream, a health check or a shutdown may take before the suite calls it hung
    timeout_s: float = 60.0
    #: seconds ``start`` may take
    start_timeout_s: float = 600.0

    def make_engine(self) -> Engine | Awaitable[Engine]:
        """Build a fresh, unstarted engine (usually ``spec.factory(EngineContext(...))``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement make_engine()")

    # ---------------------------------------------------------------- fixtures

    # Class-scoped fixtures are classmethods (pytest deprecates class-scoped instance methods);
    # an override of ``engine_environment`` should be one too.

    @pytest.fixture(scope="class")
    @classmethod
    def engine_environment(cls) -> Iterator[None]:
        """Prepare the process for the engine, class-wide. Override it; the default does nothing."""
        yield

    @pytest_asyncio.fixture(scope="class", loop_scope="class")
    @classmethod
    async def started(cls, engine_environment: None) -> AsyncIterator[StartedEngine]:
        suite = cls()
        engine = await suite._build()
        try:
            info = await asyncio.wait_for(engine.start(), suite.start_timeout_s)
            yield StartedEngine(engine, info)
        finally:
            await asyncio.wait_for(engine.aclose(), suite.timeout_s)

    @pytest.fixture(scope="class")
    @classmethod
    def engine(cls, started: StartedEngine) -> Engine:
        return started.engine

    @pytest.fixture(scope="class")
    @classmethod
    def model_info(cls, started: StartedEngine) -> ModelInfo:
        return started.info

    # ---------------------------------------------------------------- helpers

    async def _build(self) -> Engine:
        built = self.make_engine()
        engine = await built if inspect.isawaitable(built) else built
        assert isinstance(engine, Engine), f"make_engine() returned {engine!r}, not an Engine"
        return engine

    def make_request(
        self,
        max_tokens: int | None = None,
        *,
        prompt: Sequence[int] | None = None,
        ignore_eos: bool = True,
        stop_token_ids: Sequence[int] = (),
    ) -> GenerateRequest:
        """A greedy request for ``max_tokens`` (default: the class's) tokens after ``prompt``."""
        return GenerateRequest(
            request_id=f"conformance-{uuid.uuid4().hex[:16]}",
            token_ids=list(self.prompt if prompt is None else prompt),
            sampling=SamplingOptions(temperature=0.0, seed=0),
            stop=StopConditions(
                max_tokens=self.max_tokens if max_tokens is None else max_tokens,
                stop_token_ids=list(stop_token_ids),
                ignore_eos=ignore_eos,
            ),
        )

    def long_request_tokens(self, info: ModelInfo) -> int:
        return min(self.long_max_tokens, info.context_length - len(self.prompt))

    async def wait_until_idle(self, engine: Engine) -> None:
        """Wait until an engine that reports load has no active request (no-op for the others)."""
        if not isinstance(engine, ReportsLoad):
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        while (active := engine.load_metrics().active_requests) != 0:
            assert loop.time() < deadline, f"{active} request(s) still active after {self.timeout_s}s"
            await asyncio.sleep(0.01)

    async def open_stream(self, engine: Engine, request: GenerateRequest) -> tuple[AsyncIterator[Delta], int]:
        """Start ``request`` and read two deltas; return the open stream and the tokens read."""
        stream = engine.generate(request)
        seen = 0
        for _ in range(2):
            delta = await asyncio.wait_for(stream.__anext__(), self.timeout_s)
            assert delta.finish_reason is None, f"the long request ended early: {delta!r}"
            seen += len(delta.token_ids)
        return stream, seen

    # ---------------------------------------------------------------- start and health

    async def test_start_reports_the_model(self, model_info: ModelInfo) -> None:
        assert isinstance(model_info, ModelInfo)
        assert model_info.served_model_name
        assert model_info.context_length >= len(self.prompt) + self.max_tokens
        assert model_info.kv_block_size >= 1

    async def test_check_health_passes(self, engine: Engine) -> None:
        await asyncio.wait_for(engine.check_health(), self.timeout_s)

    # ---------------------------------------------------------------- streaming

    async def test_streams_several_deltas_then_finish_and_usage(self, engine: Engine) -> None:
        assert self.max_tokens >= 2, "the suite needs max_tokens >= 2"
        deltas = await collect(engine, self.make_request(), self.timeout_s)
        assert len(deltas) >= 2, f"expected a stream of deltas, got {deltas!r}"
        for delta in deltas:
            assert isinstance(delta, Delta)
            assert all(type(t) is int for t in delta.token_ids), delta
        assert all(d.finish_reason is None for d in deltas[:-1]), "only the last delta may finish"
        last = deltas[-1]
        assert last.finish_reason is not None and last.usage is not None, last
        assert last.usage.prompt_tokens == len(self.prompt)
        assert last.usage.completion_tokens == len(tokens(deltas))

    @pytest.mark.parametrize("max_tokens", [1, None], ids=["one", "class-max"])
    async def test_max_tokens_is_exact_with_ignore_eos(self, engine: Engine, max_tokens: int | None) -> None:
        wanted = self.max_tokens if max_tokens is None else max_tokens
        deltas = await collect(engine, self.make_request(wanted), self.timeout_s)
        assert len(tokens(deltas)) == wanted
        assert deltas[-1].finish_reason == FinishReason.LENGTH
        assert deltas[-1].usage is not None and deltas[-1].usage.completion_tokens == wanted

    async def test_same_request_gives_same_tokens(self, engine: Engine) -> None:
        first = tokens(await collect(engine, self.make_request(), self.timeout_s))
        second = tokens(await collect(engine, self.make_request(), self.timeout_s))
        assert first == second, "greedy requests must be repeatable (the stop-token test relies on it)"

    @pytest.mark.parametrize("ignore_eos", [True, False], ids=["ignore-eos", "eos"])
    async def test_stop_token_id_ends_generation_without_the_token(
        self, engine: Engine, ignore_eos: bool
    ) -> None:
        baseline = tokens(await collect(engine, self.make_request(ignore_eos=ignore_eos), self.timeout_s))
        if not baseline:
            pytest.skip("the model ended the baseline request before its first token")
        # the first token that did not occur earlier, so the stop must fire exactly there
        cut = next((i for i in range(1, len(baseline)) if baseline[i] not in baseline[:i]), 0)
        stop_id = baseline[cut]
        request = self.make_request(ignore_eos=ignore_eos, stop_token_ids=[stop_id])
        deltas = await collect(engine, request, self.timeout_s)
        assert tokens(deltas) == baseline[:cut], f"stop id {stop_id} at position {cut}"
        last = deltas[-1]
        assert last.finish_reason == FinishReason.STOP
        assert last.usage is not None and last.usage.completion_tokens in (cut, cut + 1)

    # ---------------------------------------------------------------- cancellation

    async def test_closing_the_stream_releases_the_request(
        self, engine: Engine, model_info: ModelInfo
    ) -> None:
        request = self.make_request(self.long_request_tokens(model_info))
        stream, _ = await self.open_stream(engine, request)
        await asyncio.wait_for(stream.aclose(), self.timeout_s)  # type: ignore[attr-defined]
        await self.wait_until_idle(engine)
        deltas = await collect(engine, self.make_request(), self.timeout_s)
        assert len(tokens(deltas)) == self.max_tokens, "the engine must still serve after a cancel"

    async def test_abort_ends_the_stream_as_cancelled(self, engine: Engine, model_info: ModelInfo) -> None:
        long = self.long_request_tokens(model_info)
        request = self.make_request(long)
        stream, seen = await self.open_stream(engine, request)
        await asyncio.wait_for(engine.abort(request.request_id), self.timeout_s)
        rest = await asyncio.wait_for(drain(stream), self.timeout_s)
        assert rest, "the stream must end with a delta that says CANCELLED"
        assert rest[-1].finish_reason == FinishReason.CANCELLED, rest[-1]
        assert seen + len(tokens(rest)) < long
        await self.wait_until_idle(engine)

    async def test_abort_of_an_unknown_request_is_ignored(self, engine: Engine) -> None:
        await asyncio.wait_for(engine.abort(f"unknown-{uuid.uuid4().hex}"), self.timeout_s)
        deltas = await collect(engine, self.make_request(), self.timeout_s)
        assert deltas[-1].finish_reason == FinishReason.LENGTH

    async def test_abort_after_finish_is_ignored(self, engine: Engine) -> None:
        request = self.make_request()
        await collect(engine, request, self.timeout_s)
        await asyncio.wait_for(engine.abort(request.request_id), self.timeout_s)
        await self.wait_until_idle(engine)

    async def test_load_metrics_count_active_requests(self, engine: Engine, model_info: ModelInfo) -> None:
        if not isinstance(engine, ReportsLoad):
            pytest.skip("the engine does not implement ReportsLoad")
        request = self.make_request(self.long_request_tokens(model_info))
        stream, _ = await self.open_stream(engine, request)
        metrics = engine.load_metrics()
        assert isinstance(metrics, LoadMetrics)
        assert metrics.active_requests >= 1
        await asyncio.wait_for(engine.abort(request.request_id), self.timeout_s)
        await asyncio.wait_for(drain(stream), self.timeout_s)
        await self.wait_until_idle(engine)

    # ---------------------------------------------------------------- concurrency

    async def test_concurrent_requests_all_complete(self, engine: Engine) -> None:
        requests = [
            self.make_request(prompt=[*self.prompt, self.prompt[i % len(self.prompt)]])
            for i in range(self.concurrency)
        ]
        streams = await asyncio.wait_for(
            asyncio.gather(*(drain(engine.generate(r)) for r in requests)), self.timeout_s
        )
        for deltas in streams:
            assert len(tokens(deltas)) == self.max_tokens
            assert deltas[-1].finish_reason == FinishReason.LENGTH
        await self.wait_until_idle(engine)

    # ---------------------------------------------------------------- errors

    async def test_empty_prompt_is_invalid(self, engine: Engine) -> None:
        with pytest.raises(InvalidRequest):
            await collect(engine, self.make_request(prompt=[]), self.timeout_s)

    async def test_prompt_longer_than_the_context_is_invalid(
        self, engine: Engine, model_info: ModelInfo
    ) -> None:
        prompt = [self.prompt[0]] * (model_info.context_length + 1)
        with pytest.raises(InvalidRequest):
            await collect(engine, self.make_request(1, prompt=prompt), self.timeout_s)

    async def test_max_tokens_beyond_the_context_is_invalid(
        self, engine: Engine, model_info: ModelInfo
    ) -> None:
        with pytest.raises(InvalidRequest):
            await collect(engine, self.make_request(model_info.context_length + 1), self.timeout_s)

    async def test_engine_serves_after_invalid_requests(self, engine: Engine) -> None:
        with pytest.raises(InvalidRequest):
            await collect(engine, self.make_request(prompt=[]), self.timeout_s)
        deltas = await collect(engine, self.make_request(), self.timeout_s)
        assert len(tokens(deltas)) == self.max_tokens
        await self.wait_until_idle(engine)

    # ---------------------------------------------------------------- lifecycle (fresh engines)

    async def test_aclose_before_start_is_fine(self, engine_environment: None) -> None:
        engine = await self._build()
        await asyncio.wait_for(engine.aclose(), self.timeout_s)
        await asyncio.wait_for(engine.aclose(), self.timeout_s)

    async def test_aclose_twice_then_generate_fails(self, engine_environment: None) -> None:
        engine = await self._build()
        try:
            await asyncio.wait_for(engine.start(), self.start_timeout_s)
            deltas = await collect(engine, self.make_request(), self.timeout_s)
            assert deltas[-1].finish_reason == FinishReason.LENGTH
        finally:
            await asyncio.wait_for(engine.aclose(), self.timeout_s)
        await asyncio.wait_for(engine.aclose(), self.timeout_s)
        with pytest.raises(EngineError):
            await collect(engine, self.make_request(), self.timeout_s)
