"""A closed-loop load generator for an OpenAI-compatible frontend (loopback only, bounded).

    python benchmarks/frontend/loadgen.py --url http://127.0.0.1:8000 --model mocker \
        --concurrency 32 --duration 10 [--stream] [--new-connection]

Each of ``concurrency`` clients sends one chat completion after another for ``duration`` seconds
(after a warm-up) with a ~150-token prompt, ``max_tokens`` 64 and ``ignore_eos``, and records
TTFT (first content chunk), inter-token latency ((e2e - ttft) / (tokens - 1)) and end-to-end time.
Prints one JSON object with requests/s, output tokens/s and p50/p99 latencies, the mean prompt
tokens the server counted, and this client's own CPU use over the recorded window.

With ``--markers`` it first prints a line ``#record`` when the recorded window opens and ``#end``
when the last recorded request has finished (before the JSON), so a runner can sample server CPU
over exactly that window (``run.py`` does).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from dataclasses import dataclass, field

import aiohttp

WORDS = (
    "the quick brown fox jumps over the lazy dog while a distributed serving system routes each request "
    "to the worker whose cache already holds the longest prefix of its prompt and streams tokens back "
).split()


def prompt_text(n_words: int = 120, salt: int = 0) -> str:
    return " ".join(WORDS[(i + salt) % len(WORDS)] for i in range(n_words))


@dataclass
class Stats:
    ttft: list[float] = field(default_factory=list)
    itl: list[float] = field(default_factory=list)
    e2e: list[float] = field(default_factory=list)
    tokens: int = 0
    prompt_tokens: int = 0
    ok: int = 0
    failed: int = 0
    errors: dict[str, int] = field(default_factory=dict)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def one_request(session: aiohttp.ClientSession, url: str, body: dict, stream: bool, stats: Stats,
                      record: bool) -> None:
    start = time.perf_counter()
    ttft = None
    tokens = 0
    prompt_tokens = 0
    try:
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                text = await resp.text()
                raise RuntimeError(f"HTTP {resp.status}: {text[:200]}")
            if stream:
                async for raw in resp.content:
                    line = raw.strip()
                    if not line.startswith(b"data: ") or line == b"data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        raise RuntimeError(chunk["error"]["message"])
                    if chunk.get("usage"):
                        tokens = chunk["usage"]["completion_tokens"]
                        prompt_tokens = chunk["usage"].get("prompt_tokens") or 0
                    choices = chunk.get("choices") or []
                    if choices and choices[0].get("delta", {}).get("content"):
                        if ttft is None:
                            ttft = time.perf_counter() - start
            else:
                data = await resp.json()
                tokens = data["usage"]["completion_tokens"]
                prompt_tokens = data["usage"].get("prompt_tokens") or 0
    except Exception as exc:  # noqa: BLE001 - counted and reported
        if record:
            stats.failed += 1
            key = type(exc).__name__ + ": " + str(exc)[:80]
            stats.errors[key] = stats.errors.get(key, 0) + 1
        return
    e2e = time.perf_counter() - start
    if not record:
        return
    stats.ok += 1
    stats.tokens += tokens
    stats.prompt_tokens += prompt_tokens
    stats.e2e.append(e2e)
    if ttft is not None:
        stats.ttft.append(ttft)
        if tokens > 1:
            stats.itl.append((e2e - ttft) / (tokens - 1))


async def client_loop(url: str, body: dict, stream: bool, new_conn: bool, stats: Stats, t_record: float,
                      t_end: float) -> None:
    def session() -> aiohttp.ClientSession:
        conn = aiohttp.TCPConnector(limit=1, force_close=new_conn)
        return aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=60))

    async with session() as s:
        while (now := time.perf_counter()) < t_end:
            await one_request(s, url, body, stream, stats, record=now >= t_record)


async def run(args: argparse.Namespace) -> dict:
    url = args.url.rstrip("/") + "/v1/chat/completions"
    body: dict = {
        "model": args.model,
        "messages": [{"role": "user", "content": prompt_text(args.prompt_words)}],
        "max_tokens": args.max_tokens,
        "ignore_eos": True,
        "stream": args.stream,
    }
    if args.stream:
        body["stream_options"] = {"include_usage": True}
    stats = Stats()
    t0 = time.perf_counter()
    t_record = t0 + args.warmup
    t_end = t_record + args.duration
    cpu_at_record: list[float] = []

    async def open_window() -> None:
        await asyncio.sleep(max(0.0, t_record - time.perf_counter()))
        cpu_at_record.append(time.process_time())
        if args.markers:
            print("#record", flush=True)

    marker = asyncio.create_task(open_window())
    await asyncio.gather(*(client_loop(url, body, args.stream, args.new_connection, stats, t_record, t_end)
                           for _ in range(args.concurrency)))
    elapsed = time.perf_counter() - t_record
    await marker
    client_cpu = time.process_time() - cpu_at_record[0]
    if args.markers:
        print("#end", flush=True)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 3)

    return {
        "concurrency": args.concurrency, "stream": args.stream, "new_connection": args.new_connection,
        "duration_s": round(elapsed, 2), "ok": stats.ok, "failed": stats.failed, "errors": stats.errors,
        "req_per_s": round(stats.ok / elapsed, 1), "out_tok_per_s": round(stats.tokens / elapsed, 0),
        "ttft_p50_ms": ms(pct(stats.ttft, 0.5)), "ttft_p99_ms": ms(pct(stats.ttft, 0.99)),
        "itl_p50_ms": ms(pct(stats.itl, 0.5)), "itl_p99_ms": ms(pct(stats.itl, 0.99)),
        "e2e_p50_ms": ms(pct(stats.e2e, 0.5)), "e2e_p99_ms": ms(pct(stats.e2e, 0.99)),
        "mean_tokens": round(stats.tokens / stats.ok, 1) if stats.ok else 0,
        "mean_prompt_tokens": round(stats.prompt_tokens / stats.ok, 1) if stats.ok else 0,
        "client_cpu_pct": round(100 * client_cpu / elapsed, 1),
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="mocker")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=2.0)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-words", type=int, default=120)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--new-connection", action="store_true", help="a new TCP connection per request")
    p.add_argument("--markers", action="store_true", help="print #record / #end lines around the recorded window")
    args = p.parse_args(argv)
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        p.error("this load generator only targets loopback addresses")
    return args


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(parse()))))
