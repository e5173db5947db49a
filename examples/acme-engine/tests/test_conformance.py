"""The acme engine against Dynamo's engine conformance kit, as every engine plugin runs it.

The kit (``dynamo.plugin.testing.EngineConformance``) is a base class: subclass it as ``Test...``,
say how to build an unstarted engine, and pytest runs the whole suite on it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dynamo.plugin import EngineContext, plugin_manager
from dynamo.plugin.testing import EngineConformance


class TestAcmeEngine(EngineConformance):
    """The engine as the worker host builds it: found by name, built by its factory."""

    model_dir: Path

    @pytest.fixture(scope="class")
    @classmethod
    def engine_environment(cls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
        # the engine reads only config.json (its context length) from the model directory
        cls.model_dir = tmp_path_factory.mktemp("model")
        (cls.model_dir / "config.json").write_text(json.dumps({"max_position_embeddings": 1024}))
        yield

    def make_engine(self):  # type: ignore[no-untyped-def]
        spec = plugin_manager().get("acme")  # through the entry point, as the worker host does
        return spec.factory(EngineContext(model_path=str(self.model_dir), model_name="acme"))

    async def test_context_length_is_the_models(self, model_info) -> None:  # type: ignore[no-untyped-def]
        assert (model_info.served_model_name, model_info.context_length) == ("acme", 1024)


class TestAcmeEngineWithSteps(TestAcmeEngine):
    """The same suite with time between tokens, so cancellation lands mid-stream for real."""

    max_tokens = 4
    long_max_tokens = 200

    def make_engine(self):  # type: ignore[no-untyped-def]
        spec = plugin_manager().get("acme")
        return spec.factory(
            EngineContext(argv=["--step-ms", "1"], model_path=str(self.model_dir), model_name="acme")
        )
