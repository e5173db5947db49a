"""Benchmark frontend + mocker stacks at effectively zero engine cost, over a matrix of
concurrency x {streaming, non-streaming} x {keep-alive, new connection}; writes JSON and Markdown.

    python benchmarks/frontend/run.py [--concurrency 1 8 32 64] [--duration 8] [--out benchmarks/results]
    python benchmarks/frontend/run.py --stacks ours anchor --new-connection      # side by side
    python benchmarks/frontend/run.py --stacks ours 'ours-2p=ours:--http-workers 2' anchor

Stacks (``--stacks``, default ``ours``), each ``[LABEL=]KIND[@PYTHON][:EXTRA FRONTEND FLAGS]``
(``before=ours@/tmp/before/.venv/bin/python`` measures another checkout's venv in the same run):

- ``ours``: ``python -m dynamo.frontend`` + ``python -m dynamo.mocker --speedup-ratio 1e6`` from this
  interpreter (file discovery in a temp dir, TCP request plane, its own namespace). ``--frontend-arg``
  flags go to every ``ours`` frontend.
- ``anchor``: NVIDIA Dynamo 1.6.1 from ``.venv-anchor`` (``bash benchmarks/frontend/setup-anchor.sh``):
  ``-m dynamo.frontend`` + ``-m dynamo.mocker --model-path DIR --model-name mocker --speedup-ratio
  1000000``, file discovery (``DYN_FILE_KV``), TCP request plane, ZMQ event plane, ``HOME`` in a scratch
  dir (it caches model cards in ``~/.cache/dynamo``), every port it can be told about on 127.0.0.1.
  ``--anchor-frontend-arg`` flags go to its frontend.

Both stacks log with ``DYN_LOG=warn`` (the anchor's faster setting: at ``info`` it writes three
lines per request; at ``warn`` it still writes one ``request_span`` INFO line).

Every cell is measured with the same ``loadgen.py`` in a separate process. With ``--order
interleaved`` (default) all stacks run at once and each cell is measured on each stack back to back
(the order alternating from cell to cell), so slow drifts in the machine's load hit all of them
alike; the idle stacks cost ~nothing (their idle CPU is measured and recorded). ``--order
sequential`` runs the whole matrix on one stack at a time, with only that stack up.

CPU is sampled from /proc over exactly the loadgen's recorded window (it prints markers): for each
server process and all its descendants (``--http-workers N`` forks), the loadgen's own CPU, and the
whole machine's busy time, so "other" = machine - servers - client shows how noisy the box was.
With two or more stacks the output has a comparison table: each stack / the baseline (``anchor``
when it runs) for requests/s, TTFT p50, frontend CPU ms per request, and the issue 10 goals.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
ANCHOR_PY = ROOT / ".venv-anchor" / "bin" / "python"
MODEL_DIR = ROOT / "core" / "src" / "dynamo" / "mocker" / "model"
CLK = os.sysconf("SC_CLK_TCK")
#: variables of ours or of the environment that must not leak into a stack's settings
_SCRUB = ("DYN_", "ETCD_", "NATS_")


def die_with_parent() -> None:
    """preexec_fn: the server gets SIGTERM if this runner dies (even by SIGKILL), so none is orphaned."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except Exception:  # noqa: BLE001 - not Linux: Stack.stop() still cleans up on a normal exit
        pass


def free_port(below: int | None = None) -> int:
    """A free port on 127.0.0.1 (under ``below`` when given)."""
    if below is None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    import random

    for _ in range(200):
        port = random.randrange(20000, below)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port below {below}")


# -- /proc sampling -------------------------------------------------------------------------------


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def cpu_seconds(pid: int) -> float:
    fields = _stat(pid)
    return 0.0 if fields is None else (int(fields[11]) + int(fields[12])) / CLK


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None:
                children.setdefault(int(fields[1]), []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, ()))
    return out


def tree_cpu(root: int) -> float:
    return sum(cpu_seconds(pid) for pid in descendants(root))


