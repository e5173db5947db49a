"""Compare router modes on the multi-turn chat workload: a frontend and mocker workers per mode.

    python benchmarks/router/run.py                        # every mode, defaults below
    python benchmarks/router/run.py --modes round-robin kv --sessions 24 --out benchmarks/results

For each mode it starts ``python -m dynamo.mocker --num-workers N`` (one process, N independent
workers with their own KV caches) and ``python -m dynamo.frontend --router-mode MODE`` on loopback,
with file discovery in a fresh directory and a namespace of their own, waits for the N workers,
sends one warm-up request, runs ``multiturn.py``'s workload (the same prompts for every mode), reads
the router's counters from the frontend's ``/metrics``, and stops both. Modes: ``round-robin``,
``random``, ``least-loaded``, ``kv`` and ``kv-approx`` (``kv`` with ``--no-router-kv-events``); a run
may add frontend flags as ``LABEL=MODE --flag value``. By default every mode runs with Dynamo's
default router weights, and both KV modes once more with ``--router-prefill-load-scale 4``.

Results go to ``OUT/router-<time>.json`` and ``.md`` (the table the README shows).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import multiturn  # noqa: E402

ROOT = HERE.parent.parent
MODES = {
    "round-robin": ["--router-mode", "round-robin"],
    "random": ["--router-mode", "random"],
    "least-loaded": ["--router-mode", "least-loaded"],
    "kv": ["--router-mode", "kv"],
    "kv-approx": ["--router-mode", "kv", "--no-router-kv-events"],
}
#: the default runs: every mode with Dynamo's default weights, then both KV modes weighing prefill x4
DEFAULT_RUNS = [
    *MODES,
    "kv-scale4=kv --router-prefill-load-scale 4",
    "kv-approx-scale4=kv-approx --router-prefill-load-scale 4",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def spawn(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, *args], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def wait_ready(url: str, workers: int, procs: list[subprocess.Popen[bytes]], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    body = {"model": "mocker", "messages": [{"role": "user", "content": "warm up"}], "max_tokens": 1}
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            raise RuntimeError("a process exited during start-up (see its log)")
        try:
            health = httpx.get(f"{url}/health", timeout=2).json()
            if health.get("models", {}).get("mocker") == workers:
                if httpx.post(f"{url}/v1/chat/completions", json=body, timeout=10).status_code == 200:
                    return
        except (httpx.HTTPError, ValueError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"the frontend never saw {workers} workers")


def router_counters(url: str) -> dict[str, float]:
    try:
        text = httpx.get(f"{url}/metrics", timeout=5).text
    except httpx.HTTPError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("dynamo_router_kv_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            key = name.split("{")[0].removesuffix("_total")
            out[key] = out.get(key, 0.0) + float(value)
    return out


def model_dir(workdir: Path, context_length: int) -> Path:
    """The mocker's default model (tokenizer and chat template) with a longer context window."""
    src = ROOT / "core" / "src" / "dynamo" / "mocker" / "model"
    dst = workdir / "model"
    if not dst.exists():
        shutil.copytree(src, dst)
        config = json.loads((dst / "config.json").read_text())
        config["max_position_embeddings"] = context_length
        (dst / "config.json").write_text(json.dumps(config))
        tok = json.loads((dst / "tokenizer_config.json").read_text())
        tok["model_max_length"] = context_length
        (dst / "tokenizer_config.json").write_text(json.dumps(tok))
    return dst


def parse_mode(spec: str) -> tuple[str, list[str]]:
    """``MODE`` or ``LABEL=MODE --more --frontend flags`` -> (label, frontend flags)."""
    label, _, rest = spec.partition("=") if "=" in spec.split(" ", 1)[0] else (spec, "", spec)
    base, *extra = shlex.split(rest)
    if base not in MODES:
        raise SystemExit(f"unknown mode {base!r} (choose from {', '.join(MODES)})")
    return label, [*MODES[base], *extra]


