"""The analytics store: schema, backends and maintenance."""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING

import asyncpg

from exporter.store.backend import Backend, RefreshResult
from exporter.store.postgres import PostgresBackend

if TYPE_CHECKING:
    from exporter.config.schema import StoreConfig

__all__ = ["Backend", "RefreshResult", "backend_for", "has_timescaledb", "make_backend"]


async def has_timescaledb(conn: asyncpg.Connection) -> bool:
    """True when the timescaledb extension is installed in this database."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb')"
        )
    )


async def make_backend(
    conn: asyncpg.Connection,
    kind: str = "auto",
    partition_interval: timedelta = timedelta(days=7),
    premake: int = 4,
    *,
    use_policies: bool = False,
    compress_after: timedelta | None = None,
) -> Backend:
    """The backend named by config; `auto` picks TimescaleDB when its extension is installed."""
    if kind == "auto":
        kind = "timescaledb" if await has_timescaledb(conn) else "postgres"
    if kind == "timescaledb":
        from exporter.store.timescale import TimescaleBackend

        return TimescaleBackend(
            chunk_interval=partition_interval,
            use_policies=use_policies,
            compress_after=compress_after,
        )
    return PostgresBackend(partition_interval, premake)


async def backend_for(conn: asyncpg.Connection, store: StoreConfig) -> Backend:
    """The backend the `store` config section describes, with every one of its settings.

    The one place a backend is built from config: the exporter, the API, `wfa migrate` and
    retention all get theirs here.
    """
    return await make_backend(
        conn,
        store.backend,
        store.partition_interval,
        store.premake_partitions,
        use_policies=store.use_policies,
        compress_after=store.compress_after,
    )
