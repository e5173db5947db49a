"""Micro-benchmark: how long one KV routing decision takes with 64 workers and 100,000 indexed blocks.

    python benchmarks/router/routing_latency.py [--workers 64] [--blocks 100000] [--decisions 5000]

The index is filled through the same path as live KV events (``STORED`` events with engine ids,
hashed from tokens): a few system prompts cached on many workers, and on every worker the
histories of its chat sessions chained after a system prompt, until ``--blocks`` distinct blocks
are indexed. The router also tracks ~4 requests in flight per worker. Each decision is a
``KvRouter.select`` over all workers for a prompt that continues a random session (system prompt +
history + a new user turn) or starts a new one (system prompt + a new turn), followed by
``on_start``; the oldest request in flight then ends. Reported: p50/p99/max of ``select`` and,
separately, of its parts (hashing the prompt, the index lookup). Prints JSON; ``--out`` writes it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from collections import deque
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "core" / "src"))

from dynamo.plugin.capabilities import KvEvent, KvEventKind  # noqa: E402
from dynamo.router.base import RouteRequest, Worker  # noqa: E402
from dynamo.router.hashing import sequence_hashes  # noqa: E402
from dynamo.router.kv import KvRouter, KvRouterConfig  # noqa: E402
from dynamo.runtime.records import InstanceRecord, ModelCard  # noqa: E402


def make_worker(iid: int, block_size: int) -> Worker:
    record = InstanceRecord(
        namespace="b",
        component="backend",
        endpoint="generate",
        instance_id=iid,
        transport={"tcp": "127.0.0.1:1"},
    )
    card = ModelCard(
        display_name="m",
        model_path="/m",
        context_length=32768,
        kv_cache_block_size=block_size,
        namespace="b",
        component="backend",
        endpoint="generate",
        instance_id=iid,
    )
    return Worker(iid, record, card)


def stored(ids: list[int], tokens: list[int], parent: int | None, block_size: int) -> KvEvent:
    return KvEvent(
        kind=KvEventKind.STORED, block_hashes=ids, parent_hash=parent, token_ids=tokens, block_size=block_size
    )


def percentiles(ns: list[int]) -> dict[str, float]:
    s = sorted(ns)
    pick = lambda q: s[min(int(q * len(s)), len(s) - 1)] / 1000  # noqa: E731 - µs
    return {"p50_us": round(pick(0.5), 1), "p99_us": round(pick(0.99), 1), "max_us": round(s[-1] / 1000, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--blocks", type=int, default=100_000)
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--system-prompts", type=int, default=8)
    p.add_argument("--system-blocks", type=int, default=64)
    p.add_argument("--session-blocks", type=int, default=100)
    p.add_argument("--turn-tokens", type=int, default=200)
    p.add_argument("--decisions", type=int, default=5000)
    p.add_argument("--in-flight-per-worker", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="also write the JSON here")
    ns = p.parse_args()
    rng = random.Random(ns.seed)
    bs = ns.block_size
    vocab = 150_000
    toks = lambda n: [rng.randrange(vocab) for _ in range(n)]  # noqa: E731

    router = KvRouter(KvRouterConfig(block_size=bs))  # events on; fed directly, as the event plane would
    workers = [make_worker(i + 1, bs) for i in range(ns.workers)]
    for w in workers:
        router.add_worker(w)
        router.feeds[w.instance_id].on_snapshot(-1, [])
    ids = itertools.count(1)
    event_ids = {w.instance_id: itertools.count() for w in workers}

    def publish(w: Worker, block_ids: list[int], tokens: list[int], parent: int | None) -> None:
        event = stored(block_ids, tokens, parent, bs)
        event.event_id = next(event_ids[w.instance_id])
        router.feeds[w.instance_id].on_events([event])

    systems = [toks(ns.system_blocks * bs) for _ in range(ns.system_prompts)]
    system_ids: dict[tuple[int, int], list[int]] = {}
    for s, system in enumerate(systems):
        for w in rng.sample(workers, rng.randint(ns.workers // 8, ns.workers)):
            block_ids = [next(ids) for _ in range(ns.system_blocks)]
            publish(w, block_ids, system, None)
            system_ids[(s, w.instance_id)] = block_ids
    sessions: list[tuple[int, list[int]]] = []  # (system prompt, full prompt tokens so far)
    build = time.perf_counter()
    while router.index.num_blocks < ns.blocks:
        assert all(f.state.value == "live" for f in router.feeds.values()), "an event was not applied"
        w = rng.choice(workers)
        s = rng.choice([s for s in range(ns.system_prompts) if (s, w.instance_id) in system_ids] or [0])
        if (s, w.instance_id) not in system_ids:
            block_ids = [next(ids) for _ in range(ns.system_blocks)]
            publish(w, block_ids, systems[s], None)
            system_ids[(s, w.instance_id)] = block_ids
        history = toks(ns.session_blocks * bs)
        publish(w, [next(ids) for _ in range(ns.session_blocks)], history, system_ids[(s, w.instance_id)][-1])
        sessions.append((s, systems[s] + history))
    build = time.perf_counter() - build

    def prompt() -> list[int]:
        if rng.random() < 0.8:
            _, tokens = rng.choice(sessions)
        else:
            tokens = rng.choice(systems)
        return tokens + toks(ns.turn_tokens)

    in_flight: deque[tuple[Worker, RouteRequest]] = deque()
    prompts = [prompt() for _ in range(ns.decisions + 500)]
    select_ns, hash_ns, lookup_ns = [], [], []
    clock = time.perf_counter_ns
    for i, tokens in enumerate(prompts):
        req = RouteRequest(f"r{i}", tokens)
        t0 = clock()
        w = router.select(workers, req)
        t1 = clock()
        router.on_start(w, req)
        in_flight.append((w, req))
        if len(in_flight) > ns.in_flight_per_worker * ns.workers:
            done_w, done_req = in_flight.popleft()
            router.on_first_token(done_w, done_req)
            router.on_end(done_w, done_req)
        if i < 500:
            continue  # warm-up: fill the in-flight set first
        select_ns.append(t1 - t0)
        t2 = clock()
        hashes = sequence_hashes(tokens, bs)
        t3 = clock()
        router.index.find_matches(hashes)
        t4 = clock()
        hash_ns.append(t3 - t2)
        lookup_ns.append(t4 - t3)
    result = {
        "workers": ns.workers,
        "indexed_blocks": router.index.num_blocks,
        "block_size": bs,
        "mean_prompt_tokens": round(sum(map(len, prompts)) / len(prompts)),
        "in_flight": len(in_flight),
        "decisions": len(select_ns),
        "index_build_s": round(build, 2),
        "select": percentiles(select_ns),
        "hash_prompt": percentiles(hash_ns),
        "index_lookup": percentiles(lookup_ns),
        "python": sys.version.split()[0],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if ns.out:
        Path(ns.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
