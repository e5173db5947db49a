"""The frontend's memory with 1,000 concurrent open streams, and clean-up when they all close.

    python benchmarks/frontend/open_streams.py [--streams 1000] [--hold 5] [--speedup-ratio 0.05]

    python benchmarks/frontend/open_streams.py --stacks ours anchor     # NVIDIA Dynamo 1.6.1 too

Starts a frontend and a slow mocker (``--speedup-ratio 0.05``: a decode step takes ~0.1-0.6 s, so
streams stay open; ``--max-num-seqs`` 2 x streams so none waits in the engine's queue), with a
system port on the worker (ours: ``--system-port``; the anchor: ``DYN_SYSTEM_PORT``). Then:

1. frontend RSS (``/proc/<pid>/status`` VmRSS, the process and its children) idle, and after a
   warm-up of a few short requests;
2. opens ``--streams`` streaming chat completions at once (``max_tokens`` large, a connection each),
   waits until every one has received its first token (and the worker's /health reports them all
   active), and samples the frontend's RSS while they are held open for ``--hold`` seconds;
3. closes every client connection, and polls the worker until it serves nothing (ours: /health
   ``active_requests``; the anchor: its ``dynamo_component_inflight_requests`` gauge) -- the
   frontend must cancel each abandoned stream on the worker -- then samples RSS again.

Steps 2-3 run ``--rounds`` times (default 2): a second round whose peak matches the first shows
the memory kept after the first close is reused, not leaked. Reports RSS before / with the streams
open / after, the growth per open stream, the time until the worker had no active request left,
and whether it got there. Writes ``open-streams.{json,md}``.
Loopback only; bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from loadgen import prompt_text  # noqa: E402
from run import ANCHOR_PY, MODEL_DIR, Stack, StackSpec, git_state  # noqa: E402


def tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for e in os.scandir("/proc"):
        if e.name.isdigit():
            try:
                ppid = int(Path(f"/proc/{e.name}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(e.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def rss_mb(root: int) -> float:
    kb = 0
    for pid in tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    kb += int(line.split()[1])
        except FileNotFoundError:
            pass
    return round(kb / 1024, 1)


def open_fds(root: int) -> int:
    n = 0
    for pid in tree(root):
        try:
            n += len(os.listdir(f"/proc/{pid}/fd"))
        except FileNotFoundError:
            pass
    return n


async def worker_active(session: aiohttp.ClientSession, stack: Stack) -> int | None:
    """Requests the worker is serving now: ours from its /health, the anchor's from its /metrics."""
    base = f"http://127.0.0.1:{stack.system_port}"
    if stack.spec.kind == "ours":
        async with session.get(base + "/health") as resp:
            return (await resp.json()).get("active_requests")
    async with session.get(base + "/metrics") as resp:
        text = await resp.text()
    for line in text.splitlines():
        if line.startswith("dynamo_component_inflight_requests{") and 'dynamo_endpoint="generate"' in line:
            return int(float(line.rsplit(" ", 1)[1]))
    return None


