"""``python -m dynamo.worker --engine NAME [flags] [engine flags]``: host one engine.

Flags this host does not know are passed to the engine's own parser untouched.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence

from dynamo.plugin.engine import EngineContext
from dynamo.plugin.errors import PluginError
from dynamo.plugin.manager import plugin_manager
from dynamo.runtime.logging import configure_logging
from dynamo.runtime.settings import build_parser, parse_args
from dynamo.worker.settings import WorkerSettings

log = logging.getLogger("dynamo.worker")


def _extra_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--list-engines", action="store_true", help="print the installed engines and exit")
    return p


def _fail(message: str, code: int = 2) -> None:
    print(f"dynamo.worker: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _engine_named(argv: list[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--engine" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--engine="):
            return arg.split("=", 1)[1]
    return os.environ.get("DYN_ENGINE")


def _print_help(argv: list[str]) -> None:
    """The host's flags, then the chosen engine's own flags (they pass through untouched)."""
    parser = build_parser(WorkerSettings, prog=PROG, description=DESCRIPTION, extra=_extra_parser())
    print(parser.format_help())
    name = _engine_named(argv)
    if not name:
        print("Add --engine NAME to see that engine's own flags as well.")
        return
    try:
        spec = plugin_manager().get(name)
    except PluginError as exc:
        print(f"({exc.message})")
        return
    if spec.help is None:
        print(f"engine {name!r} has no flags of its own.")
        return
    try:
        text = spec.help()
    except PluginError as exc:
        text = f"(cannot show the flags of engine {name!r}: {exc.message})"
    print(f"flags of engine {name!r} (passed to it untouched):\n\n{text}")


PROG = "python -m dynamo.worker"
DESCRIPTION = "Host an inference engine and serve it to Dynamo frontends."


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        _print_help(argv)
        return
    extra = _extra_parser()
    settings, rest, flags = parse_args(
        WorkerSettings, argv, prog=PROG, allow_unknown=True, extra=extra, description=DESCRIPTION,
    )
    configure_logging(settings.log)
    pm = plugin_manager()
    try:
        if flags.list_engines:
            for name in pm.engines():
                print(name)
            return
        if not settings.engine:
            _fail(f"--engine is required (installed: {', '.join(pm.engines()) or 'none'})")
        spec = pm.get(str(settings.engine))
    except PluginError as exc:
        _fail(exc.message)
        return
    ctx = EngineContext(
        argv=rest, model_path=settings.model_path, model_name=settings.model_name,
        kv_block_size=settings.kv_cache_block_size,
    )
    try:  # --num-workers N: N independent engines (and worker instances) in this process
        engines = [spec.factory(ctx) for _ in range(settings.num_workers)]
    except PluginError as exc:
        _fail(exc.message, 1)
        return
    except (ValueError, SystemExit) as exc:
        _fail(f"invalid flags for engine {spec.name!r}: {exc}")
        return
    try:
        _run(settings, spec, engines)
    except KeyboardInterrupt:
        pass


def _run(settings: WorkerSettings, spec, engines) -> None:  # type: ignore[no-untyped-def]
    from dynamo.runtime.eventloop import run

    run(_serve(settings, spec, engines))


async def _serve(settings: WorkerSettings, spec, engines) -> None:  # type: ignore[no-untyped-def]
    from dynamo.worker.host import WorkerHost

    hosts = [WorkerHost(settings, spec, engine) for engine in engines]
    host = hosts[0]  # the system port reports on the first worker
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    system_task = None
    if settings.system_port is not None:
        from dynamo.worker.system import serve

        system_task = asyncio.create_task(serve(host, settings.system_port))
    try:
        await asyncio.gather(*(h.run_until(stop) for h in hosts))
    except Exception as exc:
        log.error("worker failed: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        raise SystemExit(1) from None
    finally:
        if system_task is not None:
            system_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await system_task
    if any(h.unhealthy for h in hosts):
        raise SystemExit(3)  # a supervisor restarts us


if __name__ == "__main__":
    main()
