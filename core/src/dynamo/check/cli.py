"""Command lines: ``python -m dynamo.check [flags]`` and the ``dynamo`` script (``dynamo check [flags]``)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: dynamo <command> [flags]

commands:
  check     check this machine for running Dynamo (same as python -m dynamo.check)

The processes themselves: python -m dynamo.frontend, python -m dynamo.worker --engine NAME
(or dynamo-frontend, dynamo-worker). Run 'dynamo check --help' for the check's flags.
"""


def check_main(argv: Sequence[str] | None = None, prog: str = "dynamo check") -> None:
    """Print the report and exit 1 when something the chosen configuration needs is missing."""
    from dynamo.check.run import run_checks
    from dynamo.check.settings import parse_check_args

    try:
        options = parse_check_args(list(sys.argv[1:] if argv is None else argv), prog=prog)
    except ValueError as exc:  # a DYN_* variable that does not validate
        print(f"{prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    report = run_checks(options)
    try:
        print(report.to_json() if options.as_json else report.to_text(), flush=True)
    except BrokenPipeError:  # piped into head: the reader has what it wanted
        sys.stdout = None  # type: ignore[assignment]
    raise SystemExit(report.exit_code)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("dynamo-core")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        raise SystemExit(0 if args else 2)
    if args[0] == "--version":
        print(f"dynamo-core {_version()}")
        return
    if args[0] == "check":
        check_main(args[1:], prog="dynamo check")
    print(f"dynamo: unknown command {args[0]!r}\n\n{USAGE}", end="", file=sys.stderr)
    raise SystemExit(2)
