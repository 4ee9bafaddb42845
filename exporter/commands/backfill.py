"""Subcommand: backfill — first import of a large existing history, with progress; resumable."""

from __future__ import annotations

import argparse
import asyncio
import sys

from exporter.commands.common import add_config_arg, config_or_exit, run, setup_logging
from exporter.config import Config
from exporter.runtime import Runtime


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `backfill` subcommand."""
    p = sub.add_parser(
        "backfill",
        help="import the whole source history once (progress, rate, ETA; resumable)",
    )
    add_config_arg(p)
    p.add_argument("--batch-size", type=int, default=None, help="rows per batch (transaction)")
    p.add_argument(
        "--progress-interval",
        type=float,
        default=10.0,
        help="seconds between progress lines when not on a terminal",
    )
    p.set_defaults(func=cmd_backfill)


def with_batch_size(cfg: Config, batch_size: int | None) -> Config:
    """The config with `exporter.batch_size` replaced when given."""
    if batch_size is None:
        return cfg
    if not 1 <= batch_size <= 100_000:
        raise SystemExit("--batch-size must be between 1 and 100000")
    return cfg.model_copy(
        update={"exporter": cfg.exporter.model_copy(update={"batch_size": batch_size})}
    )


async def _backfill(cfg: Config, interval: float) -> int:
    rt = Runtime()
    return await rt.run(lambda: _run_backfill(cfg, rt.stop, interval))


async def _run_backfill(cfg: Config, stop: asyncio.Event, interval: float) -> int:
    from exporter.backfill import BackfillLocked, backfill, duration_text

    try:
        res = await backfill(cfg, stop=stop, interval=interval)
    except BackfillLocked as exc:
        print(f"backfill: {exc}; stop it first", file=sys.stderr)
        return 1
    p = res.progress
    if not res.complete:
        print(
            f"backfill: interrupted at {p.done:,} of {p.total:,} rows; "
            "run it again to resume",
            file=sys.stderr,
        )
        return 130
    poll = res.poll
    assert poll is not None
    rejected = sum(poll.rejected.values())
    print(
        f"backfill: done, {poll.read:,} rows read, {poll.written:,} written, "
        f"{rejected:,} rejected in {duration_text(p.elapsed)} "
        f"({p.rate:,.0f} rows/s); rollups refreshed in {res.refresh_seconds:.1f}s",
        file=sys.stderr,
    )
    return 0


def cmd_backfill(args: argparse.Namespace) -> int:
    """Run the backfill."""
    setup_logging("WARNING")
    cfg = with_batch_size(config_or_exit(args), args.batch_size)
    return run(_backfill(cfg, args.progress_interval))
