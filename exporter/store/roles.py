"""Database roles for Grafana: a read-only reader, and per tenant a role over filtered views.

`wfa_reader` may use the `wfa` schema and SELECT exactly the relations the dashboards read,
nothing else. A tenant's role may use only its own schema, which holds one
`security_barrier` view per such relation, filtered on the tenant (continuous aggregates
cannot carry row-level security, so both backends use views). The views belong to
`wfa_tenant_views`, a role that cannot log in and holds the same grants as the reader.
Passwords are sent as SCRAM-SHA-256 verifiers, never in clear.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from dataclasses import dataclass
from datetime import timedelta

import asyncpg

from exporter.config.schema import OPERATOR
from exporter.store.rollups import ROLLUPS
from exporter.store.sqlfiles import named

Q = named("roles.sql")
READER = "wfa_reader"
VIEW_OWNER = "wfa_tenant_views"
TENANT_PREFIX = "wfa_t_"
STATEMENT_TIMEOUT = timedelta(minutes=2)
"""Longest a Grafana query may run as one of these roles."""
READABLE: frozenset[str] = frozenset(
    [r.relation(level) for r in ROLLUPS for level in ("1h", "1d")]
    + ["wfa.workflows", "wfa.workflow_steps"]
)
"""Relations a dashboard may read: rollups and the workflow definitions, never raw rows."""
_DANGEROUS = ("rolsuper", "rolcreaterole", "rolcreatedb", "rolreplication", "rolbypassrls")
_SCRAM_ITERATIONS = 4096


class RoleError(RuntimeError):
    """A role cannot be set up safely (attributes, memberships, privileges, bad input)."""


@dataclass(frozen=True, slots=True)
class TenantAccess:
    """What was provisioned for one tenant."""

    tenant: str
    role: str
    schema: str
    relations: tuple[str, ...]
    workflows: int


def scram_verifier(password: str, salt: bytes | None = None) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password` (printable ASCII)."""
    if not password or not all(32 < ord(c) < 127 for c in password):
        raise RoleError("a role password must be printable ASCII without spaces")
    salt = salt if salt is not None else os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, _SCRAM_ITERATIONS)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()

    def b64(b: bytes) -> str:
        return base64.b64encode(b).decode()

    return (
        f"SCRAM-SHA-256${_SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"
    )


def tenant_role(tenant: str) -> str:
    """The role (and schema) name of a tenant: a bounded slug and a digest of the id."""
    if not tenant.strip() or tenant == OPERATOR:
        raise RoleError(f"{tenant!r} is not a tenant id")
    slug = re.sub(r"[^a-z0-9]+", "_", tenant.lower()).strip("_")[:24].rstrip("_")
    digest = hashlib.sha256(tenant.encode()).hexdigest()[:10]
    return f"{TENANT_PREFIX}{slug}_{digest}" if slug else f"{TENANT_PREFIX}{digest}"


def check_readable(relations: list[str]) -> None:
    """RoleError when a dashboard reads a relation that is not meant for Grafana."""
    extra = sorted(set(relations) - READABLE)
    if extra:
        raise RoleError(
            f"dashboards read {', '.join(extra)}: not a rollup or workflow definition relation"
        )


async def _ddl(conn: asyncpg.Connection, name: str, *args: object) -> None:
    """Run the statement(s) that the named query of roles.sql builds."""
    for row in await conn.fetch(Q[name], *args):
        await conn.execute(row[0])


async def _ensure_role(conn: asyncpg.Connection, role: str) -> bool:
    """Create `role` (NOLOGIN) unless it exists; RoleError if it exists with power. Created?"""
    attrs = await conn.fetchrow(Q["role"], role)
    if attrs is None:
        await _ddl(conn, "create_role", role)
        return True
    strong = [a.removeprefix("rol").upper() for a in _DANGEROUS if attrs[a]]
    if strong:
        raise RoleError(f"role {role} exists with {', '.join(strong)}: refusing to use it")
    member_of = [r["rolname"] for r in await conn.fetch(Q["memberships"], role)]
    if member_of:
        raise RoleError(
            f"role {role} is a member of {', '.join(member_of)}: it would inherit more than "
            "it is granted"
        )
    return False


async def _grant_exactly(conn: asyncpg.Connection, role: str, relations: list[str]) -> None:
    await _ddl(conn, "revoke_wfa", role)
    await _ddl(conn, "grant_usage", "wfa", role)
    for rel in relations:
        await _ddl(conn, "grant_select", rel, role)


async def _set_login(conn: asyncpg.Connection, role: str, password: str | None) -> None:
    if password is not None:
        await _ddl(conn, "set_login", role, scram_verifier(password))
    timeout = f"{int(STATEMENT_TIMEOUT.total_seconds() * 1000)}ms"
    await _ddl(conn, "role_settings", role, timeout)


async def ensure_reader(
    conn: asyncpg.Connection, relations: list[str], password: str | None
) -> str:
    """Create or update `wfa_reader` with SELECT on exactly `relations`; a one-line report.

    Without a password a new role stays NOLOGIN, and an existing one keeps its login.
    """
    check_readable(relations)
    async with conn.transaction():
        created = await _ensure_role(conn, READER)
        await _set_login(conn, READER, password)
        await _grant_exactly(conn, READER, relations)
        can_login = (await conn.fetchrow(Q["role"], READER))["rolcanlogin"]
    state = "LOGIN" if can_login else "NOLOGIN (set WFA_READER_PASSWORD and migrate again)"
    verb = "created" if created else "updated"
    return f"role {READER} {verb}: {state}, SELECT on {len(relations)} relations"


async def provision_tenant(
    conn: asyncpg.Connection, tenant: str, relations: list[str], password: str
) -> TenantAccess:
    """Create or refresh a tenant's role, schema and filtered views (one transaction)."""
    check_readable(relations)
    role = tenant_role(tenant)
    schema = role
    async with conn.transaction():
        await _ensure_role(conn, VIEW_OWNER)
        await _grant_exactly(conn, VIEW_OWNER, relations)
        if not await conn.fetchval(Q["i_am_superuser"]):
            await _ddl(conn, "grant_membership", VIEW_OWNER)
        await _ensure_role(conn, role)
        await _set_login(conn, role, password)
        await _ddl(conn, "role_search_path", role, schema)
        await _ddl(conn, "revoke_wfa", role)
        for row in await conn.fetch(Q["tenant_schemas"], schema):
            await _ddl(conn, "revoke_schema", row["nspname"], role)
        await _ddl(conn, "drop_schema", schema)
        await _ddl(conn, "create_schema", schema, VIEW_OWNER)
        await conn.execute(Q["become_view_owner"])
        for rel in relations:
            columns = {r["attname"] for r in await conn.fetch(Q["columns"], rel)}
            name = rel.removeprefix("wfa.")
            if "tenant_id" in columns:
                await _ddl(conn, "tenant_view", schema, name, rel, tenant)
            elif "workflow_id" in columns:
                await _ddl(conn, "tenant_view_by_workflow", schema, name, rel, tenant)
            else:
                raise RoleError(f"{rel} has neither tenant_id nor workflow_id to filter on")
        await _ddl(conn, "grant_usage", schema, role)
        await _ddl(conn, "grant_schema_select", schema, role)
        await conn.execute(Q["reset_role"])
        workflows = await conn.fetchval(Q["tenant_workflow_count"], tenant)
    return TenantAccess(tenant, role, schema, tuple(relations), workflows)
