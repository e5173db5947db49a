"""Log-probabilities in OpenAI's two shapes, built from the engine's per-token ``Delta`` fields.

Only requests that ask for log-probabilities pay for this: the token loop calls ``add`` only when
a collector exists, and entries are formatted when a chunk or response is written.

- chat: ``{"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token", "logprob", "bytes"}]}]}``
- completions: ``{"tokens", "token_logprobs", "top_logprobs": [{token: logprob}], "text_offset"}``
"""

from __future__ import annotations

from collections.abc import Callable

from dynamo.plugin.types import Delta


class LogprobCollector:
    """Accumulates one choice's token log-probabilities until a chunk or response takes them."""

    __slots__ = ("_text", "_top", "_chat", "_pending", "_offset")

    def __init__(self, token_text: Callable[[int], str], top: int, chat: bool, offset: int = 0) -> None:
        self._text = token_text
        self._top = top
        self._chat = chat
        self._pending: list[tuple[int, float, dict[int, float] | None]] = []
        self._offset = offset  # completions: character offset of the next token in the text

    def add(self, delta: Delta) -> None:
        lps = delta.logprobs
        if lps is None:
            return
        tops = delta.top_logprobs
        for i, (tid, lp) in enumerate(zip(delta.token_ids, lps, strict=False)):
            self._pending.append((tid, lp, tops[i] if tops is not None and i < len(tops) else None))

    def __bool__(self) -> bool:
        return bool(self._pending)

    def take(self) -> dict | None:
        """The pending entries in OpenAI's shape (``None`` when there are none), then forget them."""
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        return self._chat_shape(pending) if self._chat else self._completion_shape(pending)

    def empty(self) -> dict:
        return {"content": [], "refusal": None} if self._chat else {
            "tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}

    def _best(self, top: dict[int, float] | None) -> list[tuple[int, float]]:
        if not top or not self._top:
            return []
        return sorted(top.items(), key=lambda kv: -kv[1])[: self._top]

    def _chat_shape(self, pending: list[tuple[int, float, dict[int, float] | None]]) -> dict:
        text = self._text
        content = []
        for tid, lp, top in pending:
            s = text(tid)
            content.append({
                "token": s, "logprob": lp, "bytes": list(s.encode()),
                "top_logprobs": [
                    {"token": (t := text(alt)), "logprob": v, "bytes": list(t.encode())}
                    for alt, v in self._best(top)
                ],
            })
        return {"content": content, "refusal": None}

    def _completion_shape(self, pending: list[tuple[int, float, dict[int, float] | None]]) -> dict:
        text = self._text
        tokens, values, tops, offsets = [], [], [], []
        for tid, lp, top in pending:
            s = text(tid)
            tokens.append(s)
            values.append(lp)
            best = {text(alt): v for alt, v in self._best(top)}
            best.setdefault(s, lp)  # the sampled token is always listed, as vLLM does
            tops.append(best)
            offsets.append(self._offset)
            self._offset += len(s)
        return {"tokens": tokens, "token_logprobs": values, "top_logprobs": tops, "text_offset": offsets}

