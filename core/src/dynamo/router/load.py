"""Load tracking: what routers know of each worker's load.

``ActiveLoad``: the KV blocks of the requests this router has in flight, per worker (the KV
router's cost). ``LoadMonitor``: the load workers publish (the least-loaded router's tie-breaker
and its view of other frontends' requests).

For ``ActiveLoad``, a request adds its prompt blocks when it is routed and releases them when it
ends; its uncached prompt blocks also count as *prefill* load until its first token arrives.
Blocks that several in-flight requests on one worker share (same sequence hash) count once, as
they do in the engine's memory. Only this router's own requests are seen: it is exact for one frontend and a
lower bound with several.
"""

from __future__ import annotations

from dataclasses import dataclass

from dynamo.plugin.capabilities import LoadMetrics
from dynamo.router.base import Worker
from dynamo.runtime.events import EventSubscriber, messages


@dataclass(slots=True)
class _Request:
    worker: int
    hashes: list[int]
    #: prompt blocks beyond the full ones (a partial block, never shared)
    partial: float
    #: uncached prompt blocks still to prefill (0 once the first token came back)
    prefill: float


class ActiveLoad:
    def __init__(self) -> None:
        self._requests: dict[str, _Request] = {}
        self._refs: dict[int, dict[int, int]] = {}
        self._partial: dict[int, float] = {}
        self._prefill: dict[int, float] = {}

    def __len__(self) -> int:
        return len(self._requests)

    def decode_blocks(self, worker: int) -> float:
        """Blocks held by this router's requests in flight on ``worker``."""
        return len(self._refs.get(worker, ())) + self._partial.get(worker, 0.0)

    def prefill_blocks(self, worker: int) -> float:
        """Uncached prompt blocks of this router's requests on ``worker`` still being prefilled."""
        return self._prefill.get(worker, 0.0)

    def add(
        self, request_id: str, worker: int, hashes: list[int], prompt_blocks: float, uncached: float
    ) -> None:
        if request_id in self._requests:
            self.remove(request_id)
        partial = max(prompt_blocks - len(hashes), 0.0)
        self._requests[request_id] = _Request(worker, hashes, partial, uncached)
        refs = self._refs.setdefault(worker, {})
        for h in hashes:
            refs[h] = refs.get(h, 0) + 1
        self._partial[worker] = self._partial.get(worker, 0.0) + partial
        self._prefill[worker] = self._prefill.get(worker, 0.0) + uncached

    def prefill_done(self, request_id: str) -> None:
        req = self._requests.get(request_id)
        if req is not None:
            self._end_prefill(req)

    def remove(self, request_id: str) -> None:
        req = self._requests.pop(request_id, None)
        if req is None:
            return
        self._end_prefill(req)
        refs = self._refs.get(req.worker)
        if refs is not None:
            for h in req.hashes:
                count = refs.get(h, 0)
                if count > 1:
                    refs[h] = count - 1
                else:
                    refs.pop(h, None)
        self._partial[req.worker] = max(self._partial.get(req.worker, 0.0) - req.partial, 0.0)

    def _end_prefill(self, req: _Request) -> None:
        if req.prefill:
            self._prefill[req.worker] = max(self._prefill.get(req.worker, 0.0) - req.prefill, 0.0)
            req.prefill = 0.0

    def remove_worker(self, worker: int) -> None:
        for rid in [rid for rid, req in self._requests.items() if req.worker == worker]:
            del self._requests[rid]
        self._refs.pop(worker, None)
        self._partial.pop(worker, None)
        self._prefill.pop(worker, None)


class LoadMonitor:
    """The load each followed worker last published on the event plane (``kv-metrics``).

    Reports lag by up to the publishing interval (100 ms), but they count every frontend's
    requests, and the engine's own queue, where a router's in-flight count sees only its own.
    """

    def __init__(self, subscriber: EventSubscriber) -> None:
        self.subscriber = subscriber
        self.loads: dict[int, LoadMetrics] = {}
        subscriber.start([messages.KV_METRICS], self._on_message)

    def _on_message(self, topic: str, payload: bytes) -> None:
        report = messages.decode_load(payload)
        self.loads[report.worker_id] = report.metrics

    def follow(self, worker: Worker) -> None:
        self.subscriber.follow(worker.instance_id, worker.record.transport)

    def unfollow(self, instance_id: int) -> None:
        self.subscriber.unfollow(instance_id)
        self.loads.pop(instance_id, None)

    async def aclose(self) -> None:
        await self.subscriber.aclose()
