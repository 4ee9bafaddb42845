"""Subcommand: simulate — write a deterministic workload into the source tables, once or live."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import asyncpg

from exporter.commands.common import add_config_arg, config_or_exit, run, setup_logging
from exporter.config import Config
from exporter.db import connect

if TYPE_CHECKING:
    from exporter.simulate.incident import Incident
    from exporter.simulate.model import SimData


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `simulate` subcommand."""
    p = sub.add_parser("simulate", help="write simulated workflow executions to the source")
    add_config_arg(p)
    p.add_argument(
        "--executions",
        type=int,
        default=None,
        help="executions to generate (default 10000; with --live, 0: no history)",
    )
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
    p.add_argument("--no-init", action="store_true", help="do not create the source tables")
    p.add_argument(
        "--if-empty",
        action="store_true",
        help="write the history only into an empty source (for services that restart)",
    )
    p.add_argument(
        "--reset",
        action="store_true",
        help="empty the source tables first (by default a rerun appends new executions to the "
        "workflows already there)",
    )
    p.add_argument(
        "--live",
        action="store_true",
        help="then keep enrolling contacts and advancing executions until interrupted",
    )
    p.add_argument(
        "--rate", type=_rate, default=20.0, help="live enrollments: 20/s, 300/m, 5000/h"
    )
    p.add_argument(
        "--incident",
        type=_incident,
        action="append",
        default=[],
        metavar="SPEC",
        help="live: stage an incident, e.g. 'workflow=wf-01,step=3,dropoff=0.8,after=2m,for=10m' "
        "(or failure=0.6, slowdown=10 instead of dropoff=; repeatable)",
    )
    p.add_argument("--tick", type=float, default=1.0, help="live: seconds between writes")
    p.add_argument("--duration", type=float, default=None, help="live: stop after N seconds")
    p.add_argument(
        "--report-every",
        type=float,
        default=10.0,
        metavar="S",
        help="live: print a progress line every S seconds (rate, enrolled, advanced, finished)",
    )
    p.set_defaults(func=cmd_simulate)


def _incident(text: str) -> Incident:
    from exporter.simulate.incident import IncidentError, parse_incident

    try:
        return parse_incident(text)
    except IncidentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(text: str) -> float:
    from exporter.simulate.live import parse_rate

    try:
        return parse_rate(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


async def _simulate(cfg: Config, args: argparse.Namespace) -> int:
    if args.incident and not args.live:
        print("--incident needs --live (incidents happen in the live workload)", file=sys.stderr)
        return 1
    now = args.now or datetime.now(UTC).replace(microsecond=0)
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    executions = args.executions
    if executions is None:
        executions = 0 if args.live else 10_000
    if executions == 0 and args.live and not args.reset:
        return await _live(cfg, args)
    started = time.perf_counter()
    conn = await connect(cfg.source.dsn)
    try:
        data, note = await _history(conn, cfg, args, executions, now)
    finally:
        await conn.close()
    took = time.perf_counter() - started
    print(
        f"wrote {len(data.workflows)} workflows and {len(data.executions)} executions "
        f"in {took:.1f}s{note}",
        flush=True,
    )
    if args.live:
        return await _live(cfg, args)
    return 0


async def _history(
    conn: asyncpg.Connection, cfg: Config, args: argparse.Namespace, executions: int,
    now: datetime,
) -> tuple[SimData, str]:
    """Write the history: into empty tables, or appended to the workflows already there."""
    from exporter.simulate.generate import generate
    from exporter.simulate.live import load_workflows
    from exporter.simulate.model import SimData
    from exporter.simulate.writer import (
        create_source_schema,
        free_id_prefix,
        has_executions,
        reset_source,
        write,
    )

    s = cfg.source
    if not args.no_init:
        await create_source_schema(conn, s.executions_table, s.workflows_table)
    note = ""
    if args.reset:
        removed = await reset_source(conn, s.executions_table, s.workflows_table)
        note = f" (after removing {removed} executions)"
    given = await load_workflows(conn, s.workflows_table)
    if given and args.if_empty and await has_executions(conn, s.executions_table):
        return SimData([], [], now), " (--if-empty: the source has executions already)"
    prefix = await free_id_prefix(conn, s.executions_table)
    if given:
        note = f" (appended to the {len(given)} workflows already in the source)"
    data = await asyncio.to_thread(
        generate,
        executions=executions,
        days=args.days,
        workflows=args.workflows,
        tenants=args.tenants,
        seed=args.seed,
        now=now,
        id_prefix=prefix,
        given=given,
    )
    async with conn.transaction():
        await write(
            conn, data, executions_table=s.executions_table, workflows_table=s.workflows_table
        )
    return data, note


async def _live(cfg: Config, args: argparse.Namespace) -> int:
    """Run the live workload until SIGINT/SIGTERM or `--duration`."""
    from exporter.simulate.incident import IncidentError
    from exporter.simulate.live import open_live, run_live
    from exporter.simulate.writer import create_source_schema

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    conn = await connect(cfg.source.dsn)
    try:
        if not args.no_init:
            await create_source_schema(
                conn, cfg.source.executions_table, cfg.source.workflows_table
            )
        try:
            live = await open_live(
                conn,
                rate=args.rate,
                seed=args.seed,
                start=datetime.now(UTC),
                executions_table=cfg.source.executions_table,
                workflows_table=cfg.source.workflows_table,
                incidents=args.incident,
            )
        except IncidentError as exc:
            print(f"incident: {exc}", file=sys.stderr)
            return 1
        print(
            f"live: {len(live.workflows)} workflows, {live.active} active executions resumed, "
            f"{args.rate:g} enrollments/s; Ctrl-C stops",
            flush=True,
        )
        for inc in args.incident:
            print(f"incident staged: {inc.describe()}", flush=True)
        written = await run_live(
            conn,
            live,
            tick=args.tick,
            stop=stop,
            duration=args.duration,
            executions_table=cfg.source.executions_table,
            reconnect=lambda: connect(cfg.source.dsn),
            announce=lambda line: print(line, flush=True),
            report_every=args.report_every,
            report=lambda line: print(line, flush=True),
        )
    finally:
        await conn.close()
    print(f"live: {live.enrolled} enrolled, {written} rows written in {live.ticks} ticks")
    return 0


def cmd_simulate(args: argparse.Namespace) -> int:
    """Generate and write a workload."""
    setup_logging()
    return run(_simulate(config_or_exit(args), args))