def tree_rss_kb(root: int) -> int:
    total = 0
    for pid in descendants(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


def machine_busy_seconds() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    vals = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    total = sum(vals[:8])
    return (total - idle) / CLK, total / CLK


def git_state() -> dict:
    """The commit measured and how many files differ from it (read-only git calls)."""
    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            return ""
    return {"commit": git("rev-parse", "--short", "HEAD").strip(),
            "dirty_files": len([ln for ln in git("status", "--porcelain", "--untracked-files=no").splitlines() if ln])}


def wait_quiet(threshold: float, max_wait: float) -> float:
    """Wait (at most ``max_wait`` s) until the machine's busy CPU over 1 s is under ``threshold`` %."""
    t0 = time.monotonic()
    busy = 0.0
    while True:
        b0, w0 = machine_busy_seconds()[0], time.perf_counter()
        time.sleep(1.0)
        busy = 100 * (machine_busy_seconds()[0] - b0) / (time.perf_counter() - w0)
        if busy < threshold or time.monotonic() - t0 >= max_wait:
            return round(busy, 1)


# -- stacks ---------------------------------------------------------------------------------------


@dataclass
class StackSpec:
    label: str
    kind: str  # "ours" | "anchor"
    frontend_args: list[str] = field(default_factory=list)
    worker_args: list[str] = field(default_factory=list)
    #: the interpreter to run it with (default: --ours-python / --anchor-python)
    python: str | None = None

    @classmethod
    def parse(cls, text: str) -> StackSpec:
        label, _, rest = text.partition("=") if "=" in text.split(":", 1)[0] else ("", "", text)
        kind, _, extra = rest.partition(":")
        kind, _, python = kind.partition("@")
        if kind not in ("ours", "anchor"):
            raise argparse.ArgumentTypeError(f"stack kind must be 'ours' or 'anchor', not {kind!r} (in {text!r})")
        return cls(label or kind, kind, shlex.split(extra), python=python or None)


class Stack:
    """One frontend + one mocker, started in ``workdir``; ``procs`` = [frontend, worker]."""

    def __init__(self, spec: StackSpec, workdir: Path, args: argparse.Namespace) -> None:
        self.spec = spec
        self.workdir = workdir
        self.args = args
        self.port = free_port()
        self.procs: list[subprocess.Popen] = []
        self.namespace = f"bench{os.getpid()}{''.join(c for c in spec.label if c.isalnum())}"
        self.versions: dict[str, str] = {}
        self.speedup = str(getattr(args, "speedup_ratio", "1e6"))
        #: the worker's /health + /metrics port, when ``args.system_port`` asks for one
        # (the anchor 1.6.1 parses DYN_SYSTEM_PORT as an i16: it refuses ports >= 32768)
        self.system_port = free_port(below=32768) if getattr(args, "system_port", False) else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(_SCRUB)}
        env.update({"DYN_FILE_KV": str(self.workdir / "kv"), "DYN_NAMESPACE": self.namespace,
                    "DYN_LOG": self.args.log, "PYTHONUNBUFFERED": "1"})
        return env

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = self._env()
        s = self.spec
        if s.kind == "ours":
            py = s.python or self.args.ours_python
            worker_cmd = [py, "-m", "dynamo.mocker", "--speedup-ratio", self.speedup, *self.args.worker_arg,
                          *s.worker_args]
            if self.system_port:
                worker_cmd += ["--system-port", str(self.system_port)]
            fe_cmd = [py, "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(self.port),
                      *self.args.frontend_arg, *s.frontend_args]
            fe_env = w_env = env
        else:
            py = s.python or str(self.args.anchor_python)
            home = self.workdir / "home"
            home.mkdir(exist_ok=True)
            env.update({
                "HOME": str(home),  # it caches model cards in $HOME/.cache/dynamo (ignores XDG_CACHE_HOME)
                "DYN_DISCOVERY_BACKEND": "file", "DYN_REQUEST_PLANE": "tcp", "DYN_EVENT_PLANE": "zmq",
                "DYN_EVENT_PLANE_HOST": "127.0.0.1", "DYN_SYSTEM_HOST": "127.0.0.1",
                "DYN_TCP_RPC_HOST": "127.0.0.1", "DYN_TCP_RESPONSE_STREAM_HOST": "127.0.0.1",
            })
            w_env = {**env, "DYN_TCP_RPC_PORT": str(free_port())}
            if self.system_port:
                w_env["DYN_SYSTEM_PORT"] = str(self.system_port)
            fe_env = {**env, "DYN_TCP_RESPONSE_STREAM_PORT": str(free_port())}
            worker_cmd = [py, "-m", "dynamo.mocker", "--model-path", str(self.args.anchor_model),
                          "--model-name", self.args.model, "--speedup-ratio",
                          "1000000" if self.speedup == "1e6" else self.speedup,
                          "--discovery-backend", "file", *self.args.anchor_worker_arg, *s.worker_args]
            fe_cmd = [py, "-m", "dynamo.frontend", "--http-host", "127.0.0.1", "--http-port", str(self.port),
                      "--namespace", self.namespace, "--discovery-backend", "file",
                      *self.args.anchor_frontend_arg, *s.frontend_args]
        self.commands = {"frontend": shlex.join(fe_cmd), "worker": shlex.join(worker_cmd)}
        wlog = open(self.workdir / "worker.log", "ab")  # noqa: SIM115
        flog = open(self.workdir / "frontend.log", "ab")  # noqa: SIM115
        worker = subprocess.Popen(worker_cmd, env=w_env, stdout=wlog, stderr=wlog, cwd=self.workdir,
                                  preexec_fn=die_with_parent)
        frontend = subprocess.Popen(fe_cmd, env=fe_env, stdout=flog, stderr=flog, cwd=self.workdir,
                                    preexec_fn=die_with_parent)
        self.procs = [frontend, worker]
        self._wait_ready()
        self.versions = {"python": subprocess.run([py, "-c", "import platform; print(platform.python_version())"],
                                                  capture_output=True, text=True).stdout.strip()}
        if s.kind == "anchor":
            self.versions["ai-dynamo"] = subprocess.run(
                [py, "-c", "from importlib.metadata import version; print(version('ai-dynamo'))"],
                capture_output=True, text=True).stdout.strip()

    def _wait_ready(self) -> None:
        """Ready = a real chat completion answers 200 (the anchor's /health is up before its model is)."""
        body = {"model": self.args.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise SystemExit(f"{self.spec.label}: a server exited ({p.args[:3]}); see {self.workdir}/*.log")
            try:
                if httpx.post(self.url + "/v1/chat/completions", json=body, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"{self.spec.label}: servers did not become ready; see {self.workdir}/*.log")

    def cpu(self) -> list[float]:
        return [tree_cpu(p.pid) for p in self.procs]

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                for pid in reversed(descendants(p.pid)):
                    try:
                        os.kill(pid, 9)
                    except ProcessLookupError:
                        pass
                p.wait(5)
        self.procs = []


# -- one cell -------------------------------------------------------------------------------------


def run_cell(stack: Stack, conc: int, stream: bool, new_conn: bool, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, str(HERE / "loadgen.py"), "--url", stack.url, "--model", args.model,
           "--concurrency", str(conc), "--duration", str(args.duration), "--warmup", str(args.warmup),
           "--max-tokens", str(args.max_tokens), "--prompt-words", str(args.prompt_words), "--markers"]
    if stream:
        cmd.append("--stream")
    if new_conn:
        cmd.append("--new-connection")
    time.sleep(args.pause)
    gen = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    watchdog = threading.Timer(args.warmup + args.duration + 120, gen.kill)
    watchdog.start()
    try:
        before = after = None
        lines = []
        for line in gen.stdout:  # type: ignore[union-attr]
            line = line.strip()
            if line == "#record":
                before = (stack.cpu(), machine_busy_seconds(), time.perf_counter())
            elif line == "#end":
                after = (stack.cpu(), machine_busy_seconds(), time.perf_counter())
            elif line:
                lines.append(line)
        gen.wait()
    finally:
        watchdog.cancel()
    if gen.returncode != 0 or before is None or after is None or not lines:
        raise SystemExit(f"loadgen failed on {stack.spec.label} (rc {gen.returncode}): {lines[-1:] or 'no output'}")
    result = json.loads(lines[-1])
    wall = after[2] - before[2]
    reqs = max(result["ok"], 1)
    servers = 0.0
    for name, b, a in zip(("frontend", "worker"), before[0], after[0]):
        servers += a - b
        result[f"{name}_cpu_pct"] = round(100 * (a - b) / wall, 1)
        result[f"{name}_cpu_ms_per_req"] = round(1000 * (a - b) / reqs, 3)
    busy = after[1][0] - before[1][0]
    result["machine_busy_pct"] = round(100 * busy / wall, 1)
    client = result["client_cpu_pct"] * wall / 100
    result["other_cpu_pct"] = round(100 * max(0.0, busy - servers - client) / wall, 1)
    result["frontend_rss_mb"] = round(tree_rss_kb(stack.procs[0].pid) / 1024, 1)
    result["stack"] = stack.spec.label
    return result


# -- tables ---------------------------------------------------------------------------------------


def _mode(r: dict) -> str:
    return "stream" if r["stream"] else "non-stream"


def _conn(r: dict) -> str:
    return "new" if r["new_connection"] else "keep-alive"


def table(results: list[dict]) -> str:
    head = ("| mode | conn | conc | req/s | out tok/s | TTFT p50 / p99 ms | ITL p50 / p99 ms | E2E p50 / p99 ms "
            "| FE CPU % | FE ms/req | worker ms/req | client CPU % | other CPU % | failed |")
    rows = [head, "|" + "---|" * 14]
    for r in results:
        def pair(a: str, b: str) -> str:
            return "–" if r[a] is None else f"{r[a]:.2f} / {r[b]:.2f}"
        rows.append(
            f"| {_mode(r)} | {_conn(r)} | {r['concurrency']} | {r['req_per_s']} | {r['out_tok_per_s']:.0f} "
            f"| {pair('ttft_p50_ms', 'ttft_p99_ms')} | {pair('itl_p50_ms', 'itl_p99_ms')} "
            f"| {pair('e2e_p50_ms', 'e2e_p99_ms')} | {r['frontend_cpu_pct']} | {r['frontend_cpu_ms_per_req']} "
            f"| {r['worker_cpu_ms_per_req']} | {r['client_cpu_pct']} | {r['other_cpu_pct']} | {r['failed']} |"
        )
    return "\n".join(rows)


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 2)


