"""Load tracking: the KV blocks of the requests this router has in flight, per worker.

A request adds its prompt blocks when it is routed and releases them when it ends; its uncached
prompt blocks also count as *prefill* load until its first token arrives. Blocks that several
in-flight requests on one worker share (same sequence hash) count once, as they do in the
engine's memory. Only this router's own requests are seen: it is exact for one frontend and a
lower bound with several.
"""

from __future__ import annotations

from dataclasses import dataclass


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

    def add(self, request_id: str, worker: int, hashes: list[int], prompt_blocks: float, uncached: float) -> None:
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
