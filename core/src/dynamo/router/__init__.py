"""Routers: choose the worker for each request (round-robin, random, least-loaded, kv)."""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING, Any

from dynamo.router.base import Router, RouteRequest, Worker

if TYPE_CHECKING:
    from dynamo.runtime.records import ModelCard

__all__ = ["RouterMode", "Router", "RouteRequest", "Worker", "create_router", "router_for_model"]


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

        return LeastLoadedRouter(**options)  # type: ignore[arg-type]
    from dynamo.router.kv import KvRouter

    return KvRouter(**options)  # type: ignore[arg-type]


def router_for_model(settings: Any, card: ModelCard) -> Router:
    """The router a frontend uses for one model, from its settings (``FrontendSettings``).

    In KV mode the router hashes blocks of the model card's KV block size, unless the frontend's
    ``--kv-cache-block-size`` overrides it, and follows the workers' events on the event plane
    (unless ``--no-router-kv-events``). The least-loaded router also reads the load workers publish.
    """
    mode = RouterMode(settings.router_mode)
    if mode not in (RouterMode.KV, RouterMode.LEAST_LOADED):
        return create_router(mode)
    from dynamo.runtime.events import create_subscriber

    if mode is RouterMode.LEAST_LOADED:  # also reads the load workers publish
        from dynamo.router.load import LoadMonitor

        return create_router(mode, monitor=LoadMonitor(create_subscriber(settings)))
    from dynamo.router.kv import KvRouterConfig

    block_size = settings.kv_cache_block_size or card.kv_cache_block_size
    config = KvRouterConfig.from_settings(settings, block_size, card.display_name)
    subscriber = create_subscriber(settings) if config.use_kv_events else None
    return create_router(mode, config=config, subscriber=subscriber)
