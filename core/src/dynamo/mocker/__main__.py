"""``python -m dynamo.mocker ...`` is ``python -m dynamo.worker --engine mocker ...``."""

import sys


def main() -> None:
    from dynamo.worker.main import main as worker_main

    worker_main(["--engine", "mocker", *sys.argv[1:]])


if __name__ == "__main__":
    main()
