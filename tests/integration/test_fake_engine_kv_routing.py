"""KV-aware routing over the SGLang and TensorRT-LLM plugins, their libraries replaced by the fakes of
``tests/engines/fakes``: two workers behind a ``--router-mode kv`` frontend, real processes.

The engines' own KV events (SGLang's ZMQ publisher, TensorRT-LLM's ``get_kv_cache_events_async``)
travel through the plugin's bridge and the worker's event plane into the router's index, so a
repeated prompt goes back to the worker whose cache holds it.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from dynamo.mocker.config import DEFAULT_MODEL_PATH  # a small model directory with a tokenizer
from support.cluster import Cluster, FrontendProc, Proc

pytestmark = pytest.mark.integration
FAKES_DIR = Path(__file__).resolve().parents[1] / "engines" / "fakes"
BLOCK = 16


def engine_flags(engine: str, index: int, workdir: Path) -> list[str]:
    if engine == "sglang":
        events = {"publisher": "zmq", "endpoint": f"ipc://{workdir}/kv-{index}", "topic": "kv",
                  "replay_endpoint": f"ipc://{workdir}/replay-{index}"}  # fmt: skip
        return [
            "--context-length",
            "4096",
            "--page-size",
            str(BLOCK),
            "--kv-events-config",
            json.dumps(events),
        ]
    return ["--max-seq-len", "4096", "--kv-block-size", str(BLOCK)]  # KV events are on by default


@pytest.fixture(scope="module", params=["sglang", "trtllm"])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, FrontendProc, list[Proc]]]:
    engine = request.param
    pytest.importorskip(f"dynamo.{engine}", reason=f"dynamo-{engine} is not installed here")
    pytest.importorskip("zmq", reason="SGLang's KV events (and its fake's) need pyzmq")
    workdir = tmp_path_factory.mktemp(f"kv-{engine}")
    c = Cluster(workdir)
    model = f"tiny-{engine}"
    try:
        workers = [
            c.worker("--model-path", DEFAULT_MODEL_PATH, "--model-name", model,
                     *engine_flags(engine, i, workdir), module=f"dynamo.{engine}", engine=engine,
                     env={"PYTHONPATH": str(FAKES_DIR)})
            for i in range(2)
        ]  # fmt: skip
        fe = c.frontend("--router-mode", "kv")
        for w in workers:
            c.wait_worker_ready(w)
        fe.wait_workers(model, 2)
        yield model, fe, workers
    finally:
        c.close()


def served_counts(workers: list[Proc]) -> list[int]:
    out = []
    for w in workers:
        text = httpx.get(f"http://127.0.0.1:{w.system_port}/metrics", timeout=5).text
        line = next(line for line in text.splitlines() if line.startswith("dynamo_worker_requests_total "))
        out.append(int(float(line.split()[1])))
    return out


def test_repeated_prompts_go_back_to_the_worker_that_cached_them(
    served: tuple[str, FrontendProc, list[Proc]],
) -> None:
    model, fe, workers = served
    client = openai.OpenAI(base_url=f"{fe.url}/v1", api_key="unused", max_retries=0, timeout=30)
    prompts = [
        " ".join(f"{word}{i}" for word in ("alpha", "bravo", "charlie", "delta") * 40) for i in range(2)
    ]
    with ThreadPoolExecutor(2) as pool:  # at once: equal (zero) overlap, so they spread by load
        list(
            pool.map(
                lambda text: client.completions.create(model=model, prompt=text, max_tokens=300), prompts
            )
        )
    assert served_counts(workers) == [1, 1]
    time.sleep(0.5)  # the engines' events reach the router
    homes = []
    for text in prompts:
        before = served_counts(workers)
        for _ in range(3):
            client.completions.create(model=model, prompt=text, max_tokens=2)
            time.sleep(0.3)  # this repeat's own KV events (and any resync they cause) reach the router
        delta = [a - b for a, b in zip(served_counts(workers), before, strict=True)]
        assert sorted(delta) == [0, 3], f"the repeats of one prompt should all go to one worker: {delta}"
        homes.append(delta.index(3))
    assert sorted(homes) == [0, 1], "each prompt goes back to its own worker (without KV events: worker 0)"
    metrics = httpx.get(f"{fe.url}/metrics", timeout=5).text
    overlap = [
        line for line in metrics.splitlines() if line.startswith("dynamo_router_kv_overlap_blocks_total")
    ]
    assert overlap and float(overlap[0].split()[-1]) > 0, metrics
