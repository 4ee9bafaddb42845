"""Helpers shared by subcommands: loading the config, logging, running a coroutine."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from exporter.config import Config, ConfigError, config_path_from, load_config


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