def run_mode(
    mode: str, frontend_flags: list[str], ns: argparse.Namespace, workdir: Path
) -> tuple[multiturn.Results, dict[str, float]]:
    """One run of the workload on a fresh frontend and fresh workers (cold caches)."""
    kv_dir = workdir / f"kv-{mode}-{time.monotonic_ns()}"
    kv_dir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("DYN_")}
    env.update(
        {
            "DYN_FILE_KV": str(kv_dir),
            "DYN_NAMESPACE": f"routerbench-{os.getpid()}-{mode}",
            "DYN_LOG": ns.log,
            "PYTHONUNBUFFERED": "1",
        }
    )
    port = free_port()
    worker_args = [
        "-m",
        "dynamo.mocker",
        "--num-workers",
        str(ns.workers),
        "--speedup-ratio",
        str(ns.speedup_ratio),
        "--model-path",
        str(model_dir(workdir, ns.context_length)),
        "--model-name",
        "mocker",
        "--system-port",
        str(free_port()),
        *ns.mocker_arg,
    ]
    frontend_args = [
        "-m",
        "dynamo.frontend",
        "--http-host",
        "127.0.0.1",
        "--http-port",
        str(port),
        *frontend_flags,
    ]
    procs = [
        spawn(worker_args, env, workdir / f"{mode}-workers.log"),
        spawn(frontend_args, env, workdir / f"{mode}-frontend.log"),
    ]
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url, ns.workers, procs)
        time.sleep(1.0)  # the KV router takes each worker's snapshot on connect
        return asyncio.run(
            multiturn.run(url, "mocker", multiturn.workload_from(ns), ns.concurrency)
        ), router_counters(url)
    finally:
        for proc in reversed(procs):
            stop(proc)
        if ns.keep_logs:
            Path(ns.keep_logs).mkdir(parents=True, exist_ok=True)
            for log in workdir.glob(f"{mode}-*.log"):
                shutil.copy(log, Path(ns.keep_logs) / log.name)


def table(rows: dict[str, dict]) -> str:
    base = rows.get("round-robin")
    head = (
        "| mode | TTFT p50 (ms) | TTFT p99 (ms) | ITL p50 (ms) | E2E p50 (ms) | E2E p99 (ms) | req/s "
        "| output tok/s | cache hit rate | uncached prompt tokens | vs round-robin: uncached, TTFT p50 |"
    )
    lines = [head, "|" + "---|" * 11]
    for mode, r in rows.items():
        rel = ""
        if base and base is not r and base["uncached_prompt_tokens"] and r["ttft_ms_p50"]:
            rel = (
                f"{r['uncached_prompt_tokens'] / base['uncached_prompt_tokens']:.2f}x, "
                f"{base['ttft_ms_p50'] / r['ttft_ms_p50']:.2f}x"
            )
        lines.append(
            f"| {mode} | {r['ttft_ms_p50']:.0f} | {r['ttft_ms_p99']:.0f} | {r['itl_ms_p50']:.1f} "
            f"| {r['e2e_ms_p50']:.0f} | {r['e2e_ms_p99']:.0f} "
            f"| {r['requests_per_s']:.2f} | {r['output_tokens_per_s']:.0f} | {r['cache_hit_rate']:.1%} "
            f"| {r['uncached_prompt_tokens']:,} | {rel} |"
        )
    return "\n".join(lines)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--modes",
        nargs="+",
        default=DEFAULT_RUNS,
        help=f"runs: {', '.join(MODES)}, or 'LABEL=MODE --frontend-flag value ...'",
    )
    p.add_argument("--workers", type=int, default=4)
    p.add_argument(
        "--speedup-ratio", type=float, default=1.0, help="mocker speed (1: the timing model as fitted)"
    )
    p.add_argument("--context-length", type=int, default=32768, help="context window of the simulated model")
    p.add_argument(
        "--mocker-arg", action="append", default=[], help="extra mocker flag (repeat; --flag=value)"
    )
    p.add_argument(
        "--repeat", type=int, default=3, help="runs per mode (their requests pooled for percentiles)"
    )
    p.add_argument("--log", default="warn", help="DYN_LOG of the processes")
    p.add_argument("--keep-logs", help="copy the processes' logs to this directory")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    multiturn.workload_args(p)
    return p


