"""The plugin author's guide (docs/plugins/) against the code it documents.

As datasette does for its hooks: the reference page is generated from the docstrings of
``dynamo.plugin`` and must be up to date, every hook (and each of its arguments) and every ``Engine``
method must be documented there, and the tutorial's code must be the example plugin's code.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path
from types import ModuleType

import dynamo.plugin
import pytest
from dynamo.plugin import hookspecs
from dynamo.plugin.engine import Engine

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "plugins"
REFERENCE = DOCS / "reference.md"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gen_plugin_reference", ROOT / "scripts" / "gen_plugin_reference.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_is_generated_from_the_current_docstrings() -> None:
    assert REFERENCE.read_text() == generator().render(), (
        "docs/plugins/reference.md is out of date with the docstrings of dynamo.plugin: "
        "run python scripts/gen_plugin_reference.py"
    )


@pytest.mark.parametrize("name", [name for name, _ in generator().hook_specs(hookspecs)])
def test_every_hook_and_its_arguments_are_documented(name: str) -> None:
    fn = getattr(hookspecs, name)
    assert name.startswith(f"{hookspecs.PROJECT}_"), "hooks carry the project prefix"
    assert inspect.getdoc(fn), f"hook {name} has no docstring: its docstring is the contract"
    section = _section(REFERENCE.read_text(), f"### `{name}`")
    for arg in inspect.signature(fn).parameters:
        assert f"`{arg}`" in section, f"argument {arg!r} of hook {name} is not documented"


ENGINE_METHODS = [n for n, v in vars(Engine).items() if not n.startswith("_") and callable(v)]


@pytest.mark.parametrize("name", ENGINE_METHODS)
def test_every_engine_method_is_documented(name: str) -> None:
    assert inspect.getdoc(getattr(Engine, name)), f"Engine.{name} has no docstring"
    assert re.search(rf"^#### `{name}`", REFERENCE.read_text(), re.M), f"Engine.{name} is not in reference.md"


def test_the_engine_contract_states_what_the_kit_enforces() -> None:
    abort, generate, aclose = (
        inspect.getdoc(getattr(Engine, n)) or "" for n in ("abort", "generate", "aclose")
    )
    assert "CANCELLED" in abort, "abort ends the stream with a final CANCELLED delta"
    assert "EngineError" in generate and "EngineShutdown" in generate and "aclose" in generate


def test_every_public_name_is_in_the_reference() -> None:
    text = REFERENCE.read_text()
    missing = [name for name in dynamo.plugin.__all__ if name != "errors" and f"`{name}`" not in text]
    assert missing == []


def test_the_guide_links_its_pages() -> None:
    readme = (DOCS / "README.md").read_text()
    for page in ("tutorial.md", "reference.md"):
        assert f"({page}" in readme, f"docs/plugins/README.md does not link {page}"
    assert "(reference.md" in (DOCS / "tutorial.md").read_text()


def test_the_tutorials_code_is_the_example_plugins() -> None:
    """Each code block after ``<!-- file: PATH -->`` in the tutorial is that file, exactly."""
    tutorial = (DOCS / "tutorial.md").read_text()
    blocks = re.findall(r"<!-- file: (\S+) -->\n```\w*\n(.*?)```\n", tutorial, re.S)
    assert len(blocks) >= 5, "the tutorial should show the example plugin's files"
    for path, code in blocks:
        assert (ROOT / path).read_text() == code, f"the tutorial's copy of {path} is out of date"


def _section(text: str, heading: str) -> str:
    start = text.index(heading)
    following = re.search(r"^#{1,3} ", text[start + len(heading) :], re.M)
    return text[start : start + len(heading) + (following.start() if following else len(text))]
