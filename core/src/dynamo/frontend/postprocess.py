"""Postprocessing: incremental detokenization and stop strings.

``DecodeStream`` (HF tokenizers) never splits a multi-byte character: it returns ``None`` until a
token completes valid UTF-8. ``StopMatcher`` holds back text that may be the start of a stop string.
"""

from __future__ import annotations

from tokenizers import Tokenizer
from tokenizers.decoders import DecodeStream


class StopMatcher:
    """Finds the first stop string in a growing text; emits only text that cannot be part of one."""

    __slots__ = ("stops", "_pending", "_max")

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._pending = ""
        self._max = max((len(s) for s in self.stops), default=0)

    def feed(self, text: str) -> tuple[str, bool]:
        """Add ``text``; return ``(text safe to emit, stopped)``."""
        if not self.stops:
            return text, False
        pending = self._pending + text
        first = -1
        for stop in self.stops:
            idx = pending.find(stop)
            if idx != -1 and (first == -1 or idx < first):
                first = idx
        if first != -1:
            self._pending = ""
            return pending[:first], True
        hold = self._holdback(pending)
        self._pending = pending[len(pending) - hold :] if hold else ""
        return pending[: len(pending) - hold], False

    def _holdback(self, text: str) -> int:
        """Length of the longest suffix of ``text`` that is a proper prefix of a stop string."""
        for n in range(min(self._max - 1, len(text)), 0, -1):
            tail = text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def flush(self) -> str:
        """Text held back when the stream ended without a stop string."""
        pending, self._pending = self._pending, ""
        return pending


class Detokenizer:
    """Token ids in, text out, one request at a time."""

    __slots__ = ("_tokenizer", "_stream", "_step")

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._stream = DecodeStream(skip_special_tokens=skip_special_tokens)
        self._step = self._stream.step

    def feed(self, token_ids: list[int]) -> str:
        tok = self._tokenizer
        step = self._step
        if len(token_ids) == 1:
            return step(tok, token_ids[0]) or ""
        return "".join(filter(None, (step(tok, t) for t in token_ids)))
