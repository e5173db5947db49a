"""Discovery backends behind one interface: ``mem``, ``file`` and ``etcd``."""

from __future__ import annotations

from dynamo.runtime.discovery.base import Discovery, EventKind, WatchEvent
from dynamo.runtime.settings import DiscoveryBackend, RuntimeSettings

__all__ = ["Discovery", "EventKind", "WatchEvent", "create_discovery"]


def create_discovery(settings: RuntimeSettings) -> Discovery:
    """The discovery backend ``settings`` ask for (not yet started)."""
    backend = DiscoveryBackend(settings.discovery_backend)
    if backend is DiscoveryBackend.MEM:
        from dynamo.runtime.discovery.mem import MemDiscovery

        return MemDiscovery()
    if backend is DiscoveryBackend.FILE:
        from dynamo.runtime.discovery.file import FileDiscovery

        return FileDiscovery(settings.file_kv, ttl=settings.lease_ttl)
    if backend is DiscoveryBackend.ETCD:
        try:
            from dynamo.runtime.discovery.etcd import EtcdDiscovery  # type: ignore[import-not-found]
        except ImportError as exc:
            raise RuntimeError(f"etcd discovery is not available: {exc}") from exc
        return EtcdDiscovery.from_settings(settings)
    raise ValueError(f"unknown discovery backend {backend!r}")
