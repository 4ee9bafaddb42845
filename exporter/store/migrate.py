"""Create or upgrade the `wfa` schema idempotently under an advisory lock, with its version."""

from __future__ import annotations

import asyncpg

from exporter.store import locks, weekly
from exporter.store.backend import Backend, recorded_backend
from exporter.store.rollups import COARSE, ROLLUPS
from exporter.store.sqlfiles import sql, statements

SCHEMA_VERSION = 11
"""Every version re-creates the read functions; 8 changes nothing else (per-workflow ranges of
the covering indexes in the materialized arms); 9 adds the weekly tables, 10 the four-week
blocks (summed from the weeks at the next refresh), 11 a cheaper CSV formula guard."""
_COMMON = {
    1: ["common/001_base.sql"],
    2: ["common/002_exports_retention.sql"],
    3: ["common/003_tenants.sql"],
    4: ["common/004_ingest_safety.sql"],
    5: ["common/005_ingest_status.sql"],
    6: ["common/006_metric_labels.sql"],
    11: ["common/011_csv_safe.sql"],
}
# Common statements generated from the rollup definitions, by version.
_GENERATED = {9: lambda: weekly.migration(COARSE[:1]), 10: lambda: weekly.migration(COARSE[1:])}


class SchemaError(RuntimeError):
    """The store schema is missing, too new, or was made for another backend."""


async def current_version(conn: asyncpg.Connection) -> int:
    """The recorded schema version, 0 when the schema does not exist."""
    exists = await conn.fetchval("SELECT to_regclass('wfa.schema_version') IS NOT NULL")
    if not exists:
        return 0
    return await conn.fetchval("SELECT coalesce(max(version), 0) FROM wfa.schema_version")


async def migrate(conn: asyncpg.Connection, backend: Backend) -> int:
    """Apply every missing version; return the version now in place."""
    await conn.execute("SELECT pg_advisory_lock($1)", locks.MIGRATE)
    try:
        await conn.execute("CREATE SCHEMA IF NOT EXISTS wfa")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS wfa.schema_version (version integer PRIMARY KEY, "
            "backend text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        have = await current_version(conn)
        if have > SCHEMA_VERSION:
            raise SchemaError(
                f"store schema version {have} is newer than this build ({SCHEMA_VERSION})"
            )
        recorded = await recorded_backend(conn)
        if recorded and recorded != backend.name:
            raise SchemaError(
                f"store was created for backend {recorded!r}, config asks {backend.name!r}"
            )
        for version in range(have + 1, SCHEMA_VERSION + 1):
            async with conn.transaction():
                for path in _COMMON.get(version, []):
                    for stmt in statements(sql(path)):
                        await conn.execute(stmt)
                for stmt in _GENERATED.get(version, list)():
                    await conn.execute(stmt)
                for stmt in backend.migration(version):
                    await conn.execute(stmt)
                for r in ROLLUPS:
                    for ddl in backend.read_functions(r):
                        await conn.execute(ddl)
                await conn.execute(
                    "INSERT INTO wfa.meta VALUES ('backend', $1) ON CONFLICT (key) DO NOTHING",
                    backend.name,
                )
                await conn.execute(
                    "INSERT INTO wfa.schema_version (version, backend) VALUES ($1, $2)",
                    version,
                    backend.name,
                )
        return SCHEMA_VERSION
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", locks.MIGRATE)


async def require_current(conn: asyncpg.Connection) -> None:
    """Raise SchemaError unless the schema is at this build's version."""
    have = await current_version(conn)
    if have != SCHEMA_VERSION:
        raise SchemaError(
            f"store schema version is {have}, this build needs {SCHEMA_VERSION}: run `wfa migrate`"
        )