def _fmt(v: object) -> str:
    return "–" if v is None else str(v)


def compare(cells: list[dict], labels: list[str], baseline: str) -> tuple[list[dict], str]:
    """One row per cell: each stack's req/s, TTFT p50, FE ms/req and its ratio to the baseline."""
    others = [lb for lb in labels if lb != baseline]
    rows_json = []
    head = ["mode", "conn", "conc"]
    for lb in labels:
        head += [f"{lb} req/s"]
    head += [f"{lb}/{baseline} req/s" for lb in others]
    for lb in labels:
        head += [f"{lb} TTFT p50 ms"]
    for lb in labels:
        head += [f"{lb} E2E p50 ms"]
    for lb in labels:
        head += [f"{lb} FE ms/req"]
    head += [f"{lb}/{baseline} FE ms/req" for lb in others]
    head += ["other CPU % (noise)"]
    md = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for cell in cells:
        by = cell["stacks"]
        row = {"mode": cell["mode"], "conn": cell["conn"], "concurrency": cell["concurrency"], "stacks": {}}
        for lb in labels:
            r = by[lb]
            row["stacks"][lb] = {k: r[k] for k in ("req_per_s", "out_tok_per_s", "ttft_p50_ms", "e2e_p50_ms",
                                                   "frontend_cpu_ms_per_req", "other_cpu_pct")}
            if lb != baseline:
                b = by[baseline]
                row["stacks"][lb]["ratio_req_per_s"] = _ratio(r["req_per_s"], b["req_per_s"])
                row["stacks"][lb]["ratio_ttft_p50"] = _ratio(r["ttft_p50_ms"], b["ttft_p50_ms"])
                row["stacks"][lb]["ratio_frontend_cpu_ms_per_req"] = _ratio(
                    r["frontend_cpu_ms_per_req"], b["frontend_cpu_ms_per_req"])
        rows_json.append(row)
        s = row["stacks"]
        vals = [cell["mode"], cell["conn"], str(cell["concurrency"])]
        vals += [_fmt(s[lb]["req_per_s"]) for lb in labels]
        vals += [f"**{_fmt(s[lb]['ratio_req_per_s'])}**" for lb in others]
        vals += [_fmt(s[lb]["ttft_p50_ms"]) for lb in labels]
        vals += [_fmt(s[lb]["e2e_p50_ms"]) for lb in labels]
        vals += [_fmt(s[lb]["frontend_cpu_ms_per_req"]) for lb in labels]
        vals += [_fmt(s[lb]["ratio_frontend_cpu_ms_per_req"]) for lb in others]
        vals += [" / ".join(_fmt(s[lb]["other_cpu_pct"]) for lb in labels)]
        md.append("| " + " | ".join(vals) + " |")
    return rows_json, "\n".join(md)


