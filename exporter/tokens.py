"""API tokens kept in the store: create (the secret is shown once), list, revoke, load."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from exporter.config.schema import OPERATOR, token_problems
from exporter.store.sqlfiles import named

Q = named("tokens.sql")
TOKEN_PREFIX = "wfa_"
MAX_NAME_CHARS = 200


class TokenError(ValueError):
    """A token request that is refused; `field` names the offending input."""

    def __init__(self, message: str, field: str) -> None:
        super().__init__(message)
        self.field = field


@dataclass(frozen=True, slots=True)
class StoredToken:
    """A token row: who it is for and until when; never the secret."""

    name: str
    tenant: str
    scopes: frozenset[str]
    created_at: datetime | None = None
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    sha256: str = ""

    def status(self, now: datetime) -> str:
        """active, expired or revoked."""
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= now:
            return "expired"
        return "active"


def token_digest(token: str) -> str:
    """The hex SHA-256 of a token, as stored (config `api.tokens[].sha256` or the store)."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def parse_scopes(text: str) -> frozenset[str]:
    """The scopes of a comma-separated list (unchecked)."""
    return frozenset(s.strip() for s in text.split(",") if s.strip())


def check_request(name: str, tenant: str, scopes: frozenset[str]) -> None:
    """TokenError naming the first bad part of a token request."""
    for field, message in token_problems(tenant, scopes):
        raise TokenError(message, field)
    if not name.strip() or len(name) > MAX_NAME_CHARS:
        raise TokenError(f"must be 1 to {MAX_NAME_CHARS} characters", "name")


def default_name(tenant: str, scopes: Iterable[str]) -> str:
    """`<tenant>-<scopes>-<random>`, or `operator-admin-<random>` for the operator."""
    who = "operator" if tenant == OPERATOR else tenant[:100]
    return f"{who}-{'-'.join(sorted(scopes))}-{secrets.token_hex(3)}"


def _row(r: asyncpg.Record) -> StoredToken:
    return StoredToken(
        r["name"],
        r["tenant_id"],
        frozenset(r["scopes"]),
        r.get("created_at"),
        r["expires_at"],
        r.get("revoked_at"),
        r.get("sha256") or "",
    )


async def create(
    conn: asyncpg.Connection,
    *,
    name: str,
    tenant: str,
    scopes: frozenset[str],
    expires_in: timedelta | None = None,
    reserved: Iterable[str] = (),
) -> tuple[StoredToken, str]:
    """Store a new token's digest; (its row, the secret to show once). TokenError if refused."""
    check_request(name, tenant, scopes)
    if name in set(reserved):
        raise TokenError(f"{name!r} is the name of a config token", "name")
    if expires_in is not None and expires_in <= timedelta(0):
        raise TokenError("must be a positive duration such as 90d", "expires")
    secret = new_token()
    expires_at = None
    if expires_in is not None:
        expires_at = await conn.fetchval("SELECT now() + $1::interval", expires_in)
    row = await conn.fetchrow(
        Q["insert"], name, tenant, sorted(scopes), token_digest(secret), expires_at
    )
    if row is None:
        raise TokenError(f"a token named {name!r} exists already", "name")
    return _row(row), secret


async def list_all(conn: asyncpg.Connection) -> list[StoredToken]:
    """Every stored token, oldest first, revoked ones included."""
    return [_row(r) for r in await conn.fetch(Q["list"])]


async def revoke(conn: asyncpg.Connection, name: str) -> datetime | None:
    """Revoke a token by name (idempotent); when it was revoked, None if no such token."""
    row = await conn.fetchrow(Q["revoke"], name)
    return row["revoked_at"] if row is not None else None


async def active(conn: asyncpg.Connection) -> list[StoredToken]:
    """Tokens neither revoked nor expired, with their digests."""
    return [_row(r) for r in await conn.fetch(Q["active"])]
