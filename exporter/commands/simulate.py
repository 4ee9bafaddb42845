"""Subcommand: simulate — write a deterministic workload into the source tables."""

from __future__ import annotations

import argparse
import time
from datetime import UTC, datetime

from exporter.commands.common import add_config_arg, config_or_exit, run
from exporter.config import Config
from exporter.db import connect


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `simulate` subcommand."""
    p = sub.add_parser("simulate", help="write simulated workflow executions to the source")
    add_config_arg(p)
    p.add_argument("--executions", type=int, default=10_000, help="executions to generate")
    p.add_argument("--days", type=float, default=30.0, help="history length in days")
    p.add_argument("--workflows", type=int, default=5)
    p.add_argument("--tenants", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--now",
        type=datetime.fromisoformat,
        default=None,
        help="generate as of this ISO time (default: now)",
    )
    p.add_argument("--truth", metavar="FILE", help="write the exact expected numbers here")
    p.add_argument("--no-init", action="store_true", help="do not create the source tables")
    p.set_defaults(func=cmd_simulate)


async def _simulate(cfg: Config, args: argparse.Namespace) -> int:
    from exporter.simulate.generate import generate
    from exporter.simulate.truth import Truth
    from exporter.simulate.writer import create_source_schema, write

    now = args.now or datetime.now(UTC).replace(microsecond=0)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    started = time.perf_counter()
    data = generate(
        executions=args.executions,
        days=args.days,
        workflows=args.workflows,
        tenants=args.tenants,
        seed=args.seed,
        now=now,
    )
    conn = await connect(cfg.source.dsn)
    try:
        if not args.no_init:
            await create_source_schema(
                conn, cfg.source.executions_table, cfg.source.workflows_table
            )
        await write(
            conn,
            data,
            executions_table=cfg.source.executions_table,
            workflows_table=cfg.source.workflows_table,
        )
    finally:
        await conn.close()
    if args.truth:
        Truth(data, cfg.exporter.conversion_window).to_json(args.truth, args.days)
    took = time.perf_counter() - started
    print(
        f"wrote {len(data.workflows)} workflows and {len(data.executions)} executions "
        f"in {took:.1f}s"
    )
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Generate and write a workload."""
    return run(_simulate(config_or_exit(args), args))
