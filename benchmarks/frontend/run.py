"""Benchmark the frontend + a mocker worker at effectively zero engine cost, over a matrix of
concurrency x {streaming, non-streaming}; writes JSON and a Markdown table.

    python benchmarks/frontend/run.py [--concurrency 1 8 32 64] [--duration 8] [--out benchmarks/results]

Starts its own frontend and mocker (file discovery in a temp dir, TCP request plane,
``--speedup-ratio 1e6``), measures each cell with ``loadgen.py`` in a separate process, and records
each server process's CPU time over the cell (ms of CPU per request).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def start_stack(workdir: Path, port: int, frontend_args: list[str], worker_args: list[str]) -> list[subprocess.Popen]:
    env = {**os.environ, "DYN_FILE_KV": str(workdir / "kv"), "DYN_NAMESPACE": f"bench{os.getpid()}",
           "DYN_LOG": os.environ.get("DYN_LOG", "warn")}
    log = open(workdir / "servers.log", "ab")  # noqa: SIM115
    worker = subprocess.Popen([sys.executable, "-m", "dynamo.mocker", "--speedup-ratio", "1e6", *worker_args],
                              env=env, stdout=log, stderr=log)
    frontend = subprocess.Popen([sys.executable, "-m", "dynamo.frontend", "--http-host", "127.0.0.1",
                                 "--http-port", str(port), *frontend_args], env=env, stdout=log, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return [frontend, worker]
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"servers did not start; see {workdir / 'servers.log'}")


def run_cell(port: int, procs: list[subprocess.Popen], conc: int, stream: bool, duration: float,
             new_conn: bool) -> dict:
    args = [sys.executable, str(HERE / "loadgen.py"), "--url", f"http://127.0.0.1:{port}",
            "--concurrency", str(conc), "--duration", str(duration), "--warmup", "1.5"]
    if stream:
        args.append("--stream")
    if new_conn:
        args.append("--new-connection")
    time.sleep(0.3)
    gen = subprocess.Popen(args, stdout=subprocess.PIPE)
    time.sleep(1.5)  # warm-up; measure CPU over the recorded window only
    before = [cpu_seconds(p.pid) for p in procs]
    t0 = time.perf_counter()
    out, _ = gen.communicate(timeout=duration + 120)
    wall = time.perf_counter() - t0
    after = [cpu_seconds(p.pid) for p in procs]
    result = json.loads(out)
    reqs = max(result["ok"], 1)
    for name, b, a in zip(("frontend", "worker"), before, after):
        result[f"{name}_cpu_pct"] = round(100 * (a - b) / wall, 1)
        result[f"{name}_cpu_ms_per_req"] = round(1000 * (a - b) / reqs, 3)
    return result


def table(results: list[dict]) -> str:
    head = ("| mode | conn | conc | req/s | out tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | E2E p50 / p99 ms "
            "| FE CPU % | FE ms/req | worker ms/req | failed |")
    rows = [head, "|" + "---|" * 12]
    for r in results:
        def pair(a: str, b: str) -> str:
            return "–" if r[a] is None else f"{r[a]:.2f} / {r[b]:.2f}"
        rows.append(
            f"| {'stream' if r['stream'] else 'non-stream'} | {'new' if r['new_connection'] else 'keep-alive'} "
            f"| {r['concurrency']} | {r['req_per_s']} | {r['out_tok_per_s']:.0f} | {pair('ttft_p50_ms', 'ttft_p99_ms')} "
            f"| {pair('itl_p50_ms', 'itl_p99_ms')} | {pair('e2e_p50_ms', 'e2e_p99_ms')} | {r['frontend_cpu_pct']} "
            f"| {r['frontend_cpu_ms_per_req']} | {r['worker_cpu_ms_per_req']} | {r['failed']} |"
        )
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--modes", nargs="+", default=["stream", "non-stream"], choices=["stream", "non-stream"])
    p.add_argument("--new-connection", action="store_true", help="also measure a new connection per request")
    p.add_argument("--frontend-arg", action="append", default=[], help="extra frontend flag (repeatable)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--label", default="frontend")
    args = p.parse_args()
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        procs = start_stack(Path(tmp), port, args.frontend_arg, [])
        results = []
        try:
            for mode in args.modes:
                for new_conn in ([False, True] if args.new_connection else [False]):
                    for conc in args.concurrency:
                        r = run_cell(port, procs, conc, mode == "stream", args.duration, new_conn)
                        print(json.dumps(r), flush=True)
                        results.append(r)
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(15)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "duration_s": args.duration}
    (args.out / f"{args.label}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    md = f"# {args.label}\n\n{json.dumps(meta)}\n\n{table(results)}\n"
    (args.out / f"{args.label}.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
