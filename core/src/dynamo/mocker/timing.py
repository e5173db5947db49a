"""The mocker's timing model (Dynamo's polynomial fit), in seconds, before the speed-up divisor."""

from __future__ import annotations


def prefill_seconds(new_tokens: int) -> float:
    """Time to prefill ``new_tokens`` uncached tokens; a fully cached prompt costs nothing."""
    if new_tokens <= 0:
        return 0.0
    t = float(new_tokens)
    return (4.209989e-7 * t * t + 1.518344e-2 * t + 16.50142) / 1000.0


def decode_step_seconds(kv_utilisation: float) -> float:
    """Time of one decode step at the given KV cache utilisation (0..1); at least 1 ms."""
    p = min(max(kv_utilisation, 0.0), 1.0)
    return max(-25.74 * p * p + 54.01 * p + 5.74, 1.0) / 1000.0
