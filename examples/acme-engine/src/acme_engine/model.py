"""A tiny bigram model over the request's own tokens: the "weights" are the prompt.

The next token is one that followed the last token somewhere earlier in the context (prompt and
output so far): greedily the most frequent follower (the latest one on a tie), or, when sampling,
a follower drawn in proportion to how often it followed. A token never seen before is followed by
the prompt's first token, so a prompt is echoed round and round. Pure Python, no I/O, no asyncio.
"""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Iterable


class Bigrams:
    """Follower counts of one sequence, updated as it grows."""

    def __init__(self, tokens: Iterable[int]) -> None:
        self.tokens: list[int] = []
        self.followers: defaultdict[int, Counter[int]] = defaultdict(Counter)
        #: position of the latest occurrence of each (token, follower) pair, to break ties
        self.latest: dict[tuple[int, int], int] = {}
        for token in tokens:
            self.append(token)

    def append(self, token: int) -> None:
        if self.tokens:
            previous = self.tokens[-1]
            self.followers[previous][token] += 1
            self.latest[previous, token] = len(self.tokens)
        self.tokens.append(token)

    def next_token(self, rng: random.Random | None = None) -> int:
        """The token after the sequence: greedy without ``rng``, sampled with one."""
        counts = self.followers.get(self.tokens[-1])
        if not counts:
            return self.tokens[0]
        if rng is None:
            last = self.tokens[-1]
            return max(counts, key=lambda t: (counts[t], self.latest[last, t]))
        candidates = sorted(counts)
        return rng.choices(candidates, weights=[counts[t] for t in candidates])[0]
