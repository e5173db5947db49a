"""The event plane: KV events and load metrics from workers to routers (direct TCP, or NATS)."""

from __future__ import annotations

from dynamo.runtime.events.base import EventPlaneError, EventPublisher, EventSubscriber
from dynamo.runtime.settings import EventPlane, RuntimeSettings

__all__ = ["EventPlaneError", "EventPublisher", "EventSubscriber", "create_publisher", "create_subscriber"]


def create_publisher(settings: RuntimeSettings, host: str = "127.0.0.1", port: int = 0) -> EventPublisher:
    """The publisher ``settings.event_plane`` asks for (not yet started); ``host`` is the bind address."""
    if EventPlane(settings.event_plane) is EventPlane.DIRECT:
        from dynamo.runtime.events.direct import DirectPublisher

        return DirectPublisher(host, port)
    try:
        from dynamo.runtime.events.nats import NatsPublisher  # type: ignore[import-not-found]
    except ImportError as exc:
        raise RuntimeError(f"the NATS event plane is not available: {exc}") from exc
    return NatsPublisher.from_settings(settings)  # type: ignore[no-any-return]


def create_subscriber(settings: RuntimeSettings) -> EventSubscriber:
    if EventPlane(settings.event_plane) is EventPlane.DIRECT:
        from dynamo.runtime.events.direct import DirectSubscriber

        return DirectSubscriber()
    try:
        from dynamo.runtime.events.nats import NatsSubscriber  # type: ignore[import-not-found]
    except ImportError as exc:
        raise RuntimeError(f"the NATS event plane is not available: {exc}") from exc
    return NatsSubscriber.from_settings(settings)  # type: ignore[no-any-return]
