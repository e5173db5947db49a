"""The conformance kit against the built-in mocker engine, built through the plugin manager like any
third-party engine."""

from __future__ import annotations

from dynamo.plugin import Engine, EngineContext, plugin_manager
from dynamo.plugin.testing import EngineConformance


class TestMockerConformance(EngineConformance):
    def make_engine(self) -> Engine:
        return plugin_manager().get("mocker").factory(EngineContext(argv=["--speedup-ratio", "100"]))


class TestMockerSmallBatchConformance(EngineConformance):
    """Few sequences and a small step budget: the 32 concurrent requests queue and prefill in chunks."""

    def make_engine(self) -> Engine:
        argv = ["--speedup-ratio", "100", "--max-num-seqs", "4", "--max-num-batched-tokens", "64"]
        return plugin_manager().get("mocker").factory(EngineContext(argv=argv))