def goals(cells: list[dict], label: str, baseline: str | None) -> tuple[list[dict], str]:
    """Issue 10's goals for stack ``label`` (ratios against ``baseline`` when it ran)."""
    def find(mode: str, conn: str, conc: int) -> dict | None:
        for c in cells:
            if (c["mode"], c["conn"], c["concurrency"]) == (mode, conn, conc):
                return c["stacks"]
        return None

    out = []
    for mode in ("stream", "non-stream"):
        c = find(mode, "keep-alive", 32)
        if c and baseline:
            ratio = _ratio(c[label]["req_per_s"], c[baseline]["req_per_s"])
            out.append({"goal": f"req/s at c=32, {mode}, keep-alive: {label}/{baseline} >= 1.0",
                        "value": f"{c[label]['req_per_s']} / {c[baseline]['req_per_s']} = {ratio}",
                        "met": ratio is not None and ratio >= 1.0})
    c = find("stream", "keep-alive", 1)
    if c:
        v = c[label]["ttft_p50_ms"]
        extra = (f" (E2E p50 {c[label]['e2e_p50_ms']} ms; {baseline}: TTFT {c[baseline]['ttft_p50_ms']} ms, "
                 f"E2E {c[baseline]['e2e_p50_ms']} ms)" if baseline else "")
        out.append({"goal": "stream TTFT p50 at c=1, keep-alive < 5 ms", "value": f"{v} ms{extra}",
                    "met": v is not None and v < 5})
    c = find("stream", "keep-alive", 32)
    if c:
        v = c[label]["frontend_cpu_ms_per_req"]
        extra = f" (anchor {c[baseline]['frontend_cpu_ms_per_req']} ms)" if baseline else ""
        out.append({"goal": "frontend CPU per streamed 64-token request (c=32, keep-alive) < 1 ms",
                    "value": f"{v} ms{extra}", "met": v < 1})
    md = ["| goal | measured | met |", "|---|---|---|"]
    md += [f"| {g['goal']} | {g['value']} | {'yes' if g['met'] else '**no**'} |" for g in out]
    return out, "\n".join(md)


