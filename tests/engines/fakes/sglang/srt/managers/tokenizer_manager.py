"""Fake ``sglang.srt.managers.tokenizer_manager``: request state, validation and streaming.

As in SGLang: the validation runs when the stream is first read (so errors surface from
``__anext__`` as ``ValueError``); chunks queued while the consumer is slow are coalesced in
incremental mode (only the last one is kept in cumulative mode, whose intermediate chunks share one
growing list); a finished request's state is dropped. Closing a stream does not abort its request:
0.5.21 behaves so (0.5.23 releases a closed stream's request itself), and the plugin must abort.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from sglang.srt.managers.io_struct import GenerateReqInput
from sglang.srt.managers.scheduler import DEFAULT_CONTEXT_LENGTH, VOCAB_SIZE, Output, Req, Scheduler
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class ReqState:
    obj: GenerateReqInput
    out_list: list[dict] = dataclasses.field(default_factory=list)
    finished: bool = False
    event: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)
    output_ids: list[int] = dataclasses.field(default_factory=list)


class TokenizerManager:
    def __init__(self, server_args: ServerArgs) -> None:
        self.server_args = server_args
        self.context_len = server_args.context_length or DEFAULT_CONTEXT_LENGTH
        self.tokenizer = None  # the fake has no tokenizer, as with --skip-tokenizer-init
        self.rid_to_state: dict[str, ReqState] = {}
        self.scheduler = Scheduler(server_args, self._handle_batch_output)
        #: test hook: every rid passed to abort_request that reached the scheduler
        self.fake_aborted: list[str] = []

    async def generate_request(self, obj: GenerateReqInput, request: object = None):
        obj.normalize()
        if obj.rid in self.rid_to_state:
            raise ValueError(f"Duplicate request ID detected: {obj.rid}")
        if self.scheduler.dead:
            raise RuntimeError("the scheduler process is dead")
        self.rid_to_state[obj.rid] = state = ReqState(obj)
        try:
            req = self._tokenize_one_request(obj)
        except Exception:
            del self.rid_to_state[obj.rid]
            raise
        self.scheduler.add(req)
        async for response in self._wait_one_response(obj, state):
            yield response

    def _tokenize_one_request(self, obj: GenerateReqInput) -> Req:
        input_ids = list(obj.input_ids or [])
        if not input_ids:
            raise ValueError("The input_ids is empty.")
        if len(input_ids) >= self.context_len:
            raise ValueError(
                f"The input ({len(input_ids)} tokens) is longer than the model's context length "
                f"({self.context_len} tokens)."
            )
        params = SamplingParams(**obj.sampling_params)
        params.normalize(self.tokenizer)
        params.verify(VOCAB_SIZE)
        total = len(input_ids) + (params.max_new_tokens or 0)
        if params.max_new_tokens is not None and total >= self.context_len:
            if not self.server_args.allow_auto_truncate:
                raise ValueError(
                    f"Requested token count exceeds the model's maximum context length of "
                    f"{self.context_len} tokens. You requested a total of {total} tokens."
                )
            params.max_new_tokens = self.context_len - len(input_ids) - 1
        return Req(obj.rid, input_ids, params)

    async def _wait_one_response(self, obj: GenerateReqInput, state: ReqState):
        incremental = obj.stream and self.server_args.incremental_streaming_output
        while True:
            await state.event.wait()
            out_list, state.out_list = state.out_list, []
            finished = state.finished
            state.event.clear()
            out = self._coalesce(out_list) if incremental and len(out_list) > 1 else out_list[-1]
            if finished:
                reason = out["meta_info"]["finish_reason"]
                if reason.get("type") == "abort" and reason.get("status_code") == 400 and not obj.stream:
                    raise ValueError(reason["message"])
                yield out
                break
            if obj.stream:
                yield out

    @staticmethod
    def _coalesce(out_list: list[dict]) -> dict:
        out = dict(out_list[-1])
        out["output_ids"] = [t for chunk in out_list for t in chunk["output_ids"]]
        return out

    def _handle_batch_output(self, outputs: list[Output]) -> None:
        for rid, new_ids, reason, prompt_tokens, completion_tokens, cached_tokens in outputs:
            state = self.rid_to_state.get(rid)
            if state is None:
                logger.error("Received output for rid=%s but the state was deleted in TokenizerManager.", rid)
                continue
            meta_info = {
                "id": rid,
                "finish_reason": reason,
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "cached_tokens": cached_tokens,
            }
            state.finished = reason is not None
            state.output_ids.extend(new_ids)
            if state.obj.stream and self.server_args.incremental_streaming_output:
                out = {"output_ids": list(new_ids), "meta_info": meta_info}
            elif state.finished:
                out = {"output_ids": state.output_ids.copy(), "meta_info": meta_info}
            elif state.obj.stream:
                out = {"output_ids": state.output_ids, "meta_info": meta_info}  # shared, as in SGLang
            else:
                continue
            if state.finished:
                del self.rid_to_state[rid]
            state.out_list.append(out)
            state.event.set()

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        if not abort_all and not rid:
            logger.warning("Ignore abort_request with empty rid and abort_all=False")
            return
        if not abort_all and rid not in self.rid_to_state:
            return
        self.fake_aborted.append(rid)
        self.scheduler.abort(rid, abort_all)
