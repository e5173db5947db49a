"""A third-party engine plugin, as its author and its users meet it.

``examples/acme-engine`` is its own distribution (``acme-dynamo-engine``) with its own top-level
package (``acme_engine``), installed next to dynamo-core (``scripts/setup.sh`` installs every
``examples/*/``). Dynamo must find it through its entry point alone, serve it through a real
frontend, and the plugin's own conformance tests (the kit, subclassed) must pass where it lives.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from dynamo.mocker.config import DEFAULT_MODEL_PATH  # a small model directory with a tokenizer
from support.cluster import Cluster, FrontendProc

pytestmark = pytest.mark.integration
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "acme-engine"
MODEL = "acme-tiny"

pytest.importorskip(
    "acme_engine", reason="the example plugin is not installed: pip install --no-deps -e examples/acme-engine"
)


def test_found_only_through_its_entry_point() -> None:
    (ep,) = [ep for ep in importlib.metadata.entry_points(group="dynamo") if ep.name == "acme"]
    assert ep.value == "acme_engine.plugin"
    assert ep.dist is not None and ep.dist.name == "acme-dynamo-engine"
    assert importlib.util.find_spec("dynamo.acme") is None, "the plugin must not live under dynamo.*"
    spec = importlib.util.find_spec("acme_engine")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).is_relative_to(EXAMPLE / "src" / "acme_engine")

    out = subprocess.run(
        [sys.executable, "-m", "dynamo.worker", "--list-engines"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "acme" in out.stdout.split()


def test_worker_help_shows_the_plugins_flags() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "dynamo.worker", "--engine", "acme", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "--step-ms" in out.stdout and "--context-length" in out.stdout


def test_the_plugins_own_conformance_suite_passes() -> None:
    """The kit as a third party runs it: pytest in the plugin's directory, with its own configuration."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=EXAMPLE, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


@pytest.fixture(scope="module")
def frontend(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontendProc]:
    c = Cluster(tmp_path_factory.mktemp("acme"))
    try:
        worker = c.worker(
            "--model-path", DEFAULT_MODEL_PATH, "--model-name", MODEL, "--step-ms", "1", engine="acme"
        )  # fmt: skip
        fe = c.frontend()
        c.wait_worker_ready(worker)
        fe.wait_workers(MODEL, 1)
        yield fe
    finally:
        c.close()


@pytest.fixture
def client(frontend: FrontendProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{frontend.url}/v1", api_key="unused", max_retries=0, timeout=30)


def test_listed_as_a_model(client: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in client.models.list()]


def test_completion_continues_the_prompt_from_its_own_words(client: openai.OpenAI) -> None:
    prompt = "the cat sat on the mat and the dog"
    resp = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12)
    choice = resp.choices[0]
    assert choice.finish_reason == "length"
    assert resp.usage is not None and resp.usage.completion_tokens == 12
    # every token comes from the prompt (word boundaries may move: "dog" may be followed by "the")
    glued = "".join(choice.text.split())
    assert glued and re.fullmatch(f"(?:{'|'.join(prompt.split())})+", glued), choice.text


def test_chat_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "one two three four"}], max_tokens=16)
    whole = client.chat.completions.create(**kwargs)  # type: ignore[call-overload]
    chunks = list(client.chat.completions.create(**kwargs, stream=True))  # type: ignore[call-overload]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]


def test_stop_sequence_and_bad_request(client: openai.OpenAI) -> None:
    resp = client.completions.create(
        model=MODEL, prompt="red green blue red green blue", max_tokens=20, stop=["blue"]
    )
    assert resp.choices[0].finish_reason == "stop" and "blue" not in resp.choices[0].text
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt="hello", max_tokens=100_000)
