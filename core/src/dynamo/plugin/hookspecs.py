"""The hook specification of Dynamo engine plugins. These docstrings are the contract.

A plugin is a distribution with an entry point in the group ``dynamo`` naming a module (or object)
that implements one or more of these hooks with ``@dynamo.plugin.hookimpl``. Hooks are called once,
at start-up, by the plugin manager; requests never go through pluggy.
"""

from __future__ import annotations

from collections.abc import Iterable

import pluggy

from dynamo.plugin.engine import EngineSpec

PROJECT = "dynamo"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def dynamo_engines() -> Iterable[EngineSpec]:
    """Return the engines this plugin offers, as ``EngineSpec`` objects.

    Called once per process (worker host, ``--list-engines``, ``dynamo.check``), when the plugin
    manager first loads plugins. It must be cheap: it must not import the engine library (vllm,
    sglang, tensorrt_llm, torch) or touch a GPU; do that inside ``EngineSpec.factory``.

    Each engine name must be unique across all installed plugins: two plugins claiming the same
    name is an error naming both, raised when that engine is selected or listed.
    """
