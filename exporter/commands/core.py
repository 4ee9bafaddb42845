"""Subcommands: check-config, migrate, source init, exporter."""

from __future__ import annotations

import argparse
import json
import os
import sys

import asyncpg

from exporter.commands.common import add_config_arg, config_or_exit, run, setup_logging
from exporter.commands.parts import add_exporter, add_metrics
from exporter.config import Config
from exporter.db import connect
from exporter.runtime import Runtime, raise_open_files_limit
from exporter.service import ExporterService, store_dsn
from exporter.store import backend_for
from exporter.store.migrate import migrate
from exporter.store.roles import READER, RoleError, ensure_reader
from monitoring.tenant import referenced_relations

READER_PASSWORD_ENV = "WFA_READER_PASSWORD"
"""Environment variable with the password of the Grafana reader role."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    p = sub.add_parser("check-config", help="validate the config file and exit (1 on problems)")
    add_config_arg(p)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser(
        "migrate", help="create or upgrade the wfa schema in the store, and the wfa_reader role"
    )
    add_config_arg(p)
    p.add_argument(
        "--no-roles",
        action="store_true",
        help=f"leave the {READER} role alone (the store user may lack CREATEROLE)",
    )
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("source", help="source tables (demo and tests)")
    ssub = p.add_subparsers(dest="source_cmd", required=True)
    init = ssub.add_parser("init", help="create the default source tables")
    add_config_arg(init)
    init.set_defaults(func=cmd_source_init)

    p = sub.add_parser("exporter", help="poll the source into the store forever")
    add_config_arg(p)
    p.add_argument("--once", action="store_true", help="ingest until caught up, refresh, exit")
    p.set_defaults(func=cmd_exporter)


def cmd_check_config(args: argparse.Namespace) -> int:
    """Exit 0 on a good config, 1 after listing every problem."""
    config_or_exit(args)
    print("config ok")
    return 0


async def _migrate(cfg: Config, with_roles: bool) -> int:
    conn = await connect(
        store_dsn(cfg), retries=cfg.store.connect_retries, retry_delay=cfg.store.connect_retry_delay
    )
    try:
        backend = await backend_for(conn, cfg.store)
        version = await migrate(conn, backend)
        print(f"schema wfa at version {version} ({backend.name}: {backend.reason})")
        if with_roles:
            password = os.environ.get(READER_PASSWORD_ENV) or None
            try:
                print(await ensure_reader(conn, referenced_relations(), password))
            except (RoleError, asyncpg.InsufficientPrivilegeError) as exc:
                print(
                    f"migrate: role {READER}: {exc} (grant the store user CREATEROLE, "
                    "or pass --no-roles)",
                    file=sys.stderr,
                )
                return 1
    finally:
        await conn.close()
    return 0


def cmd_migrate(args: argparse.Namespace) -> int:
    """Create or upgrade the store schema, then the Grafana reader role."""
    return run(_migrate(config_or_exit(args), not args.no_roles))


async def _source_init(cfg: Config) -> int:
    from exporter.simulate.writer import create_source_schema

    conn = await connect(cfg.source.dsn)
    try:
        await create_source_schema(conn, cfg.source.executions_table, cfg.source.workflows_table)
    finally:
        await conn.close()
    print(f"source tables {cfg.source.workflows_table}, {cfg.source.executions_table} ready")
    return 0


def cmd_source_init(args: argparse.Namespace) -> int:
    """Create the default source tables."""
    return run(_source_init(config_or_exit(args)))


async def _exporter_once(cfg: Config) -> int:
    service = ExporterService(cfg)
    try:
        await service.open()
        result = await service.poll_once()
    finally:
        await service.close()
    if result is None:
        print("another exporter holds the poll lock", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "batches": result.batches,
                "read": result.read,
                "written": result.written,
                "skipped": result.skipped,
                "rejected": result.rejected,
                "rows": result.rows,
                "seconds": round(result.seconds, 3),
            }
        )
    )
    return 0


async def _exporter(cfg: Config) -> int:
    """Serve /metrics at once, wait for the store as long as it takes, then poll until stopped."""
    raise_open_files_limit()
    rt = Runtime()
    service = add_exporter(rt, cfg)
    add_metrics(rt, service, cfg)
    return await rt.run()


def cmd_exporter(args: argparse.Namespace) -> int:
    """Run the exporter."""
    setup_logging()
    cfg = config_or_exit(args)
    return run(_exporter_once(cfg) if args.once else _exporter(cfg))
