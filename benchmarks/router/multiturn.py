"""A multi-turn chat workload over HTTP: sessions whose history grows turn by turn.

    python benchmarks/router/multiturn.py --url http://127.0.0.1:8000 --model mocker [--sessions 48 ...]

Each session picks one of a few shared system prompts and then runs ``--turns`` user turns; every
turn sends the whole conversation so far (system prompt, earlier user turns and the replies the
server gave) plus a new user message, streams the reply, and waits a think time (exponential,
mean ``--think``) before the next turn. ``--concurrency`` users run sessions one after another
until ``--sessions`` are done. Text is random words from a seeded generator, so a run is
repeatable and every router mode sees exactly the same prompts.

Per request it records TTFT (first content chunk), end-to-end latency, prompt, cached and completion
tokens (the final chunk's usage, ``stream_options.include_usage``); inter-token latency is
``(e2e - ttft) / (completion tokens - 1)``. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field

import aiohttp

VOCAB = (
    "the of and to in is that for it as with was on be by this are from at or an have not but all they "
    "which one you were her there can more if will would about what when up out who so some them time "
    "into has could two other then than its only over new also any after first these may such our well "
    "model cache router worker prefix block token request latency stream server client memory engine "
    "session history system prompt answer question context length batch queue schedule decode prefill"
).split()


@dataclass
class Workload:
    sessions: int = 64
    turns: int = 4
    system_prompts: int = 4
    system_words: int = 300
    #: words of the first user message (a document pasted into the chat); 0: like the other turns
    first_turn_words: int = 3000
    user_words: int = 100
    min_output: int = 40
    max_output: int = 150
    think: float = 1.0
    seed: int = 0


@dataclass
class Turn:
    system: str
    users: list[str]
    outputs: list[int]
    thinks: list[float]


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(VOCAB) for _ in range(n))


def build_sessions(w: Workload) -> list[Turn]:
    rng = random.Random(w.seed)
    systems = [f"System prompt {i}. " + words(rng, w.system_words) for i in range(w.system_prompts)]
    out = []
    for s in range(w.sessions):
        out.append(
            Turn(
                system=systems[s % w.system_prompts],
                users=[
                    f"Session {s} turn {t}: "
                    + words(rng, w.first_turn_words if t == 0 and w.first_turn_words else w.user_words)
                    for t in range(w.turns)
                ],
                outputs=[rng.randint(w.min_output, w.max_output) for _ in range(w.turns)],
                thinks=[rng.expovariate(1 / w.think) if w.think > 0 else 0.0 for _ in range(w.turns)],
            )
        )
    return out


@dataclass
class Record:
    session: int
    turn: int
    ttft: float
    e2e: float
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    ok: bool = True
    error: str = ""


@dataclass
class Results:
    records: list[Record] = field(default_factory=list)
    wall: float = 0.0


async def one_turn(
    http: aiohttp.ClientSession,
    url: str,
    model: str,
    messages: list[dict],
    max_tokens: int,
) -> tuple[str, float, float, dict]:
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.perf_counter()
    ttft = 0.0
    pieces: list[str] = []
    usage: dict = {}
    async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                raise RuntimeError(str(chunk["error"]))
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices", ()):
                text = choice.get("delta", {}).get("content")
                if text:
                    if not ttft:
                        ttft = time.perf_counter() - start
                    pieces.append(text)
    return "".join(pieces), ttft, time.perf_counter() - start, usage


async def run_session(
    http: aiohttp.ClientSession, url: str, model: str, index: int, s: Turn, results: Results
) -> None:
    messages: list[dict] = [{"role": "system", "content": s.system}]
    for t, (user, max_tokens, think) in enumerate(zip(s.users, s.outputs, s.thinks, strict=True)):
        messages.append({"role": "user", "content": user})
        try:
            text, ttft, e2e, usage = await one_turn(http, url, model, messages, max_tokens)
        except Exception as exc:  # a failed turn ends the session; it is counted, not hidden
            results.records.append(Record(index, t, 0, 0, 0, 0, 0, ok=False, error=str(exc)[:200]))
            return
        details = usage.get("prompt_tokens_details") or {}
        results.records.append(
            Record(
                index,
                t,
                ttft,
                e2e,
                usage.get("prompt_tokens", 0),
                details.get("cached_tokens", 0),
                usage.get("completion_tokens", 0),
            )
        )
        messages.append({"role": "assistant", "content": text})
        if t + 1 < len(s.users):
            await asyncio.sleep(think)


async def run(url: str, model: str, workload: Workload, concurrency: int) -> Results:
    sessions = build_sessions(workload)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(len(sessions)):
        queue.put_nowait(i)
    results = Results()
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=0)) as http:

        async def user() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                await run_session(http, url, model, i, sessions[i], results)

        start = time.perf_counter()
        await asyncio.gather(*(user() for _ in range(concurrency)))
        results.wall = time.perf_counter() - start
    return results


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    k = (len(values) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)


def summarise(results: Results) -> dict:
    ok = [r for r in results.records if r.ok]
    prompt = sum(r.prompt_tokens for r in ok)
    cached = sum(r.cached_tokens for r in ok)
    output = sum(r.completion_tokens for r in ok)
    ttft = [r.ttft * 1000 for r in ok]
    e2e = [r.e2e * 1000 for r in ok]
    itl = [(r.e2e - r.ttft) * 1000 / (r.completion_tokens - 1) for r in ok if r.completion_tokens > 1]
    return {
        "requests": len(ok),
        "failed": len(results.records) - len(ok),
        "errors": sorted({r.error for r in results.records if not r.ok})[:3],
        "wall_s": round(results.wall, 2),
        "ttft_ms_p50": round(percentile(ttft, 0.5), 1),
        "ttft_ms_p99": round(percentile(ttft, 0.99), 1),
        "ttft_ms_mean": round(statistics.fmean(ttft), 1) if ttft else float("nan"),
        "itl_ms_p50": round(percentile(itl, 0.5), 2),
        "itl_ms_p99": round(percentile(itl, 0.99), 2),
        "e2e_ms_p50": round(percentile(e2e, 0.5), 1),
        "e2e_ms_p99": round(percentile(e2e, 0.99), 1),
        "requests_per_s": round(len(ok) / results.wall, 3) if results.wall else 0.0,
        "output_tokens_per_s": round(output / results.wall, 1) if results.wall else 0.0,
        "prompt_tokens": prompt,
        "cached_tokens": cached,
        "uncached_prompt_tokens": prompt - cached,
        "cache_hit_rate": round(cached / prompt, 4) if prompt else 0.0,
        "mean_prompt_tokens": round(prompt / len(ok), 1) if ok else 0.0,
    }


#: named workloads; ``doc-chat`` is the default (``Workload()``)
PRESETS: dict[str, dict[str, float]] = {
    # chat about a document: a long first message (~4k tokens), then three short follow-ups
    "doc-chat": {},
    # a long plain chat: sixteen short turns, the history growing to ~5k tokens
    "chat": {
        "sessions": 32,
        "turns": 16,
        "system_words": 400,
        "first_turn_words": 0,
        "user_words": 120,
        "min_output": 40,
        "max_output": 100,
    },
}


def workload_args(p: argparse.ArgumentParser) -> None:
    d = Workload()
    p.add_argument(
        "--preset",
        choices=list(PRESETS),
        default="doc-chat",
        help="a named workload; the flags below override its values",
    )
    p.add_argument("--sessions", type=int, default=d.sessions)
    p.add_argument("--turns", type=int, default=d.turns)
    p.add_argument("--system-prompts", type=int, default=d.system_prompts)
    p.add_argument("--system-words", type=int, default=d.system_words)
    p.add_argument(
        "--first-turn-words",
        type=int,
        default=d.first_turn_words,
        help="words of each session's first user message (a pasted document; 0: --user-words)",
    )
    p.add_argument("--user-words", type=int, default=d.user_words)
    p.add_argument("--min-output", type=int, default=d.min_output)
    p.add_argument("--max-output", type=int, default=d.max_output)
    p.add_argument("--think", type=float, default=d.think, help="mean think time between turns (s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--concurrency", type=int, default=16, help="users running sessions at once")


def parse_with_preset(p: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse, with the chosen preset's values as the defaults of the workload flags."""
    first, _ = p.parse_known_args(argv)
    p.set_defaults(**PRESETS[first.preset])
    return p.parse_args(argv)


def workload_from(ns: argparse.Namespace) -> Workload:
    return Workload(
        sessions=ns.sessions,
        turns=ns.turns,
        system_prompts=ns.system_prompts,
        system_words=ns.system_words,
        first_turn_words=ns.first_turn_words,
        user_words=ns.user_words,
        min_output=ns.min_output,
        max_output=ns.max_output,
        think=ns.think,
        seed=ns.seed,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="mocker")
    p.add_argument("--records", action="store_true", help="include every request's record")
    workload_args(p)
    ns = parse_with_preset(p)
    results = asyncio.run(run(ns.url, ns.model, workload_from(ns), ns.concurrency))
    out = summarise(results)
    if ns.records:
        out["records"] = [asdict(r) for r in results.records]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
