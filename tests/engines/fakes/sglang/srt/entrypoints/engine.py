"""Fake ``sglang.srt.entrypoints.engine``: the offline ``Engine``.

The real one launches a scheduler and a detokenizer subprocess; the fake runs its toy scheduler as an
asyncio task in the calling loop (started by the first request).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

from sglang.srt.managers.io_struct import GenerateReqInput
from sglang.srt.managers.tokenizer_manager import TokenizerManager
from sglang.srt.server_args import ServerArgs


@dataclasses.dataclass
class FlushCacheReqOutput:
    success: bool
    message: str = ""


@dataclasses.dataclass
class SchedulerInitResult:
    scheduler_infos: list[dict[str, Any]]
    all_child_pids: list[int] = dataclasses.field(default_factory=list)


class Engine:
    server_args_class = ServerArgs

    def __init__(self, **kwargs: Any) -> None:
        if "server_args" in kwargs:
            server_args = kwargs["server_args"]
        else:
            kwargs.setdefault("log_level", "error")
            server_args = self.server_args_class(**kwargs)
        self.server_args = server_args
        server_args.resolve_once()
        self.tokenizer_manager = TokenizerManager(server_args)
        scheduler = self.tokenizer_manager.scheduler
        self._scheduler_init_result = SchedulerInitResult(
            scheduler_infos=[scheduler.scheduler_info(self.tokenizer_manager.context_len)]
        )
        #: test hook: how many times shutdown() ran
        self.fake_shutdowns = 0

    async def async_generate(
        self,
        prompt: list[str] | str | None = None,
        sampling_params: list[dict] | dict | None = None,
        input_ids: list[list[int]] | list[int] | None = None,
        image_data: Any = None,
        audio_data: Any = None,
        video_data: Any = None,
        mm_hashes: Any = None,
        mm_content_hashes: Any = None,
        return_logprob: list[bool] | bool | None = False,
        logprob_start_len: list[int] | int | None = None,
        top_logprobs_num: list[int] | int | None = None,
        token_ids_logprob: list[list[int]] | list[int] | None = None,
        lora_path: list[str | None] | None = None,
        custom_logit_processor: list[str] | str | None = None,
        stream: bool = False,
        bootstrap_host: list[str] | str | None = None,
        bootstrap_port: list[int] | int | None = None,
        bootstrap_room: list[int] | int | None = None,
        routed_dp_rank: int | None = None,
        data_parallel_rank: int | None = None,
        external_trace_header: dict | None = None,
        rid: list[str] | str | None = None,
        priority: int | None = None,
        session_id: str | None = None,
        *,
        cache_salt: list[str] | str | None = None,
    ) -> dict | AsyncIterator[dict]:
        if return_logprob or image_data or audio_data or video_data or isinstance(rid, list):
            raise NotImplementedError("the SGLang fake serves single token-id prompts only")
        obj = GenerateReqInput(
            text=prompt, input_ids=input_ids, sampling_params=sampling_params, stream=stream, rid=rid
        )
        generator = self.tokenizer_manager.generate_request(obj, None)
        if stream is True:
            return generator
        return await generator.__anext__()

    def flush_cache(self) -> FlushCacheReqOutput:
        """Drop the prefix cache (SGLang refuses while requests run); ``AllBlocksCleared`` follows."""
        return FlushCacheReqOutput(success=self.tokenizer_manager.scheduler.flush_cache())

    def shutdown(self) -> None:
        self.fake_shutdowns += 1
        self.tokenizer_manager.scheduler.kill()