def run_all(ns: argparse.Namespace) -> dict[str, dict]:
    """Every run ``--repeat`` times, round after round (slow drifts of the machine hit every mode)."""
    runs = [parse_mode(spec) for spec in ns.modes]
    pooled = {mode: multiturn.Results() for mode, _ in runs}
    per_run: dict[str, list[dict]] = {mode: [] for mode, _ in runs}
    counters: dict[str, dict[str, float]] = {mode: {} for mode, _ in runs}
    with tempfile.TemporaryDirectory(prefix="routerbench-") as tmp:
        for repeat in range(ns.repeat):
            for mode, flags in runs:
                tag = f"[{mode} #{repeat + 1}]"
                print(f"{tag} running ({' '.join(flags)}) ...", file=sys.stderr, flush=True)
                results, counts = run_mode(mode, flags, ns, Path(tmp))
                one = multiturn.summarise(results)
                per_run[mode].append(
                    {
                        k: one[k]
                        for k in (
                            "ttft_ms_p50",
                            "cache_hit_rate",
                            "uncached_prompt_tokens",
                            "requests_per_s",
                            "failed",
                        )
                    }
                )
                pooled[mode].records += results.records
                pooled[mode].wall += results.wall
                for key, value in counts.items():
                    if key.endswith("indexed_blocks"):  # a gauge: keep the largest
                        counters[mode][key] = max(counters[mode].get(key, 0.0), value)
                    else:
                        counters[mode][key] = counters[mode].get(key, 0.0) + value
                print(
                    f"{tag} TTFT p50 {one['ttft_ms_p50']} ms, hit rate {one['cache_hit_rate']:.1%}, "
                    f"uncached {one['uncached_prompt_tokens']}, failed {one['failed']}",
                    file=sys.stderr,
                    flush=True,
                )
    return {
        mode: multiturn.summarise(pooled[mode]) | {"runs": per_run[mode], "router_counters": counters[mode]}
        for mode, _ in runs
    }


def main() -> None:
    ns = multiturn.parse_with_preset(parser())
    out_dir = Path(ns.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    rows = run_all(ns)
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "preset": ns.preset,
        "repeat": ns.repeat,
        "workload": vars(multiturn.workload_from(ns)) | {"concurrency": ns.concurrency},
        "workers": ns.workers,
        "speedup_ratio": ns.speedup_ratio,
        "mocker_args": ns.mocker_arg,
        "context_length": ns.context_length,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "time": stamp,
    }
    json_path = out_dir / f"router-{ns.preset}-{stamp}.json"
    json_path.write_text(json.dumps({"meta": meta, "results": rows}, indent=2))
    ttft_runs = "\n".join(
        f"- {mode}: " + ", ".join(f"{r['ttft_ms_p50']:.0f}" for r in row["runs"])
        for mode, row in rows.items()
    )
    md = (
        f"# Router modes on the multi-turn workload: {ns.preset} ({stamp})\n\n`{meta['command']}`\n\n"
        f"{ns.workers} mocker workers at speed-up {ns.speedup_ratio}, {ns.repeat} run(s) per mode with "
        f"their requests pooled, {os.cpu_count()} CPUs.\n\n{table(rows)}\n\n"
        f"TTFT p50 of each run (ms):\n{ttft_runs}\n"
    )
    (out_dir / f"router-{ns.preset}-{stamp}.md").write_text(md)
    print(md)
    print(f"results: {json_path}", file=sys.stderr)


if __name__ == "__main__":
    main()
