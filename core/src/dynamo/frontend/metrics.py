"""The frontend's Prometheus metrics (NVIDIA Dynamo's names) and its one log line per request.

Every request served by an engine gets one ``Tracker``. While the request runs it only stores
floats and ints; counters and histograms are touched once, when it ends, never per token (the
inter-token latency is the request's mean, ``(end - first token) / (tokens - 1)``). Gauges are
plain ints read at scrape time, so in-flight accounting costs two integer updates.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from dynamo.frontend.models import ModelEntry
    from dynamo.router.base import Worker

log = logging.getLogger("dynamo.frontend.requests")

disable_created_metrics()  # no *_created series: they double the output and nobody reads them

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250,
                   500)
ITL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
TOKEN_BUCKETS = (1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)

SUCCESS, ERROR, CANCELLED = "success", "error", "cancelled"


class _Bound:
    """The labelled children of one (model, endpoint, request type), looked up once."""

    __slots__ = ("ok", "err", "cancel", "ttft", "itl", "duration", "isl", "osl")

    def __init__(self, m: FrontendMetrics, model: str, endpoint: str, request_type: str) -> None:
        self.ok = m.requests.labels(model, endpoint, request_type, SUCCESS)
        self.err = m.requests.labels(model, endpoint, request_type, ERROR)
        self.cancel = m.cancellations.labels(model, endpoint, request_type)
        self.ttft = m.ttft.labels(model)
        self.itl = m.itl.labels(model)
        self.duration = m.duration.labels(model)
        self.isl = m.isl.labels(model)
        self.osl = m.osl.labels(model)


class FrontendMetrics:
    def __init__(self, prefix: str = "dynamo_frontend",
                 models: Callable[[], dict[str, ModelEntry]] | None = None) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(f"{prefix}_requests", "Requests answered, by outcome",
                                ["model", "endpoint", "request_type", "status"], registry=r)
        self.cancellations = Counter(f"{prefix}_model_cancellation",
                                     "Requests cancelled by a client disconnect",
                                     ["model", "endpoint", "request_type"], registry=r)
        self.ttft = Histogram(f"{prefix}_time_to_first_token_seconds", "Time to the first token",
                              ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.itl = Histogram(f"{prefix}_inter_token_latency_seconds", "Mean time between tokens, per request",
                             ["model"], buckets=ITL_BUCKETS, registry=r)
        self.duration = Histogram(f"{prefix}_request_duration_seconds", "Time from request to last byte",
                                  ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.isl = Histogram(f"{prefix}_input_sequence_tokens", "Prompt length in tokens",
                             ["model"], buckets=TOKEN_BUCKETS, registry=r)
        self.osl = Histogram(f"{prefix}_output_sequence_tokens", "Generated tokens per request",
                             ["model"], buckets=TOKEN_BUCKETS, registry=r)
        self.inflight: dict[str, int] = defaultdict(int)
        self.queued: dict[str, int] = defaultdict(int)
        self._bound: dict[tuple[str, str, bool], _Bound] = {}
        r.register(_Gauges(self, prefix, models or dict))

    def track(self, request_id: str, model: str, endpoint: str, stream: bool) -> Tracker:
        key = (model, endpoint, stream)
        bound = self._bound.get(key)
        if bound is None:
            bound = self._bound[key] = _Bound(self, model, endpoint, "stream" if stream else "unary")
        return Tracker(self, bound, request_id, model, endpoint, stream)

    def render(self) -> bytes:
        """This frontend's metrics, then the process-wide registry (migrations, process_* metrics)."""
        return generate_latest(self.registry) + generate_latest(REGISTRY)


