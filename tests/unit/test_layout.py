"""Namespace hygiene: ``dynamo`` is a PEP 420 namespace shared by several distributions."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTIONS = [ROOT / "core", *sorted((ROOT / "plugins").glob("*/")), *sorted((ROOT / "examples").glob("*/"))]


def _shipped(dist: Path) -> set[str]:
    src = dist / "src"
    return {
        p.relative_to(src).as_posix()
        for p in src.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and not p.name.endswith((".pyc", ".egg-info"))
        and ".egg-info" not in p.as_posix()
    }


def test_no_distribution_ships_the_namespace_init() -> None:
    offenders = [str(d / "src/dynamo/__init__.py") for d in DISTRIBUTIONS if (d / "src/dynamo/__init__.py").exists()]
    assert offenders == [], f"a namespace __init__.py hides every other distribution's modules: {offenders}"


def test_no_two_distributions_ship_the_same_file() -> None:
    seen: dict[str, str] = {}
    clashes = []
    for dist in DISTRIBUTIONS:
        if not (dist / "pyproject.toml").exists():
            continue
        for rel in _shipped(dist):
            if rel in seen:
                clashes.append(f"{rel}: {seen[rel]} and {dist.name}")
            seen[rel] = dist.name
    assert clashes == []


def test_every_distribution_uses_its_own_subpackage() -> None:
    for dist in DISTRIBUTIONS:
        if not (dist / "pyproject.toml").exists() or not (dist / "src/dynamo").exists():
            continue
        top = {p.name for p in (dist / "src/dynamo").iterdir() if p.is_dir() and p.name != "__pycache__"}
        assert top, f"{dist.name} ships nothing under dynamo/"
