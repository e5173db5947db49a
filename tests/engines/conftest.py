"""Fixtures for the engine tests: the fake engine libraries under their real module names.

A fake is importable only while its fixture is active: ``tests/engines/fakes`` goes to the front of
``sys.path`` and any real ``sglang`` / ``tensorrt_llm`` modules leave ``sys.modules`` for that time.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

FAKES_DIR = Path(__file__).parent / "fakes"


def _drop(name: str) -> None:
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


@contextlib.contextmanager
def fake_library(name: str) -> Iterator[None]:
    """Make ``import <name>`` load the fake for the duration of the block."""
    with pytest.MonkeyPatch.context() as mp:
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            mp.delitem(sys.modules, module)
        mp.syspath_prepend(str(FAKES_DIR))
        try:
            yield
        finally:
            _drop(name)  # the fake's modules; the monkeypatch then restores any real ones


@contextlib.contextmanager
def library_missing(name: str) -> Iterator[None]:
    """Make ``import <name>`` fail as if the library were not installed."""
    with pytest.MonkeyPatch.context() as mp:
        for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
            mp.delitem(sys.modules, module)
        mp.setitem(sys.modules, name, None)
        yield


@pytest.fixture(scope="class")
def fake_sglang() -> Iterator[None]:
    with fake_library("sglang"):
        yield


@pytest.fixture(scope="class")
def fake_tensorrt_llm() -> Iterator[None]:
    with fake_library("tensorrt_llm"):
        yield


@pytest.fixture
def no_sglang() -> Iterator[None]:
    with library_missing("sglang"):
        yield


@pytest.fixture
def no_tensorrt_llm() -> Iterator[None]:
    with library_missing("tensorrt_llm"):
        yield
