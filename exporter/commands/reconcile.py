"""Subcommand: reconcile (re-ingest what the keyset cursor missed)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta

from exporter.commands.common import add_config_arg, config_or_exit, run, setup_logging
from exporter.config import Config
from exporter.config.durations import parse_duration
from exporter.service import ExporterService


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `reconcile` subcommand."""
    p = sub.add_parser(
        "reconcile",
        help="compare source and store per workflow and day, re-ingest the days that differ",
        description=(
            "Compare source and store per (workflow, UTC day of enrolled_at) and re-ingest "
            "the rows of the days that differ; prints what it healed as JSON. It needs the "
            "poll lock: a running exporter's scheduled job does the same every "
            "exporter.reconcile_interval."
        ),
    )
    add_config_arg(p)
    p.add_argument(
        "--wait",
        type=_duration,
        default=None,
        metavar="DURATION",
        help="queue this long for the poll lock held by a running exporter (default: try once)",
    )
    p.add_argument(
        "--take-over",
        action="store_true",
        help="end the lock session of the running exporter (it resumes as soon as this ends; "
        "its batches in flight are fenced off)",
    )
    p.set_defaults(func=cmd_reconcile)


def _duration(text: str) -> timedelta:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _reconcile(cfg: Config, wait: timedelta | None, take_over: bool) -> int:
    service = ExporterService(cfg)
    await service.open()
    try:
        if take_over and wait is None:
            wait = timedelta(seconds=30)
        result = await service.reconcile_once(wait, take_over)
        if result is None:
            print(
                "another exporter holds the poll lock: wait for its scheduled reconcile, "
                "or run with --wait DURATION or --take-over",
                file=sys.stderr,
            )
            return 1
        print(json.dumps(result.to_json()))
        return 0
    finally:
        await service.close()


def cmd_reconcile(args: argparse.Namespace) -> int:
    """Run one reconcile and print what it healed."""
    setup_logging("WARNING")
    return run(_reconcile(config_or_exit(args), args.wait, args.take_over))
