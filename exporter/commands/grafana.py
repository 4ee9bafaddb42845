"""Subcommand: grafana provision (one tenant's organization, over a role that sees its rows)."""

from __future__ import annotations

import argparse
import os
import secrets
import sys
from pathlib import Path, PurePosixPath

import asyncpg

from exporter.commands.common import add_config_arg, config_or_exit, run
from exporter.config import Config
from exporter.db import connect
from exporter.store import roles
from exporter.store.migrate import SchemaError, recorded_backend, require_current
from monitoring import provision
from monitoring.tenant import RewriteError, referenced_relations


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    p = sub.add_parser("grafana", help="Grafana provisioning")
    gsub = p.add_subparsers(dest="grafana_cmd", required=True)
    prov = gsub.add_parser(
        "provision",
        help="a tenant's Grafana organization: a role seeing only its rows, data source, "
        "dashboards",
    )
    add_config_arg(prov)
    prov.add_argument("--tenant", required=True, help="the tenant id")
    prov.add_argument(
        "--org-id", required=True, type=int, help="the tenant's Grafana organization id"
    )
    prov.add_argument("--out", required=True, type=Path, help="directory to write into")
    prov.add_argument(
        "--grafana-dir",
        type=PurePosixPath,
        default=provision.DEFAULT_GRAFANA_DIR,
        help=f"where --out is mounted in Grafana (default: {provision.DEFAULT_GRAFANA_DIR})",
    )
    prov.set_defaults(func=cmd_grafana_provision)


def _fail(message: str, code: int) -> int:
    print(f"grafana provision: {message}", file=sys.stderr)
    return code


def cmd_grafana_provision(args: argparse.Namespace) -> int:
    """Create or refresh the tenant's role and views, then write its provisioning files."""
    try:
        role = roles.tenant_role(args.tenant)
    except roles.RoleError as exc:
        return _fail(f"--tenant: {exc}; the operator's view is the main organization", 2)
    if args.org_id < 1:
        return _fail("--org-id: must be a Grafana organization id (1 or more)", 2)
    return run(_provision(config_or_exit(args), args, role))


async def _provision(cfg: Config, args: argparse.Namespace, role: str) -> int:
    env = f"{role.upper()}_DB_PASSWORD"
    password = os.environ.get(env) or None
    generated = password is None
    if generated:
        password = secrets.token_urlsafe(24)
    assert password is not None
    try:
        relations = referenced_relations()
        roles.check_readable(relations)
    except (RewriteError, roles.RoleError) as exc:
        return _fail(str(exc), 1)
    conn = await connect(
        cfg.store_dsn, retries=cfg.store.connect_retries, retry_delay=cfg.store.connect_retry_delay
    )
    try:
        await require_current(conn)
        access = await roles.provision_tenant(conn, args.tenant, relations, password)
        backend = await recorded_backend(conn)
    except (SchemaError, roles.RoleError) as exc:
        return _fail(str(exc), 1)
    except asyncpg.InsufficientPrivilegeError as exc:
        return _fail(f"{exc} (the store user needs CREATEROLE, or run this as its owner)", 1)
    finally:
        await conn.close()
    t = provision.TenantGrafana(
        args.tenant, access.role, access.schema, args.org_id, backend == "timescaledb"
    )
    try:
        written = provision.write(t, args.out, args.grafana_dir)
    except (RewriteError, OSError) as exc:
        return _fail(str(exc), 1)
    for path in written:
        print(path)
    print(
        f"role {access.role}: reads schema {access.schema} ({len(access.relations)} views of "
        f"tenant {args.tenant!r}, {access.workflows} workflows now), nothing else"
    )
    if access.workflows == 0:
        print(f"note: the store has no workflow of tenant {args.tenant!r} yet", file=sys.stderr)
    if generated:
        print("Grafana needs this generated password (it is not stored anywhere):")
        print(f"  {env}={password}")
    else:
        print(f"the role's password is the value of {env}; Grafana needs it too")
    return 0
