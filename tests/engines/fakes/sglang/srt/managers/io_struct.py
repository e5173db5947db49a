"""Fake ``sglang.srt.managers.io_struct``: the one request type the offline engine builds."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any


@dataclasses.dataclass
class GenerateReqInput:
    text: str | None = None
    input_ids: list[int] | None = None
    sampling_params: dict[str, Any] | None = None
    stream: bool = False
    rid: str | None = None

    def normalize(self) -> None:
        if self.text is None and self.input_ids is None:
            raise ValueError("Either text, input_ids or input_embeds should be provided.")
        if self.text is not None:
            raise NotImplementedError("the SGLang fake takes input_ids only (no tokenizer)")
        if self.sampling_params is None:
            self.sampling_params = {}
        if self.rid is None:
            self.rid = uuid.uuid4().hex
