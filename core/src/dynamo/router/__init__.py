"""Routers: choose the worker for each request (round-robin, random, least-loaded, kv)."""

from __future__ import annotations

import enum

from dynamo.router.base import RouteRequest, Router, Worker

__all__ = ["RouterMode", "Router", "RouteRequest", "Worker", "create_router"]


class RouterMode(str, enum.Enum):
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"
    LEAST_LOADED = "least-loaded"
    KV = "kv"


def create_router(mode: RouterMode | str, **options: object) -> Router:
    mode = RouterMode(mode)
    if mode is RouterMode.ROUND_ROBIN:
        from dynamo.router.basic import RoundRobinRouter

        return RoundRobinRouter()
    if mode is RouterMode.RANDOM:
        from dynamo.router.basic import RandomRouter

        return RandomRouter()
    if mode is RouterMode.LEAST_LOADED:
        from dynamo.router.basic import LeastLoadedRouter

        return LeastLoadedRouter()
    from dynamo.router.kv import KvRouter  # type: ignore[import-not-found]

    return KvRouter(**options)  # type: ignore[no-any-return]