def _median_result(runs: list[dict]) -> dict:
    """The median of each number over repeats (the first run's other fields)."""
    if len(runs) == 1:
        return runs[0]
    out = dict(runs[0])
    for k, v in runs[0].items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and all(r.get(k) is not None for r in runs):
            out[k] = round(statistics.median(r[k] for r in runs), 3)
    out["repeats"] = len(runs)
    return out


# -- main -----------------------------------------------------------------------------------------


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stacks", nargs="+", type=StackSpec.parse, default=[StackSpec("ours", "ours")],
                   help="stacks to measure: [LABEL=]ours|anchor[@PYTHON][:EXTRA FRONTEND FLAGS] (default: ours)")
    p.add_argument("--baseline", default=None, help="stack label the ratios divide by (default: anchor if it runs)")
    p.add_argument("--order", choices=["interleaved", "sequential"], default="interleaved")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    p.add_argument("--duration", type=float, default=8.0, help="recorded seconds per cell and stack")
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--pause", type=float, default=0.5, help="seconds of quiet before each cell")
    p.add_argument("--repeat", type=int, default=1, help="measure each cell this many times (the median is kept)")
    p.add_argument("--quiet-below", type=float, default=0.0, metavar="PCT",
                   help="before each cell wait until the machine is under PCT %% busy (100 = one core; 0: off)")
    p.add_argument("--quiet-wait", type=float, default=30.0, help="longest wait for --quiet-below, seconds")
    p.add_argument("--modes", nargs="+", default=["stream", "non-stream"], choices=["stream", "non-stream"])
    p.add_argument("--new-connection", action="store_true", help="also measure a new connection per request")
    p.add_argument("--conn", nargs="+", choices=["keep-alive", "new"], default=None,
                   help="connection modes to measure (default keep-alive; both with --new-connection)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--prompt-words", type=int, default=120)
    p.add_argument("--model", default="mocker", help="served model name (both stacks serve it under this name)")
    p.add_argument("--frontend-arg", action="append", default=[], help="extra flag for our frontend (repeatable)")
    p.add_argument("--worker-arg", action="append", default=[], help="extra flag for our mocker (repeatable)")
    p.add_argument("--anchor-frontend-arg", action="append", default=[], help="extra flag for the anchor's frontend")
    p.add_argument("--anchor-worker-arg", action="append", default=[], help="extra flag for the anchor's mocker")
    p.add_argument("--ours-python", default=sys.executable)
    p.add_argument("--anchor-python", type=Path, default=ANCHOR_PY)
    p.add_argument("--anchor-model", type=Path, default=MODEL_DIR,
                   help="model dir for the anchor's mocker (config.json must have 'architectures')")
    p.add_argument("--log", default="warn", help="DYN_LOG for every server (default warn)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--label", default=None, help="output file name (default: frontend, or frontend-vs-anchor)")
    p.add_argument("--keep-logs", action="store_true", help="copy the last 64 KB of each server's log next to the results")
    args = p.parse_args(argv)
    args.conn = args.conn or (["keep-alive", "new"] if args.new_connection else ["keep-alive"])
    args.stacks = [a if isinstance(a, StackSpec) else StackSpec.parse(a) for a in args.stacks]
    labels = [s.label for s in args.stacks]
    if len(set(labels)) != len(labels):
        p.error(f"stack labels must differ: {labels} (name them, e.g. 'ours-2p=ours:--http-workers 2')")
    if args.baseline is None:
        args.baseline = "anchor" if "anchor" in labels else (labels[0] if len(labels) > 1 else None)
    elif args.baseline not in labels:
        p.error(f"--baseline {args.baseline!r} is not one of {labels}")
    if any(s.kind == "anchor" for s in args.stacks):
        if not args.anchor_python.exists():
            p.error(f"{args.anchor_python} not found: run  bash benchmarks/frontend/setup-anchor.sh")
        cfg = json.loads((args.anchor_model / "config.json").read_text())
        if not cfg.get("architectures"):
            p.error(f"{args.anchor_model}/config.json has no 'architectures': the anchor's frontend 404s every request")
    if args.label is None:
        args.label = "frontend-vs-anchor" if "anchor" in labels else "frontend"
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout's SIGTERM still stops the stacks
    cells = [(mode, conn, conc) for mode in args.modes for conn in args.conn for conc in args.concurrency]
    labels = [s.label for s in args.stacks]
    results: list[dict] = []
    by_cell: dict[tuple, dict[str, list[dict]]] = {c: {} for c in cells}
    meta_stacks: dict[str, dict] = {}
    tmp = Path(tempfile.mkdtemp(prefix="dyn-bench-"))

    def record(stack: Stack, cell: tuple, rep: int) -> None:
        mode, conn, conc = cell
        r = run_cell(stack, conc, mode == "stream", conn == "new", args)
        r["repeat"] = rep
        print(json.dumps(r), flush=True)
        results.append(r)
        by_cell[cell].setdefault(stack.spec.label, []).append(r)

    def started(spec: StackSpec) -> Stack:
        st = Stack(spec, tmp / spec.label, args)
        st.start()
        time.sleep(1.0)
        b, t0 = st.cpu(), time.perf_counter()
        time.sleep(2.0)
        a, t1 = st.cpu(), time.perf_counter()
        meta_stacks[spec.label] = {
            "kind": spec.kind, "commands": st.commands, "versions": st.versions,
            "idle_cpu_pct": {n: round(100 * (y - x) / (t1 - t0), 2) for n, x, y in zip(("frontend", "worker"), b, a)},
            "frontend_rss_mb_idle": round(tree_rss_kb(st.procs[0].pid) / 1024, 1),
        }
        print(f"# {spec.label} up on {st.url}: {meta_stacks[spec.label]}", file=sys.stderr, flush=True)
        return st

    stacks: list[Stack] = []
    try:
        if args.order == "interleaved":
            for spec in args.stacks:
                stacks.append(started(spec))
            for i, cell in enumerate(cells):
                for rep in range(args.repeat):
                    if args.quiet_below:
                        print(f"# machine busy before cell: {wait_quiet(args.quiet_below, args.quiet_wait)} %",
                              file=sys.stderr, flush=True)
                    order = stacks if (i + rep) % 2 == 0 else stacks[::-1]
                    for st in order:
                        record(st, cell, rep)
        else:
            for spec in args.stacks:
                st = started(spec)
                stacks.append(st)
                try:
                    for cell in cells:
                        for rep in range(args.repeat):
                            record(st, cell, rep)
                finally:
                    st.stop()
    finally:
        for st in stacks:
            st.stop()
        if args.keep_logs:
            logs = args.out / f"{args.label}-logs"
            logs.mkdir(parents=True, exist_ok=True)
            for f in tmp.glob("*/*.log"):  # the last 64 KB: the anchor logs a line per request even at warn
                with open(f, "rb") as src:
                    src.seek(max(0, f.stat().st_size - 65536))
                    (logs / f"{f.parent.name}-{f.name}").write_bytes(src.read())
        shutil.rmtree(tmp, ignore_errors=True)

    merged = [{"mode": m, "conn": c, "concurrency": n,
               "stacks": {lb: _median_result(by_cell[(m, c, n)][lb]) for lb in labels}} for (m, c, n) in cells]
    load = Path("/proc/loadavg").read_text().split()[:3]
    meta = {
        "machine": platform.machine(), "cpus": os.cpu_count(), "kernel": platform.release(),
        "cpu_model": next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                           if ln.startswith("model name")), "?"),
        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M"),
        "loadavg_at_end": load, "duration_s": args.duration, "warmup_s": args.warmup, "repeat": args.repeat,
        "order": args.order, "max_tokens": args.max_tokens, "prompt_words": args.prompt_words, "log": args.log,
        "frontend_args": args.frontend_arg, "anchor_frontend_args": args.anchor_frontend_arg,
        "baseline": args.baseline, "stacks": meta_stacks, "argv": sys.argv[1:], "git": git_state(),
    }
    out: dict = {"meta": meta, "results": results, "cells": merged}
    md = [f"# {args.label}", "", "```", json.dumps({k: v for k, v in meta.items() if k != "stacks"}), "```", ""]
    for lb in labels:
        ms = meta_stacks.get(lb, {})
        md += [f"## {lb}", "", f"- frontend: `{ms.get('commands', {}).get('frontend')}`",
               f"- worker: `{ms.get('commands', {}).get('worker')}`",
               f"- versions: {ms.get('versions')}; idle CPU %: {ms.get('idle_cpu_pct')}; "
               f"frontend RSS idle: {ms.get('frontend_rss_mb_idle')} MB", "",
               table([c["stacks"][lb] for c in merged]), ""]
    if args.baseline and len(labels) > 1:
        comp_json, comp_md = compare(merged, labels, args.baseline)
        out["comparison"] = comp_json
        md += [f"## Side by side (ratios: stack / {args.baseline}; req/s higher is better, FE ms/req lower is better)",
               "", comp_md, ""]
    ours_kind = [s.label for s in args.stacks if s.kind == "ours"]
    if len(ours_kind) > 1:  # e.g. ours vs 'ours-2p=ours:--http-workers 2': the scaling
        first = ours_kind[0]
        sc_md = [f"| mode | conn | conc | " + " | ".join(f"{lb}/{first} req/s | {lb}/{first} FE ms/req"
                                                     for lb in ours_kind[1:]) + " |",
                 "|" + "---|" * (3 + 2 * (len(ours_kind) - 1))]
        for c in merged:
            s0 = c["stacks"][first]
            vals = [c["mode"], c["conn"], str(c["concurrency"])]
            for lb in ours_kind[1:]:
                s1 = c["stacks"][lb]
                vals += [f"**{_fmt(_ratio(s1['req_per_s'], s0['req_per_s']))}**",
                         _fmt(_ratio(s1["frontend_cpu_ms_per_req"], s0["frontend_cpu_ms_per_req"]))]
            sc_md.append("| " + " | ".join(vals) + " |")
        md += [f"## Scaling: each of our variants / {first}", "", "\n".join(sc_md), ""]
    for lb in labels:
        if lb == args.baseline:
            continue
        g_json, g_md = goals(merged, lb, args.baseline if args.baseline and len(labels) > 1 else None)
        if g_json:
            out.setdefault("goals", {})[lb] = g_json
            md += [f"## Issue 10 goals: {lb}", "", g_md, ""]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.label}.json").write_text(json.dumps(out, indent=1))
    text = "\n".join(md)
    (args.out / f"{args.label}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
