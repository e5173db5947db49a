"""The SGLang fake and the plugin's argument handling, checked against the real SGLang package.

Needs the ``sglang`` library but no GPU (nothing is started); skipped without it. SGLang installs on
a CPU machine (``python3.11 -m venv .venv-sglang && .venv-sglang/bin/pip install sglang==0.5.23
pytest pytest-asyncio && .venv-sglang/bin/pip install -e core && .venv-sglang/bin/pip install --no-deps
-e plugins/dynamo-sglang``, about 11 GB), then:
``.venv-sglang/bin/python -m pytest tests/engines/test_sglang_fake_parity.py``.

The fake is read in a subprocess (it shares the real package's module names).
"""

from __future__ import annotations

import importlib.util
import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if importlib.util.find_spec("sglang") is None:
    pytest.skip(
        "the real SGLang is not installed here (see this module's docstring)", allow_module_level=True
    )

from dynamo.plugin import EngineContext  # noqa: E402

FAKES_DIR = Path(__file__).parent / "fakes"

SURFACE = """
import dataclasses, inspect, json, argparse
from sglang.srt.entrypoints.engine import Engine
from sglang.srt.managers.tokenizer_manager import TokenizerManager
from sglang.srt.sampling.sampling_params import SamplingParams
from sglang.srt.server_args import ServerArgs

def fields(cls):
    names = getattr(cls, "__struct_fields__", None)
    return list(names) if names is not None else [f.name for f in dataclasses.fields(cls)]

parser = argparse.ArgumentParser()
ServerArgs.add_cli_args(parser)
print(json.dumps({
    "async_generate": list(inspect.signature(Engine.async_generate).parameters),
    "abort_request": list(inspect.signature(TokenizerManager.abort_request).parameters),
    "server_args": fields(ServerArgs),
    "sampling_params": fields(SamplingParams),
    "options": {s: a.dest for a in parser._actions for s in a.option_strings},
}))
"""


@pytest.fixture(scope="module")
def fake() -> dict:
    code = f"import sys; sys.path.insert(0, {str(FAKES_DIR)!r})\n" + SURFACE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def real() -> dict:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(SURFACE)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def in_order(subset: list[str], full: list[str]) -> bool:
    return [name for name in full if name in subset] == subset


def test_async_generate_takes_the_fakes_arguments_in_the_same_order(fake: dict, real: dict) -> None:
    assert set(fake["async_generate"]) <= set(real["async_generate"])
    assert in_order(fake["async_generate"], real["async_generate"])


def test_abort_request_signature(fake: dict, real: dict) -> None:
    assert fake["abort_request"] == real["abort_request"][: len(fake["abort_request"])]


def test_server_args_and_sampling_params_fields_exist(fake: dict, real: dict) -> None:
    assert set(fake["server_args"]) <= set(real["server_args"])
    assert set(fake["sampling_params"]) <= set(real["sampling_params"])


def test_the_fakes_flags_are_sglangs(fake: dict, real: dict) -> None:
    missing = {flag: dest for flag, dest in fake["options"].items() if real["options"].get(flag) != dest}
    assert missing == {}


def test_the_plugin_builds_real_server_args() -> None:
    from dynamo.sglang import args

    model = Path(__file__).resolve().parents[2] / "core" / "src" / "dynamo" / "mocker" / "model"
    server_args = args.server_args(
        EngineContext(argv=["--page-size", "16"], model_path=str(model), model_name="x")
    )
    assert server_args.incremental_streaming_output and server_args.skip_tokenizer_init
    assert (server_args.served_model_name, server_args.page_size) == ("x", 16)
    assert callable(server_args.resolved_dict)


def test_the_plugin_parses_real_flags() -> None:
    from dynamo.sglang import args

    argv = ["--model-path", "m", "--model-name", "x", "--tp", "2", "--page-size", "16"]
    namespace = args.parser().parse_args(
        args.engine_argv(EngineContext(argv=[*argv, "--max-running-requests", "4"]))
    )
    assert (namespace.model_path, namespace.served_model_name, namespace.page_size) == ("m", "x", 16)
    assert namespace.tp_size == 2 and namespace.max_running_requests == 4
    assert hasattr(namespace, "incremental_streaming_output") and hasattr(namespace, "skip_tokenizer_init")


def test_the_engine_attributes_the_plugin_reads_exist() -> None:
    from sglang.srt.entrypoints.engine import Engine
    from sglang.srt.managers.tokenizer_manager import TokenizerManager

    assert "_scheduler_init_result" in inspect.getsource(Engine.__init__)
    assert "max_total_num_tokens" in inspect.getsource(sys.modules["sglang.srt.managers.scheduler"])
    assert "self.context_len" in inspect.getsource(TokenizerManager)
    assert callable(Engine.shutdown)


# ------------------------------------------------------------------------------ KV events

KV_EVENTS_SURFACE = """
import json, msgspec
from sglang.srt.disaggregation import kv_events as k

def fields(cls):
    return list(cls.__struct_fields__)

print(json.dumps({
    "stored": fields(k.BlockStored), "removed": fields(k.BlockRemoved), "batch": fields(k.KVEventBatch),
    "config": [f for f in k.KVEventsConfig.model_fields],
    "offsets": [k.ZmqEventPublisher.offset_endpoint_port(e, r)
                for e, r in [("tcp://*:5557", 0), ("tcp://*:5557", 3), ("inproc://c", 2)]],
    "end_seq": k.ZmqEventPublisher.END_SEQ.hex(),
    "payload": msgspec.msgpack.encode(k.KVEventBatch(ts=1.0, events=[
        k.BlockStored(block_hashes=[-7, 8], parent_block_hash=None, token_ids=[1, 2, 3, 4], block_size=2,
                      lora_id=None, medium="GPU"),
        k.BlockRemoved(block_hashes=[-7]),
        k.AllBlocksCleared(),
    ], attn_dp_rank=0)).hex(),
}))
"""


@pytest.fixture(scope="module")
def fake_kv() -> dict:
    code = f"import sys; sys.path.insert(0, {str(FAKES_DIR)!r})\n" + KV_EVENTS_SURFACE
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def real_kv() -> dict:
    out = subprocess.run([sys.executable, "-c", KV_EVENTS_SURFACE], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_the_fakes_kv_events_are_sglangs(fake_kv: dict, real_kv: dict) -> None:
    for key in ("stored", "removed", "batch", "offsets", "end_seq", "payload"):
        assert fake_kv[key] == real_kv[key], key
    assert set(fake_kv["config"]) <= set(real_kv["config"])


def test_the_plugin_decodes_what_sglang_encodes(real_kv: dict) -> None:
    from dynamo.sglang.kv_events import KvEventBridge

    calls: list[tuple] = []

    class Recorder:
        def on_stored(self, *args: object) -> None:
            calls.append(("stored", *args))

        def on_removed(self, hashes: list[int]) -> None:
            calls.append(("removed", hashes))

        def on_cleared(self) -> None:
            calls.append(("cleared",))

    KvEventBridge(Recorder(), expected_block_size=2).handle_frames(
        [b"", (0).to_bytes(8, "big"), bytes.fromhex(real_kv["payload"])]
    )
    assert calls == [
        ("stored", [2**64 - 7, 8], None, [1, 2, 3, 4], 2),
        ("removed", [2**64 - 7]),
        ("cleared",),
    ]
