"""``python -m dynamo.trtllm ...`` is ``python -m dynamo.worker --engine trtllm ...``."""

from __future__ import annotations

import sys


def main() -> None:
    from dynamo.worker.main import main as worker_main

    worker_main(["--engine", "trtllm", *sys.argv[1:]])


if __name__ == "__main__":
    main()
