"""One typed facade over pluggy: load plugins, list engines, pick one by name.

The rest of the code never touches ``pm.hook``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import pluggy

from dynamo.plugin import hookspecs
from dynamo.plugin.engine import EngineSpec
from dynamo.plugin.errors import EngineConflict, EngineNotFound, PluginError

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dynamo"


@dataclass
class PluginManager:
    """Collects ``EngineSpec``s from installed plugins (entry points) and explicit registrations."""

    load_entry_points: bool = True
    _pm: pluggy.PluginManager = field(init=False)
    _failed: dict[str, BaseException] = field(init=False, default_factory=dict)
    _loaded: bool = field(init=False, default=False)

    def __post_init__(self) -> None:
        self._pm = pluggy.PluginManager(hookspecs.PROJECT)
        self._pm.add_hookspecs(hookspecs)

    def register(self, plugin: object, name: str | None = None) -> None:
        """Register a plugin object or module directly (tests, embedders)."""
        self._pm.register(plugin, name=name)

    def load(self) -> None:
        """Load entry-point plugins once; a plugin that fails to load is logged and skipped."""
        if self._loaded:
            return
        self._loaded = True
        if self.load_entry_points:
            self._load_entry_points()
        self._pm.check_pending()

    def _load_entry_points(self) -> None:
        from importlib.metadata import entry_points

        for ep in entry_points(group=ENTRY_POINT_GROUP):
            if self._pm.get_plugin(ep.name) is not None or ep.name in self._failed:
                continue
            try:
                self._pm.register(ep.load(), name=ep.name)
            except Exception as exc:  # a broken plugin must not take the others down
                self._failed[ep.name] = exc
                log.warning("engine plugin %r failed to load and is skipped: %s", ep.name, exc)

    @property
    def failed(self) -> dict[str, BaseException]:
        """Plugins that failed to load, by entry-point name."""
        self.load()
        return dict(self._failed)

    def _collect(self) -> list[EngineSpec]:
        self.load()
        specs: list[EngineSpec] = []
        for impl in self._pm.hook.dynamo_engines.get_hookimpls():
            plugin_name = self._pm.get_name(impl.plugin) or "?"
            try:
                result = impl.function()
            except Exception as exc:
                self._failed[plugin_name] = exc
                log.warning("engine plugin %r failed in dynamo_engines: %s", plugin_name, exc)
                continue
            for spec in result or ():
                specs.append(spec if spec.plugin else replace(spec, plugin=plugin_name))
        return specs

    def engines(self) -> dict[str, EngineSpec]:
        """All engines by name. Raises ``EngineConflict`` when two plugins claim one name."""
        by_name: dict[str, EngineSpec] = {}
        for spec in self._collect():
            other = by_name.get(spec.name)
            if other is not None:
                raise EngineConflict(
                    f"engine {spec.name!r} is provided by two plugins: "
                    f"{other.plugin!r} and {spec.plugin!r}; uninstall one of them"
                )
            by_name[spec.name] = spec
        return dict(sorted(by_name.items()))

    def get(self, name: str) -> EngineSpec:
        """The engine called ``name``; an unknown name lists what is installed."""
        engines = self.engines()
        spec = engines.get(name)
        if spec is not None:
            return spec
        if name in self._failed:
            raise PluginError(f"engine plugin {name!r} failed to load: {self._failed[name]}")
        available = ", ".join(engines) or "none"
        raise EngineNotFound(f"no engine named {name!r} is installed (available: {available})")


def plugin_manager(extra_plugins: Iterable[object] = ()) -> PluginManager:
    """A loaded plugin manager with entry-point plugins plus ``extra_plugins``."""
    pm = PluginManager()
    for plugin in extra_plugins:
        pm.register(plugin)
    pm.load()
    return pm
