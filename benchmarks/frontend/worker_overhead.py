"""What the worker host and the TCP request plane add to an engine's own cost (issue 10: < 5 %).

    python benchmarks/frontend/worker_overhead.py [--concurrency 64 256] [--duration 5] [--rounds 3]

Two ways to drive the same mocker (``--speedup-ratio 1e6``: the engine itself is nearly free, so
what is measured is the cost of producing, framing, sending and decoding tokens):

- ``in-process``: ``MockerEngine.generate`` called directly in this process, ``concurrency``
  requests at a time (a ~165-token prompt, ``max_tokens`` 64, ``ignore_eos``), on uvloop like a worker.
- ``worker``: a real ``python -m dynamo.mocker`` process (worker host, file discovery in a temp
  dir, TCP request plane on 127.0.0.1) driven from this process with ``dynamo.runtime.transport.tcp.TcpClient``,
  the frontend's request-plane client, with the same requests and concurrency.

Reports, per mode, tokens/s and requests/s, and the CPU per token of the process that runs the
engine (this process in-process; the worker process otherwise) and of the driver. The overhead is
given two ways: throughput (1 - worker tok/s / in-process tok/s; on a 2-core box the worker mode
has a second process to spread over, so this can even be negative) and engine-process CPU per
token (worker / in-process - 1: what the host + request plane cost on the worker's core, the
figure that decides how many tokens/s one worker core can serve). Rounds alternate the two modes and
the median of each is reported. Writes ``worker-overhead.{json,md}`` under ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from dynamo.plugin.engine import EngineContext
from dynamo.plugin.types import Delta, GenerateRequest, StopConditions
from dynamo.runtime.eventloop import run as run_loop

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import die_with_parent, git_state, wait_quiet  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")
_ids = itertools.count()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def machine_busy() -> float:
    """CPU seconds the whole machine (all cores) has been busy since boot."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(vals) - vals[3] - vals[4]) / CLK


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_request(args: argparse.Namespace) -> GenerateRequest:
    return GenerateRequest(
        request_id=f"wo-{next(_ids)}", token_ids=list(range(1000, 1000 + args.prompt_tokens)), model="mocker",
        stop=StopConditions(max_tokens=args.max_tokens, ignore_eos=True),
    )


async def drive(generate: Callable[[GenerateRequest], AsyncIterator[Delta]], args: argparse.Namespace,
                conc: int, worker_pid: int | None) -> dict:
    """Closed loop: ``conc`` requests in flight for warm-up + duration; counts the recorded window."""
    clock = time.perf_counter
    t0 = clock()
    t_record, t_end = t0 + args.warmup, t0 + args.warmup + args.duration
    counts = {"tokens": 0, "requests": 0, "errors": 0}

    async def client() -> None:
        while (now := clock()) < t_end:
            record = now >= t_record
            n = 0
            try:
                async for delta in generate(make_request(args)):
                    n += len(delta.token_ids)
            except Exception:  # noqa: BLE001 - counted
                counts["errors"] += 1
                continue
            if record:
                counts["tokens"] += n
                counts["requests"] += 1

    async def window() -> tuple[float, float, float, float]:
        await asyncio.sleep(max(0.0, t_record - clock()))
        wcpu = cpu_seconds(worker_pid) if worker_pid else 0.0
        return time.perf_counter(), time.process_time(), wcpu, machine_busy()

    win = asyncio.create_task(window())
    await asyncio.gather(*(client() for _ in range(conc)))
    wall0, cpu0, wcpu0, busy0 = await win
    wall = time.perf_counter() - wall0
    busy = machine_busy() - busy0
    own_cpu = time.process_time() - cpu0
    worker_cpu = (cpu_seconds(worker_pid) - wcpu0) if worker_pid else 0.0
    tokens = max(counts["tokens"], 1)
    engine_cpu = worker_cpu if worker_pid else own_cpu
    return {
        "tok_per_s": round(counts["tokens"] / wall), "req_per_s": round(counts["requests"] / wall, 1),
        "errors": counts["errors"], "wall_s": round(wall, 2),
        "engine_process_cpu_pct": round(100 * engine_cpu / wall, 1),
        "engine_process_us_per_token": round(1e6 * engine_cpu / tokens, 2),
        "driver_cpu_pct": round(100 * own_cpu / wall, 1) if worker_pid else None,
        "driver_us_per_token": round(1e6 * own_cpu / tokens, 2) if worker_pid else None,
        "mean_tokens": round(counts["tokens"] / max(counts["requests"], 1), 1),
        # everything else on the machine (other work, not this benchmark): the noise
        "other_cpu_pct": round(100 * max(0.0, busy - own_cpu - worker_cpu) / wall, 1),
    }


async def in_process(args: argparse.Namespace, conc: int) -> dict:
    from dynamo.mocker.engine import MockerEngine

    engine = MockerEngine(EngineContext(argv=["--speedup-ratio", "1e6"]))
    await engine.start()
    try:
        return await drive(engine.generate, args, conc, None)
    finally:
        await engine.aclose()