async def one_round(args: argparse.Namespace, stack: Stack, ctl: aiohttp.ClientSession) -> dict:
    """Open ``args.streams`` streams, hold them, close them all; what the frontend and worker did."""
    fe_pid = stack.procs[0].pid
    url = stack.url + "/v1/chat/completions"
    timeout = aiohttp.ClientTimeout(total=args.timeout)
    out: dict = {}
    first_token: list[float] = []
    started = time.perf_counter()
    all_open = asyncio.Event()
    errors: dict[str, int] = {}

    async def stream(i: int, session: aiohttp.ClientSession) -> None:
        body = {"model": "mocker", "stream": True, "max_tokens": args.max_tokens, "ignore_eos": True,
                "messages": [{"role": "user", "content": prompt_text(120, salt=i)}]}
        try:
            async with session.post(url, json=body) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"HTTP {resp.status}")
                got_first = False
                async for raw in resp.content:  # read on until cancelled: a live client
                    if not got_first and raw.startswith(b"data: {"):
                        got_first = True
                        first_token.append(time.perf_counter() - started)
                        if len(first_token) == args.streams:
                            all_open.set()
        except Exception as exc:  # noqa: BLE001 - counted (cancellation is not an Exception)
            key = f"{type(exc).__name__}: {str(exc)[:60]}"
            errors[key] = errors.get(key, 0) + 1

    # one connection per stream (limit 0 = no pool limit), as 1,000 separate clients would have
    conn = aiohttp.TCPConnector(limit=0, force_close=True)
    async with aiohttp.ClientSession(connector=conn, timeout=timeout) as session:
        tasks = [asyncio.create_task(stream(i, session)) for i in range(args.streams)]
        try:
            await asyncio.wait_for(all_open.wait(), args.open_timeout)
            out["all_open"] = True
        except asyncio.TimeoutError:
            out["all_open"] = False
        out["open_streams_reached"] = len(first_token)
        out["seconds_to_open_all"] = round(time.perf_counter() - started, 2)
        out["first_token_p50_s"] = round(sorted(first_token)[len(first_token) // 2], 3) if first_token else None
        samples, actives = [], []
        t_hold = time.perf_counter() + args.hold
        while time.perf_counter() < t_hold:
            samples.append(rss_mb(fe_pid))
            actives.append(await worker_active(ctl, stack))
            await asyncio.sleep(0.5)
        out["rss_mb_open_samples"] = samples
        out["rss_mb_open_max"] = max(samples)
        out["fds_open"] = open_fds(fe_pid)
        out["worker_active_while_open"] = max((a for a in actives if a is not None), default=None)
        # close every client connection abruptly, mid-stream
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    closed_at = time.perf_counter()
    active = None
    while time.perf_counter() - closed_at < args.drain_timeout:
        active = await worker_active(ctl, stack)
        if active == 0:
            break
        await asyncio.sleep(0.1)
    out["worker_active_after_close"] = active
    out["seconds_until_worker_idle"] = round(time.perf_counter() - closed_at, 2) if active == 0 else None
    await asyncio.sleep(1.0)
    out["rss_mb_after_close"] = rss_mb(fe_pid)
    out["fds_after_close"] = open_fds(fe_pid)
    out["errors"] = errors
    return out


async def run(args: argparse.Namespace, stack: Stack) -> dict:
    """Idle and warm RSS, then ``args.rounds`` rounds of open-hold-close (a leak shows as growth)."""
    fe_pid = stack.procs[0].pid
    out: dict = {"rss_mb_idle": rss_mb(fe_pid), "fds_idle": open_fds(fe_pid)}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=args.timeout)) as ctl:
        warm = {"model": "mocker", "messages": [{"role": "user", "content": "warm up"}], "max_tokens": 2,
                "stream": True}
        for _ in range(args.warmup_requests):
            async with ctl.post(stack.url + "/v1/chat/completions", json=warm) as resp:
                await resp.read()
        out["rss_mb_warm"] = rss_mb(fe_pid)
        out["rounds"] = [await one_round(args, stack, ctl) for _ in range(args.rounds)]
    first, last = out["rounds"][0], out["rounds"][-1]
    # the headline figures are the first round's; later rounds show whether memory comes back
    out.update({k: first[k] for k in first})
    afters = [r["worker_active_after_close"] for r in out["rounds"]]
    out["worker_active_after_close"] = None if None in afters else max(afters)
    out["all_open"] = all(r["all_open"] for r in out["rounds"])
    out["rss_mb_open_max_last_round"] = last["rss_mb_open_max"]
    out["rss_mb_after_close_last_round"] = last["rss_mb_after_close"]
    grown = first["rss_mb_open_max"] - out["rss_mb_warm"]
    out["rss_kb_per_open_stream"] = round(1024 * grown / max(first["open_streams_reached"], 1), 1)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stacks", nargs="+", choices=["ours", "anchor"], default=["ours"],
                   help="measure these one after the other (anchor: NVIDIA Dynamo 1.6.1 from .venv-anchor)")
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--max-tokens", type=int, default=4000)
    p.add_argument("--speedup-ratio", type=float, default=0.05)
    p.add_argument("--hold", type=float, default=5.0, help="seconds to hold all streams open while sampling")
    p.add_argument("--rounds", type=int, default=2, help="open-hold-close rounds (memory should not grow)")
    p.add_argument("--open-timeout", type=float, default=90.0)
    p.add_argument("--drain-timeout", type=float, default=30.0)
    p.add_argument("--timeout", type=float, default=300.0, help="client timeout per request")
    p.add_argument("--warmup-requests", type=int, default=20)
    p.add_argument("--frontend-arg", action="append", default=[], help="extra flag for our frontend (repeatable)")
    p.add_argument("--anchor-python", type=Path, default=ANCHOR_PY)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--label", default="open-streams")
    args = p.parse_args()
    if "anchor" in args.stacks and not args.anchor_python.exists():
        p.error(f"{args.anchor_python} not found: run  bash benchmarks/frontend/setup-anchor.sh")

    # 1,000 client sockets here and 2,000+ in the frontend: raise the fd limit (children inherit it)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, 4 * args.streams + 1024))
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))

    seqs = str(max(256, 2 * args.streams))  # every stream runs at once, none waits in the engine's queue
    stack_args = argparse.Namespace(
        log="warn", ours_python=sys.executable, anchor_python=args.anchor_python, anchor_model=MODEL_DIR,
        model="mocker", frontend_arg=args.frontend_arg, worker_arg=["--max-num-seqs", seqs],
        anchor_frontend_arg=[], anchor_worker_arg=["--max-num-seqs", seqs],
        speedup_ratio=args.speedup_ratio, system_port=True,
    )
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's SIGTERM still stops the stack
    results, commands = {}, {}
    with tempfile.TemporaryDirectory(prefix="dyn-streams-") as tmp:
        for kind in args.stacks:
            stack = Stack(StackSpec(kind, kind), Path(tmp) / kind, stack_args)
            try:
                stack.start()
                results[kind] = asyncio.run(run(args, stack))
                commands[kind] = stack.commands
            finally:
                stack.stop()
            print(json.dumps({kind: results[kind]}), flush=True)

    meta = {"machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "streams": args.streams, "max_tokens": args.max_tokens,
            "speedup_ratio": args.speedup_ratio, "hold_s": args.hold, "rounds": args.rounds,
            "frontend_args": args.frontend_arg,
            "commands": commands, "git": git_state()}
    oks = {k: r["all_open"] and r["worker_active_after_close"] == 0 for k, r in results.items()}
    md = [f"# {args.label}", "", "```", json.dumps(meta), "```", "",
          "| stack | streams open (first token seen) | frontend RSS idle MB | after warm-up MB "
          "| with streams open MB (max) | per open stream KB | after close MB | last round: open max / after close MB "
          "| frontend fds open / after | worker active while open | worker active after close | s until worker idle "
          "| client errors | ok |",
          "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for kind, r in results.items():
        md.append(
            f"| {kind} | {r['open_streams_reached']} / {args.streams} (in {r['seconds_to_open_all']} s) "
            f"| {r['rss_mb_idle']} | {r['rss_mb_warm']} | {r['rss_mb_open_max']} "
            f"| {r['rss_kb_per_open_stream']} | {r['rss_mb_after_close']} "
            f"| {r['rss_mb_open_max_last_round']} / {r['rss_mb_after_close_last_round']} "
            f"| {r['fds_open']} / {r['fds_after_close']} | {r['worker_active_while_open']} "
            f"| {r['worker_active_after_close']} | {r['seconds_until_worker_idle']} "
            f"| {sum(sum(x['errors'].values()) for x in r['rounds'])} | {'yes' if oks[kind] else '**no**'} |")
    md += ["", "First round's figures, then the last round's (of "
           f"{args.rounds}): memory held after the first round is reused, not grown, when the last round's peak "
           "matches the first's. ok = in every round every stream got its first token, and the worker was back "
           "to 0 active requests after the clients closed their connections (ours: its /health active_requests; the anchor: its "
           "dynamo_component_inflight_requests gauge on /metrics)."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.label}.json").write_text(json.dumps({"meta": meta, "results": results, "ok": oks}, indent=1))
    (args.out / f"{args.label}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if not all(oks.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
