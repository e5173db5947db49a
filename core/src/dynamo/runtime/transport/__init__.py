"""The request plane: token ids out to a worker, deltas back (TCP by default, NATS optional)."""

from __future__ import annotations

from dynamo.runtime.settings import RequestPlane, RuntimeSettings
from dynamo.runtime.transport.base import Handler, RequestPlaneClient, RequestPlaneServer

__all__ = ["Handler", "RequestPlaneClient", "RequestPlaneServer", "create_client", "create_server"]


def create_server(settings: RuntimeSettings, host: str = "127.0.0.1", port: int = 0) -> RequestPlaneServer:
    if RequestPlane(settings.request_plane) is RequestPlane.TCP:
        from dynamo.runtime.transport.tcp import TcpServer

        return TcpServer(host, port)
    from dynamo.runtime.transport.nats import NatsServer  # type: ignore[import-not-found]

    return NatsServer.from_settings(settings)


def create_client(settings: RuntimeSettings) -> RequestPlaneClient:
    if RequestPlane(settings.request_plane) is RequestPlane.TCP:
        from dynamo.runtime.transport.tcp import TcpClient

        return TcpClient()
    from dynamo.runtime.transport.nats import NatsClient  # type: ignore[import-not-found]

    return NatsClient.from_settings(settings)