class Tracker:
    """One request's timings and counts; ``finish`` records them (idempotent)."""

    __slots__ = ("_m", "_b", "request_id", "model", "endpoint", "stream", "start", "first", "prompt_tokens",
                 "completion_tokens", "cached_tokens", "worker", "user", "_done")

    def __init__(self, m: FrontendMetrics, bound: _Bound, request_id: str, model: str, endpoint: str,
                 stream: bool) -> None:
        self._m, self._b = m, bound
        self.request_id, self.model, self.endpoint, self.stream = request_id, model, endpoint, stream
        self.start = time.perf_counter()
        self.first = 0.0
        self.prompt_tokens = self.completion_tokens = self.cached_tokens = 0
        self.worker: int | None = None
        self.user: str | None = None
        self._done = False
        m.inflight[model] += 1
        m.queued[model] += 1

    def on_worker(self, worker: Worker) -> None:
        self.worker = worker.instance_id

    def first_token(self) -> None:
        if not self.first:
            self.first = time.perf_counter()
            self._m.queued[self.model] -= 1

    def finish(self, outcome: str, http_status: int, error: str | None = None) -> None:
        if self._done:
            return
        self._done = True
        end = time.perf_counter()
        m, b, model = self._m, self._b, self.model
        m.inflight[model] -= 1
        if not self.first:
            m.queued[model] -= 1
        (b.ok if outcome == SUCCESS else b.err).inc()
        if outcome == CANCELLED:
            b.cancel.inc()
        b.duration.observe(end - self.start)
        if self.prompt_tokens:
            b.isl.observe(self.prompt_tokens)
        ttft = None
        if self.first:
            ttft = self.first - self.start
            b.ttft.observe(ttft)
            b.osl.observe(self.completion_tokens)
            if self.completion_tokens > 1:
                b.itl.observe((end - self.first) / (self.completion_tokens - 1))
        if log.isEnabledFor(logging.INFO):
            self._log(outcome, http_status, error, ttft, end)

    def _log(self, outcome: str, http_status: int, error: str | None, ttft: float | None, end: float) -> None:
        log.info(
            "request %s model=%s endpoint=%s stream=%s worker=%s status=%d outcome=%s%s prompt_tokens=%d "
            "completion_tokens=%d cached_tokens=%d ttft_ms=%s duration_ms=%.1f%s",
            self.request_id, self.model, self.endpoint, str(self.stream).lower(),
            f"{self.worker:x}" if self.worker is not None else "-", http_status, outcome,
            f" error={error}" if error else "", self.prompt_tokens, self.completion_tokens,
            self.cached_tokens,
            f"{ttft * 1000:.1f}" if ttft is not None else "-", (end - self.start) * 1000,
            f" user={self.user!r}" if self.user else "",
        )


class _Gauges(Collector):
    """Gauges computed at scrape time from plain counters and the model registry."""

    def __init__(self, m: FrontendMetrics, prefix: str, models: Callable[[], dict[str, ModelEntry]]) -> None:
        self._m, self._prefix, self._models = m, prefix, models

    def collect(self) -> Iterator[Metric]:
        p = self._prefix
        inflight = GaugeMetricFamily(f"{p}_inflight_requests", "Requests being answered", labels=["model"])
        queued = GaugeMetricFamily(f"{p}_queued_requests", "Requests waiting for their first token",
                                   labels=["model"])
        for model, n in sorted(self._m.inflight.items()):
            inflight.add_metric([model], n)
        for model, n in sorted(self._m.queued.items()):
            queued.add_metric([model], n)
        workers = GaugeMetricFamily(f"{p}_model_workers", "Workers serving the model", labels=["model"])
        ctx = GaugeMetricFamily(f"{p}_model_context_length", "Context length in tokens", labels=["model"])
        block = GaugeMetricFamily(f"{p}_model_kv_cache_block_size", "KV cache block size in tokens",
                                  labels=["model"])
        for name, entry in sorted(self._models().items()):
            workers.add_metric([name], len(entry.workers))
            ctx.add_metric([name], entry.card.context_length)
            block.add_metric([name], entry.card.kv_cache_block_size)
        yield from (inflight, queued, workers, ctx, block)

    def describe(self) -> Iterator[Metric]:
        return iter(())
