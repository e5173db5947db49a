from __future__ import annotations

import logging
import types

import pytest

from dynamo.plugin import EngineContext, EngineSpec, hookimpl
from dynamo.plugin.errors import EngineConflict, EngineNotFound
from dynamo.plugin.manager import PluginManager


def _plugin(*names: str, dist: str = "") -> object:
    class P:
        @hookimpl
        def dynamo_engines(self) -> list[EngineSpec]:
            return [EngineSpec(name=n, factory=lambda ctx: None, plugin=dist) for n in names]  # type: ignore[arg-type,return-value]

    return P()


def _pm(*plugins: object) -> PluginManager:
    pm = PluginManager(load_entry_points=False)
    for p in plugins:
        pm.register(p)
    pm.load()
    return pm


def test_engines_are_selected_by_name() -> None:
    pm = _pm(_plugin("alpha", dist="a"), _plugin("beta", dist="b"))
    assert list(pm.engines()) == ["alpha", "beta"]
    assert pm.get("beta").plugin == "b"


def test_unknown_engine_lists_what_is_installed() -> None:
    pm = _pm(_plugin("alpha"), _plugin("beta"))
    with pytest.raises(EngineNotFound, match=r"no engine named 'gamma'.*available: alpha, beta"):
        pm.get("gamma")


def test_two_plugins_claiming_one_name_is_an_error_naming_both() -> None:
    pm = _pm(_plugin("same", dist="first-dist"), _plugin("same", dist="second-dist"))
    with pytest.raises(EngineConflict) as err:
        pm.get("same")
    assert "first-dist" in str(err.value) and "second-dist" in str(err.value)


def test_failing_plugin_is_logged_and_skipped(caplog: pytest.LogCaptureFixture) -> None:
    class Broken:
        @hookimpl
        def dynamo_engines(self) -> list[EngineSpec]:
            raise RuntimeError("boom")

    pm = _pm(Broken(), _plugin("ok"))
    with caplog.at_level(logging.WARNING):
        assert list(pm.engines()) == ["ok"]
    assert "boom" in caplog.text


def test_misspelled_hook_is_caught() -> None:
    bad = types.SimpleNamespace()

    @hookimpl
    def dynamo_engine() -> list[EngineSpec]:  # missing the plural "s"
        return []

    bad.dynamo_engine = dynamo_engine
    pm = PluginManager(load_entry_points=False)
    pm.register(bad)
    with pytest.raises(Exception, match="dynamo_engine"):
        pm.load()


def test_installed_entry_points_include_the_builtin_mocker() -> None:
    pm = PluginManager()
    spec = pm.get("mocker")
    engine = spec.factory(EngineContext(argv=["--speedup-ratio", "10"]))
    assert type(engine).__name__ == "MockerEngine"
