"""Reading a distribution's declared requirements and checking them against what is installed.

Uses ``packaging`` when it is importable (it nearly always is, next to pip) and falls back to
name-only checks without it: dynamo-core does not depend on it just for this.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from importlib import metadata

from dynamo.check.engines import dist_version

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")
_CLAUSE = re.compile(r"^\s*(>=|<=|==|!=|>|<)\s*([0-9][0-9.]*)\s*$")


@dataclass(frozen=True)
class Unmet:
    """A requirement that is missing (``installed`` is None) or installed at a version it excludes."""

    requirement: str
    name: str
    installed: str | None

    def describe(self) -> str:
        if self.installed is None:
            return f"{self.name} is not installed"
        return f"it needs {self.requirement} ({self.installed} is installed)"


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(marker: str) -> bool:
    marker = marker.strip()
    if not marker:
        return True
    if "extra" in marker:
        return False  # an optional extra the user did not necessarily ask for
    try:
        from packaging.markers import Marker
    except ImportError:
        return True
    try:
        return bool(Marker(marker).evaluate())
    except Exception:
        return True


def _satisfies(requirement: str, version: str) -> bool:
    try:
        from packaging.requirements import Requirement
    except ImportError:
        return True
    try:
        return Requirement(requirement).specifier.contains(version, prereleases=True)
    except Exception:
        return True


def unmet_requirements(dist: metadata.Distribution, skip: frozenset[str] = frozenset()) -> list[Unmet]:
    """``dist``'s unconditional requirements that are missing or at an excluded version.

    ``skip`` holds normalized names checked elsewhere (an engine library with several providers).
    """
    unmet = []
    for line in dist.requires or ():
        requirement, _, marker = line.partition(";")
        match = _NAME.match(requirement)
        if not match or not _applies(marker) or normalize(match.group(1)) in skip:
            continue
        name = match.group(1)
        installed = dist_version(name)
        if installed is None or not _satisfies(requirement.strip(), installed):
            unmet.append(Unmet(requirement.strip(), name, installed))
    return unmet


def python_satisfies(spec: str | None) -> bool | None:
    """Whether this interpreter meets a ``Requires-Python`` spec; ``None`` when it cannot tell."""
    if not spec:
        return None
    current = ".".join(map(str, sys.version_info[:3]))
    try:
        from packaging.specifiers import SpecifierSet

        return SpecifierSet(spec).contains(current, prereleases=True)
    except ImportError:
        pass
    except Exception:
        return None
    have = sys.version_info[:3]
    for clause in spec.split(","):
        m = _CLAUSE.match(clause)
        if not m:
            return None
        want = tuple(int(p) for p in m.group(2).strip(".").split("."))
        cmp = (have[: len(want)] > want) - (have[: len(want)] < want)
        if not {">=": cmp >= 0, "<=": cmp <= 0, "==": cmp == 0, "!=": cmp != 0, ">": cmp > 0, "<": cmp < 0}[
            m.group(1)
        ]:
            return False
    return True
