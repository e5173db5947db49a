"""The conformance kit against real SGLang: needs the ``sglang`` library and a CUDA GPU, skipped
(with the reason) elsewhere.

The model is ``$DYN_SGLANG_TEST_MODEL`` (a local directory or a Hugging Face id) or else the tiny
random-weight Llama that ``tests/engines/tiny_llama.py`` builds locally (no download).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dynamo.plugin import Engine, EngineContext, plugin_manager
from dynamo.plugin.testing import EngineConformance

HERE = Path(__file__).resolve().parent


def skip_reason() -> str | None:
    if importlib.util.find_spec("sglang") is None:
        return "SGLang is not installed (pip install dynamo-sglang, on a machine with a CUDA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU visible: SGLang cannot run here"
    return None


REASON = skip_reason()
if REASON is not None:
    pytest.skip(REASON, allow_module_level=True)
pytestmark = pytest.mark.gpu


def test_model() -> str:
    """``$DYN_SGLANG_TEST_MODEL``, or the tiny Llama built into ``$DYN_TEST_MODEL_CACHE``."""
    if os.environ.get("DYN_SGLANG_TEST_MODEL"):
        return os.environ["DYN_SGLANG_TEST_MODEL"]
    spec = importlib.util.spec_from_file_location("dynamo_tests_tiny_llama", HERE / "tiny_llama.py")
    assert spec and spec.loader
    module = sys.modules.get(spec.name) or importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules:
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
    cache = Path(os.environ.get("DYN_TEST_MODEL_CACHE") or HERE.parent.parent / ".cache" / "models")
    return str(module.build_tiny_llama(cache))


test_model.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


class TestSglangRealConformance(EngineConformance):
    max_tokens = 8
    long_max_tokens = 400
    concurrency = 16
    timeout_s = 120.0
    model = ""

    @pytest.fixture(scope="class")
    @classmethod
    def engine_environment(cls) -> Iterator[None]:
        cls.model = test_model()
        yield

    def make_engine(self) -> Engine:
        argv = [
            "--model-path", self.model,
            "--model-name", "tiny",
            "--context-length", "1024",
            "--mem-fraction-static", "0.3",  # the lifecycle tests run a second engine alongside
            "--max-running-requests", "16",
            "--disable-cuda-graph",
            "--random-seed", "0",
        ]  # fmt: skip
        return plugin_manager().get("sglang").factory(EngineContext(argv=argv))
