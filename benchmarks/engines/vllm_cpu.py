"""Start-up time and a simple throughput figure for the vLLM plugin, in-process (no frontend).

    .venv-vllm/bin/python benchmarks/engines/vllm_cpu.py [--model-dir DIR] [--out FILE] [vLLM flags...]

Without --model-dir it builds the tests' tiny random-weight Llama (tests/engines/tiny_llama.py) into
.cache/models. Defaults are the CPU settings of the tests (block size 32, max_model_len 512, 8 seqs,
float32, eager); any extra flags go to vLLM. Prints one JSON object (and writes it with --out).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import platform
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def tiny_llama() -> Path:
    spec = importlib.util.spec_from_file_location("tiny_llama", REPO / "tests/engines/tiny_llama.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_tiny_llama(os.environ.get("DYN_TEST_MODEL_CACHE") or REPO / ".cache/models")


async def run(model_dir: Path, extra: list[str]) -> dict:
    t0 = time.perf_counter()
    from dynamo.plugin import EngineContext, GenerateRequest, SamplingOptions, StopConditions, plugin_manager

    spec = plugin_manager().get("vllm")
    argv = ["--model-path", str(model_dir), "--block-size", "32", "--max-model-len", "512",
            "--max-num-seqs", "8", "--enforce-eager", "--dtype", "float32",
            "--gpu-memory-utilization", "0.1", *extra]  # fmt: skip
    engine = spec.factory(EngineContext(argv=argv))
    t_import = time.perf_counter() - t0
    t1 = time.perf_counter()
    info = await engine.start()
    t_start = time.perf_counter() - t1

    def req(seed: int, max_tokens: int, n_prompt: int = 32) -> GenerateRequest:
        toks = [(seed * 7919 + i * 104729) % 1900 + 8 for i in range(n_prompt)]
        return GenerateRequest(request_id=uuid.uuid4().hex, token_ids=toks,
                               sampling=SamplingOptions(temperature=0.0),
                               stop=StopConditions(max_tokens=max_tokens, ignore_eos=True))  # fmt: skip

    async def one(r: GenerateRequest) -> tuple[int, float]:
        t = time.perf_counter()
        first = None
        n = 0
        async for d in engine.generate(r):
            if first is None and d.token_ids:
                first = time.perf_counter() - t
            n += len(d.token_ids)
        return n, first or 0.0

    try:
        await one(req(0, 4))  # warm-up
        t = time.perf_counter()
        n, ttft = await one(req(1, 16))
        single = {"tokens": n, "seconds": round(time.perf_counter() - t, 4), "ttft_s": round(ttft, 4)}
        batches = {}
        for conc, max_tokens in ((8, 32), (8, 128), (32, 64)):
            t = time.perf_counter()
            res = await asyncio.gather(*(one(req(100 + i, max_tokens)) for i in range(conc)))
            dt = time.perf_counter() - t
            total = sum(n for n, _ in res)
            batches[f"{conc}x{max_tokens}"] = {
                "tokens": total, "seconds": round(dt, 3), "tokens_per_s": round(total / dt),
                "mean_ttft_s": round(sum(f for _, f in res) / conc, 4),
            }  # fmt: skip
    finally:
        t = time.perf_counter()
        await engine.aclose()
        t_close = time.perf_counter() - t
    import torch
    import vllm

    return {
        "engine": "vllm", "vllm": vllm.__version__, "torch": torch.__version__,
        "cpu_count": os.cpu_count(), "machine": platform.machine(),
        "model": str(model_dir), "kv_block_size": info.kv_block_size, "total_kv_blocks": info.total_kv_blocks,
        "import_s": round(t_import, 2), "start_s": round(t_start, 2), "close_s": round(t_close, 2),
        "single_16_tokens": single, "concurrent": batches,
    }  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--out", type=Path)
    args, extra = p.parse_known_args()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    result = asyncio.run(run(args.model_dir or tiny_llama(), extra))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
