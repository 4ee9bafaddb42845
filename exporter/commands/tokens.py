"""Subcommands: token create / list / revoke (tokens kept in the store, or a config line)."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime, timedelta

import asyncpg

from exporter import tokens
from exporter.api.auth import config_entry
from exporter.commands.common import add_config_arg, config_or_exit, run
from exporter.config import Config, parse_duration
from exporter.config.schema import SCOPES
from exporter.db import connect
from exporter.store.migrate import SchemaError, require_current


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
    p = sub.add_parser("token", help="API bearer tokens kept in the store")
    tsub = p.add_subparsers(dest="token_cmd", required=True)

    create = tsub.add_parser(
        "create", help="store a new token and print it once (or only its config line)"
    )
    add_config_arg(create)
    create.add_argument(
        "--tenant", required=True, help='tenant the token may read ("*": the operator)'
    )
    create.add_argument(
        "--scopes",
        default="read",
        help=f"comma-separated scopes among {', '.join(SCOPES)} (default: read)",
    )
    create.add_argument("--expires", metavar="DURATION", help="e.g. 90d (default: never)")
    create.add_argument("--name", help="token name (default: <tenant>-<scopes>-<random>)")
    create.add_argument(
        "--config-line",
        action="store_true",
        help="store nothing: print the token and an api.tokens entry for the config file",
    )
    create.set_defaults(func=cmd_token_create)

    lst = tsub.add_parser("list", help="list the tokens of the store and of the config")
    add_config_arg(lst)
    lst.add_argument("--json", action="store_true", help="one JSON object per line")
    lst.set_defaults(func=cmd_token_list)

    revoke = tsub.add_parser("revoke", help="revoke a stored token (refused within seconds)")
    add_config_arg(revoke)
    revoke.add_argument("name", help="the token's name")
    revoke.set_defaults(func=cmd_token_revoke)


def _fail(message: str, code: int = 2) -> int:
    print(f"token: {message}", file=sys.stderr)
    return code


def cmd_token_create(args: argparse.Namespace) -> int:
    """Print a fresh token once; store its SHA-256 (or print the config entry holding it)."""
    scopes = tokens.parse_scopes(args.scopes)
    name = args.name if args.name is not None else tokens.default_name(args.tenant, scopes)
    expires: timedelta | None = None
    try:
        tokens.check_request(name, args.tenant, scopes)
        if args.expires is not None:
            try:
                expires = parse_duration(args.expires)
            except ValueError:
                raise tokens.TokenError("must be a duration such as 90d", "expires") from None
            if expires <= timedelta(0):
                raise tokens.TokenError("must be a positive duration such as 90d", "expires")
            if args.config_line:
                raise tokens.TokenError("config tokens do not expire; leave it out", "expires")
    except tokens.TokenError as exc:
        return _fail(f"--{exc.field}: {exc}")
    if args.config_line:
        token = tokens.new_token()
        print(f"token: {token}")
        print("add under api.tokens in the config (the token itself is not stored):")
        print(f"  {config_entry(name, args.tenant, scopes, token)}")
        return 0
    return run(_create(config_or_exit(args), name, args.tenant, scopes, expires))


async def _store(cfg: Config) -> asyncpg.Connection:
    """A connection to the store, whose schema must be current (SchemaError otherwise)."""
    conn = await connect(
        cfg.store_dsn, retries=cfg.store.connect_retries, retry_delay=cfg.store.connect_retry_delay
    )
    try:
        await require_current(conn)
    except SchemaError:
        await conn.close()
        raise
    return conn


async def _create(
    cfg: Config, name: str, tenant: str, scopes: frozenset[str], expires: timedelta | None
) -> int:
    try:
        conn = await _store(cfg)
    except SchemaError as exc:
        return _fail(str(exc), 1)
    try:
        row, secret = await tokens.create(
            conn,
            name=name,
            tenant=tenant,
            scopes=scopes,
            expires_in=expires,
            reserved=[t.name for t in cfg.api.tokens],
        )
    except tokens.TokenError as exc:
        return _fail(f"--{exc.field}: {exc}", 1)
    finally:
        await conn.close()
    until = row.expires_at.isoformat() if row.expires_at else "never"
    print(f"token: {secret}")
    print(
        f"stored as {row.name!r}: tenant {row.tenant!r}, scopes {', '.join(sorted(row.scopes))},"
        f" expires {until}. Only its SHA-256 is kept: copy the token now."
    )
    return 0


def _fmt(t: datetime | None) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ") if t is not None else "-"


async def _list(cfg: Config, as_json: bool) -> int:
    try:
        conn = await _store(cfg)
    except SchemaError as exc:
        return _fail(str(exc), 1)
    try:
        stored = await tokens.list_all(conn)
    finally:
        await conn.close()
    now = datetime.now(UTC)
    rows = [
        {
            "name": t.name,
            "tenant": t.tenant,
            "scopes": sorted(t.scopes),
            "source": "config",
            "status": "active",
            "created_at": None,
            "expires_at": None,
            "revoked_at": None,
        }
        for t in cfg.api.tokens
    ] + [
        {
            "name": t.name,
            "tenant": t.tenant,
            "scopes": sorted(t.scopes),
            "source": "store",
            "status": t.status(now),
            "created_at": _fmt(t.created_at),
            "expires_at": _fmt(t.expires_at) if t.expires_at else None,
            "revoked_at": _fmt(t.revoked_at) if t.revoked_at else None,
        }
        for t in stored
    ]
    if as_json:
        for r in rows:
            print(json.dumps(r))
        return 0
    head = ("NAME", "TENANT", "SCOPES", "SOURCE", "STATUS", "CREATED", "EXPIRES")
    table = [head] + [
        (
            r["name"],
            r["tenant"],
            ",".join(r["scopes"]),
            r["source"],
            r["status"],
            r["created_at"] or "-",
            r["expires_at"] or "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    """List stored and config tokens (never their secrets or digests)."""
    return run(_list(config_or_exit(args), args.json))


async def _revoke(cfg: Config, name: str) -> int:
    if name in {t.name for t in cfg.api.tokens}:
        return _fail(f"{name!r} is a config token: remove it from api.tokens and restart", 1)
    try:
        conn = await _store(cfg)
    except SchemaError as exc:
        return _fail(str(exc), 1)
    try:
        when = await tokens.revoke(conn, name)
    finally:
        await conn.close()
    if when is None:
        return _fail(f"no stored token named {name!r}", 1)
    print(f"revoked {name!r} at {_fmt(when)}; running APIs refuse it within 5 s")
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    """Revoke a stored token by name."""
    return run(_revoke(config_or_exit(args), args.name))
