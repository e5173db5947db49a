"""KV-aware routing with real processes: a frontend in ``--router-mode kv`` and mocker workers.

What a user sees: a prompt whose prefix a worker holds goes back to that worker and reports its
cached tokens; new prompts spread by load; a dead worker's cache is forgotten; a worker whose KV
block size disagrees is reported loudly instead of silently misrouted.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest
from support.cluster import Cluster, FrontendProc, Proc

pytestmark = pytest.mark.integration
MODEL = "mocker"
WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu river mountain ocean forest"
).split()


def prompt(seed: int, words: int = 200) -> str:
    rng = random.Random(seed)
    return f"{seed} " + " ".join(rng.choice(WORDS) for _ in range(words))


def client(fe: FrontendProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{fe.url}/v1", api_key="unused", max_retries=0, timeout=60)


def chat(fe: FrontendProc, content: str, max_tokens: int = 4) -> openai.types.CompletionUsage:
    resp = client(fe).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": content}],
        max_tokens=max_tokens,
        extra_body={"ignore_eos": True},
    )
    assert resp.usage is not None and resp.choices[0].message.content
    return resp.usage


def cached(usage: openai.types.CompletionUsage) -> int:
    assert usage.prompt_tokens_details is not None
    return usage.prompt_tokens_details.cached_tokens or 0


def served(workers: list[Proc]) -> list[int]:
    """Requests each worker has taken so far."""
    out = []
    for w in workers:
        text = httpx.get(f"http://127.0.0.1:{w.system_port}/metrics", timeout=5).text
        line = next(line for line in text.splitlines() if line.startswith("dynamo_worker_requests_total "))
        out.append(int(float(line.split()[1])))
    return out


def concurrently(
    fe: FrontendProc, contents: list[str], max_tokens: int
) -> list[openai.types.CompletionUsage]:
    with ThreadPoolExecutor(len(contents)) as pool:
        return list(pool.map(lambda c: chat(fe, c, max_tokens), contents))


def start(
    cluster: Cluster,
    n_workers: int,
    *frontend_args: str,
    worker_args: tuple[str, ...] = ("--speedup-ratio", "10"),
) -> tuple[FrontendProc, list[Proc]]:
    workers = [cluster.worker(*worker_args) for _ in range(n_workers)]
    fe = cluster.frontend("--router-mode", "kv", *frontend_args, env={"DYN_LOG": "info,dynamo.router=debug"})
    for w in workers:
        cluster.wait_worker_ready(w)
    fe.wait_workers(MODEL, n_workers)
    return fe, workers


def wait_for_log(proc: Proc, text: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log():
        assert time.monotonic() < deadline, (
            f"{text!r} never appeared in the {proc.name} log:\n{proc.log()[-3000:]}"
        )
        time.sleep(0.05)


@pytest.fixture(scope="module")
def kv_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[FrontendProc, list[Proc]]]:
    c = Cluster(tmp_path_factory.mktemp("kv-routing"))
    try:
        fe, workers = start(c, 3)
        wait_for_log(fe, "KV index synchronised")
        yield fe, workers
    finally:
        c.close()


def test_new_prompts_spread_by_load_then_repeats_follow_the_cache(
    kv_cluster: tuple[FrontendProc, list[Proc]],
) -> None:
    fe, workers = kv_cluster
    before = served(workers)
    firsts = concurrently(fe, [prompt(i) for i in range(3)], max_tokens=300)  # all in flight at once
    spread = [a - b for a, b in zip(served(workers), before, strict=True)]
    assert spread == [1, 1, 1], f"three new prompts with equal (zero) overlap should spread: {spread}"
    assert all(cached(u) == 0 for u in firsts)
    time.sleep(0.3)  # let the KV events reach the router
    for i in (2, 0, 1):
        here = served(workers)
        usages = [chat(fe, prompt(i)) for _ in range(3)]
        delta = [a - b for a, b in zip(served(workers), here, strict=True)]
        assert sorted(delta) == [0, 0, 3], f"prompt {i} should go back to one worker each time: {delta}"
        prompt_tokens = usages[0].prompt_tokens
        assert all(cached(u) >= prompt_tokens - 16 for u in usages), usages  # all but the last block


def test_cached_tokens_in_the_final_streaming_chunk(kv_cluster: tuple[FrontendProc, list[Proc]]) -> None:
    fe, _ = kv_cluster
    content = prompt(100)
    chat(fe, content)
    time.sleep(0.2)
    chunks = list(
        client(fe).chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": content}],
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens >= usage.prompt_tokens - 16 > 0


def test_a_shared_prefix_is_credited(kv_cluster: tuple[FrontendProc, list[Proc]]) -> None:
    fe, _ = kv_cluster
    system = prompt(200, words=300)
    chat(fe, system + " first question")
    time.sleep(0.2)
    usage = chat(fe, system + " a different second question")
    assert cached(usage) > 300  # the system part came from the cache


def test_a_dead_workers_blocks_are_dropped(cluster: Cluster) -> None:
    fe, workers = start(cluster, 2)
    content = prompt(7)
    chat(fe, content)
    holder = workers[[a > 0 for a in served(workers)].index(True)]
    time.sleep(0.2)
    assert cached(chat(fe, content)) > 0
    holder.kill()
    fe.wait_workers(MODEL, 1, timeout=15)
    wait_for_log(fe, f"worker {holder_id(fe, holder)} left; dropped its")
    assert cached(chat(fe, content)) == 0  # the survivor never had it
    time.sleep(0.2)
    assert cached(chat(fe, content)) > 0


def holder_id(fe: FrontendProc, worker: Proc) -> str:
    """The instance id (hex) the worker logged when it registered."""
    line = next(line for line in worker.log().splitlines() if "serving model" in line)
    return line.split("worker ", 1)[1].split()[0]


def test_block_size_mismatch_is_reported_loudly(cluster: Cluster) -> None:
    # the model card says 16 (the host flag) but the engine's blocks, and so its events, are 32 tokens
    worker = cluster.worker("--speedup-ratio", "10", "--kv-cache-block-size", "16", "--block-size", "32")
    fe = cluster.frontend("--router-mode", "kv")
    cluster.wait_worker_ready(worker)
    fe.wait_workers(MODEL, 1)
    usage = chat(fe, prompt(11))  # still served: routed by load only
    assert usage.completion_tokens == 4
    wait_for_log(fe, "publishes KV events for blocks of 32 tokens but this router hashes blocks of 16")
    assert "ERROR" in fe.log() and "IGNORED" in fe.log()


def test_frontend_block_size_override_that_disagrees_is_reported(cluster: Cluster) -> None:
    worker = cluster.worker("--speedup-ratio", "10")
    fe = cluster.frontend("--router-mode", "kv", "--kv-cache-block-size", "32")
    cluster.wait_worker_ready(worker)
    fe.wait_workers(MODEL, 1)
    wait_for_log(fe, "with KV block size 16 but this router hashes blocks of 32 tokens")
    assert chat(fe, prompt(12)).completion_tokens == 4


def test_approximate_mode_without_kv_events(cluster: Cluster) -> None:
    fe, workers = start(cluster, 2, "--no-router-kv-events", "--router-ttl-secs", "60")
    firsts = concurrently(fe, [prompt(20), prompt(21)], max_tokens=300)
    assert served(workers) == [1, 1] and all(cached(u) == 0 for u in firsts)
    for i in (21, 20):
        here = served(workers)
        usage = chat(fe, prompt(i))
        delta = [a - b for a, b in zip(served(workers), here, strict=True)]
        assert cached(usage) > 0, f"prompt {i} should return to the worker it was sent to ({delta})"
    assert "synchronised" not in fe.log()  # no event plane at all


def test_num_workers_runs_several_workers_in_one_process(cluster: Cluster) -> None:
    proc = cluster.worker("--speedup-ratio", "10", "--num-workers", "3")
    fe = cluster.frontend("--router-mode", "kv")
    cluster.wait_worker_ready(proc)
    fe.wait_workers(MODEL, 3)
    usages = concurrently(fe, [prompt(30 + i) for i in range(3)], max_tokens=200)
    assert all(u.completion_tokens == 200 for u in usages)
    time.sleep(0.2)
    assert all(cached(chat(fe, prompt(30 + i))) > 0 for i in range(3))
