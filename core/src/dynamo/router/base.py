"""What a router needs to know about a worker, and the router interface.

A router chooses one worker for one request. It never sends anything itself; the frontend's
push-router does that, reporting back when a request starts and ends so load can be tracked.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dynamo.runtime.records import InstanceRecord, ModelCard


@dataclass(eq=False)
class Worker:
    """A routable worker instance, as the frontend sees it."""

    instance_id: int
    record: InstanceRecord
    card: ModelCard
    #: requests this frontend has in flight on the worker
    in_flight: int = 0
    extra: dict[str, object] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RouteRequest:
    """What routing may look at: the request's token ids and its id."""

    request_id: str
    token_ids: list[int]


class Router(abc.ABC):
    """Picks a worker among candidates (never empty)."""

    @abc.abstractmethod
    def select(self, workers: list[Worker], request: RouteRequest) -> Worker: ...

    def on_start(self, worker: Worker, request: RouteRequest) -> None:
        """The request was sent to ``worker``."""

    def on_first_token(self, worker: Worker, request: RouteRequest) -> None:
        """The first response arrived from ``worker``: the prompt is prefilled."""

    def on_end(self, worker: Worker, request: RouteRequest) -> None:
        """The request finished on ``worker`` (successfully or not)."""

    def add_worker(self, worker: Worker) -> None:
        """A worker joined (called by the model registry)."""

    def remove_worker(self, instance_id: int) -> None:
        """A worker left; forget everything about it."""

    async def aclose(self) -> None:
        return None