async def through_worker(args: argparse.Namespace, conc: int, port: int, pid: int) -> dict:
    from dynamo.runtime.transport.tcp import TcpClient

    client = TcpClient()
    transport = {"tcp": f"127.0.0.1:{port}"}
    try:
        return await drive(lambda req: client.generate(transport, "generate", req), args, conc, pid)
    finally:
        await client.aclose()


def start_worker(tmp: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DYN_", "ETCD_", "NATS_"))}
    env.update({"DYN_FILE_KV": str(tmp / "kv"), "DYN_NAMESPACE": f"wo{os.getpid()}", "DYN_LOG": "warn"})
    log = open(tmp / "worker.log", "ab")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "dynamo.mocker", "--speedup-ratio", "1e6",
                             "--tcp-host", "127.0.0.1", "--tcp-port", str(port)], env=env, stdout=log, stderr=log,
                            preexec_fn=die_with_parent)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the mocker exited; see {tmp / 'worker.log'}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("the mocker did not start listening")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, nargs="+", default=[64, 256])
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds of both modes; medians reported")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-tokens", type=int, default=165)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--label", default="worker-overhead")
    p.add_argument("--quiet-below", type=float, default=0.0, metavar="PCT",
                   help="before each run wait until the machine is under PCT %% busy (100 = one core; 0: off)")
    p.add_argument("--quiet-wait", type=float, default=30.0, help="longest wait for --quiet-below, seconds")
    args = p.parse_args()

    rows = []
    with tempfile.TemporaryDirectory(prefix="dyn-wo-") as tmpdir:
        worker, port = start_worker(Path(tmpdir))
        try:
            run_loop(through_worker(args, 1, port, worker.pid))  # connect + warm the worker
            for conc in args.concurrency:
                runs: dict[str, list[dict]] = {"in-process": [], "worker": []}
                for rnd in range(args.rounds):
                    order = ["in-process", "worker"] if rnd % 2 == 0 else ["worker", "in-process"]
                    for mode in order:
                        if args.quiet_below:
                            wait_quiet(args.quiet_below, args.quiet_wait)
                        for _attempt in range(3):  # a run whose window was not the one asked for is redone
                            if mode == "in-process":
                                r = run_loop(in_process(args, conc))
                            else:
                                r = run_loop(through_worker(args, conc, port, worker.pid))
                            if r["wall_s"] >= 0.8 * args.duration and r["tok_per_s"] > 0:
                                break
                            print(f"# invalid run, redone: {r}", file=sys.stderr, flush=True)
                        r.update({"mode": mode, "concurrency": conc, "round": rnd})
                        print(json.dumps(r), flush=True)
                        runs[mode].append(r)
                med = {m: {k: round(statistics.median(r[k] for r in rs), 2) for k in
                           ("tok_per_s", "req_per_s", "engine_process_us_per_token", "engine_process_cpu_pct",
                            "other_cpu_pct")}
                       for m, rs in runs.items()}
                ip, wk = med["in-process"], med["worker"]
                rows.append({
                    "concurrency": conc, "in_process": ip, "worker": wk,
                    "driver_us_per_token": round(statistics.median(r["driver_us_per_token"] for r in runs["worker"]), 2),
                    "throughput_overhead_pct": round(100 * (1 - wk["tok_per_s"] / ip["tok_per_s"]), 1),
                    "cpu_per_token_overhead_pct": round(
                        100 * (wk["engine_process_us_per_token"] / ip["engine_process_us_per_token"] - 1), 1),
                    "runs": runs,
                })
        finally:
            worker.terminate()
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()

    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "duration_s": args.duration, "rounds": args.rounds,
            "max_tokens": args.max_tokens, "prompt_tokens": args.prompt_tokens,
            "loadavg_at_end": Path("/proc/loadavg").read_text().split()[:3], "argv": sys.argv[1:],
            "git": git_state()}
    md = [f"# {args.label}", "", "```", json.dumps(meta), "```", "",
          "| conc | in-process tok/s | worker+TCP tok/s | throughput overhead | in-process µs CPU/token "
          "| worker process µs CPU/token | CPU/token overhead | driver (TcpClient) µs CPU/token | worker CPU % "
          "| other CPU % (noise: in-process / worker) |",
          "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ip, wk = r["in_process"], r["worker"]
        md.append(f"| {r['concurrency']} | {ip['tok_per_s']:.0f} | {wk['tok_per_s']:.0f} | "
                  f"**{r['throughput_overhead_pct']} %** | {ip['engine_process_us_per_token']} | "
                  f"{wk['engine_process_us_per_token']} | **{r['cpu_per_token_overhead_pct']} %** | "
                  f"{r['driver_us_per_token']} | {wk['engine_process_cpu_pct']} | "
                  f"{ip['other_cpu_pct']} / {wk['other_cpu_pct']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.label}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    (args.out / f"{args.label}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
