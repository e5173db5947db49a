"""``python -m dynamo.vllm ...`` is ``python -m dynamo.worker --engine vllm ...``."""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> object:
    from dynamo.worker.main import main as worker_main

    return worker_main(["--engine", "vllm", *(sys.argv[1:] if argv is None else argv)])


# vLLM spawns its engine core with multiprocessing "spawn", which re-imports this module as
# __mp_main__: nothing may run at import time.
if __name__ == "__main__":
    sys.exit(main())
