"""Helpers shared by subcommands: loading the config, logging, running a coroutine."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import resource
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import asyncpg

from exporter.config import Config, ConfigError, config_path_from, load_config
from exporter.db import describe
from exporter.service import ExporterService
from exporter.store.migrate import SchemaError

log = logging.getLogger(__name__)


def add_config_arg(p: argparse.ArgumentParser) -> None:
    """The `--config FILE` option (default: $WFA_CONFIG)."""
    p.add_argument("--config", "-c", metavar="FILE", help="config file (default: $WFA_CONFIG)")


def config_or_exit(args: argparse.Namespace) -> Config:
    """Load the config, or print every problem and exit 1."""
    try:
        return load_config(config_path_from(getattr(args, "config", None)))
    except ConfigError as exc:
        print_problems(exc)
        raise SystemExit(1) from None


def print_problems(exc: ConfigError) -> None:
    """Print each config problem on its own line to stderr."""
    problems = getattr(exc, "problems", None) or [str(exc)]
    print("config error:", file=sys.stderr)
    for p in problems:
        print(f"  {p}", file=sys.stderr)


def setup_logging(level: str = "INFO") -> None:
    """Plain log lines on stderr; APScheduler's per-run lines only at DEBUG."""
    value = getattr(logging, level.upper(), logging.INFO)
    logging.basicConfig(level=value, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # "Running job ..." / "... executed successfully" at every poll: noise unless debugging
    logging.getLogger("apscheduler").setLevel(
        logging.DEBUG if value <= logging.DEBUG else max(value, logging.WARNING)
    )


def run(coro: Coroutine[Any, Any, int | None]) -> int:
    """Run a coroutine to completion and return its exit code."""
    return asyncio.run(coro) or 0


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard limit (many clients and streams)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def stop_event() -> asyncio.Event:
    """An event set by SIGTERM or SIGINT."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    return stop


class StartupFailed(Exception):
    """The exporter cannot start for a reason waiting will not fix (schema, permissions)."""


async def open_until_stopped(service: ExporterService, stop: asyncio.Event) -> bool:
    """Open the service, waiting for the store as long as it takes; False if stopped first.

    Raises StartupFailed (after logging the reason) on an error other than an unreachable store.
    """
    opening = asyncio.create_task(service.open(forever=True), name="wfa-open")
    stopped = asyncio.create_task(stop.wait(), name="wfa-stop")
    try:
        await asyncio.wait({opening, stopped}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not opening.done():
            opening.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await opening
    if opening.cancelled():
        return False
    exc = opening.exception()
    if exc is None:
        return True
    if isinstance(exc, SchemaError | asyncpg.PostgresError):
        log.error("cannot start: %s", describe(exc))
    else:
        log.error("cannot start", exc_info=exc)
    raise StartupFailed(describe(exc)) from exc
