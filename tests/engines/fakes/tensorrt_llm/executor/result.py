"""Fake ``tensorrt_llm.executor.result``: ``CompletionOutput``, ``GenerationResult``,
``IterationResult``, with TensorRT-LLM's update rules (cumulative ids, stop-word trimming, finish
reasons set on the final response)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import TYPE_CHECKING, Any, Literal

from tensorrt_llm.executor.utils import RequestError
from tensorrt_llm.sampling_params import SamplingParams

if TYPE_CHECKING:
    from tensorrt_llm.executor.executor import Response, ToyExecutor


@dataclasses.dataclass
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] | None = dataclasses.field(default_factory=list)
    cumulative_logprob: float | None = None
    logprobs: list | None = dataclasses.field(default_factory=list)
    prompt_logprobs: list | None = dataclasses.field(default_factory=list)
    finish_reason: Literal["stop", "length", "timeout", "cancelled"] | None = None
    stop_reason: int | str | None = None
    generation_logits: Any = None
    disaggregated_params: Any = None
    _last_token_ids_len: int = dataclasses.field(default=0, init=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len :]


class GenerationResult:
    def __init__(
        self,
        request_id: int,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        streaming: bool,
        executor: ToyExecutor,
    ) -> None:
        self.id = request_id
        self._prompt_token_ids = prompt_token_ids
        self.sampling_params = sampling_params
        self._streaming = streaming
        self._executor = executor
        self._outputs = [CompletionOutput(0)]
        self._done = False
        self._aborted = False
        self.aqueue: asyncio.Queue = asyncio.Queue()

    @property
    def request_id(self) -> int:
        return self.id

    @property
    def prompt_token_ids(self) -> list[int]:
        return self._prompt_token_ids

    @property
    def outputs(self) -> list[CompletionOutput]:
        return self._outputs[: self.sampling_params.n]

    @property
    def finished(self) -> bool:
        return self._done

    def abort(self) -> None:
        self._executor.abort_request(self.request_id)
        self._aborted = True

    def aborted(self) -> bool:
        return self._aborted

    def _handle_response(self, response: Response) -> None:
        if response.error is not None:
            raise RequestError(response.error)
        output = self._outputs[0]
        output._last_token_ids_len = len(output.token_ids)
        output.token_ids.extend(response.output_token_ids)
        self._done = response.is_final
        if response.finish_reason == "CANCELLED":
            output.finish_reason = "cancelled"
        if not self._done:
            return
        if response.finish_reason == "END_ID":
            output.finish_reason = "stop"
        elif response.finish_reason == "STOP_WORDS":
            output.finish_reason = "stop"
            for stop_reason, stop_ids in self.sampling_params._get_stop_reasons_and_words():
                if output.token_ids[-len(stop_ids) :] == stop_ids:
                    output.stop_reason = stop_reason
                    if not self.sampling_params.include_stop_str_in_output:
                        output.token_ids = output.token_ids[: -len(stop_ids)]
                    break
        elif response.finish_reason == "LENGTH":
            output.finish_reason = "length"
        elif response.finish_reason == "TIMED_OUT":
            output.finish_reason = "timeout"

    async def _aresult_step(self) -> None:
        self._handle_response(await self.aqueue.get())

    async def aresult(self) -> GenerationResult:
        while not self._done:
            await self._aresult_step()
        return self

    def __aiter__(self) -> GenerationResult:
        return self

    async def __anext__(self) -> GenerationResult:
        if self._done:
            raise StopAsyncIteration
        await self._aresult_step()
        return self


class IterationResult:
    """Runtime results for all available iterations (stats or KV events), as JSON strings."""

    def __init__(self) -> None:
        self._done = False
        self._timeout: float | None = 2
        self.aqueue: asyncio.Queue = asyncio.Queue()

    def set_timeout(self, timeout: float | None) -> None:
        self._timeout = timeout

    def mark_undone(self) -> None:
        self._done = False

    def __aiter__(self) -> IterationResult:
        return self

    async def __anext__(self) -> dict:
        if self._done:
            raise StopAsyncIteration
        try:
            data = await asyncio.wait_for(self.aqueue.get(), self._timeout)
        except TimeoutError:
            self._done = True
            raise StopAsyncIteration from None
        return json.loads(data)
