"""The analytics store: schema, backends and maintenance."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING

import asyncpg

from exporter.store import locks
from exporter.store.backend import STORAGE, Backend, RefreshResult, recorded_backend
from exporter.store.postgres import PostgresBackend

if TYPE_CHECKING:
    from exporter.config.schema import StoreConfig

__all__ = [
    "Backend",
    "BackendChoice",
    "RefreshResult",
    "backend_for",
    "choose_backend",
    "make_backend",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class BackendChoice:
    """The backend `store.backend` resolved to, and why."""

    name: str
    reason: str


async def choose_backend(conn: asyncpg.Connection, kind: str = "auto") -> BackendChoice:
    """Resolve `store.backend`; `auto` keeps the backend the schema was made for, else uses
    TimescaleDB when its extension is created, or creates it when the server has it available
    and preloaded, else plain PostgreSQL.

    `auto` decides under the migration lock, so replicas starting together on a new store
    agree: the first creates the extension, the others find it created.
    """
    if kind != "auto":
        return BackendChoice(kind, "store.backend names it")
    await conn.execute("SELECT pg_advisory_lock($1)", locks.MIGRATE)
    try:
        return await _resolve_auto(conn)
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", locks.MIGRATE)


async def _resolve_auto(conn: asyncpg.Connection) -> BackendChoice:
    recorded = await recorded_backend(conn)
    if recorded:
        return BackendChoice(recorded, "the store was created for it")
    status = await conn.fetchrow(STORAGE["timescaledb_status"])
    if status["installed"]:
        return BackendChoice("timescaledb", "the timescaledb extension is created in the store")
    if not status["available"]:
        return BackendChoice("postgres", "the timescaledb extension is not installed on the server")
    if status["preloaded"] is False:
        return BackendChoice(
            "postgres", "timescaledb is installed but not in shared_preload_libraries"
        )
    try:
        async with conn.transaction():
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except asyncpg.PostgresError as exc:
        log.warning("store.backend auto: cannot create the timescaledb extension: %s", exc)
        return BackendChoice("postgres", f"creating the timescaledb extension failed: {exc}")
    return BackendChoice(
        "timescaledb", "created the timescaledb extension: installed on the server and preloaded"
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
    """The backend named by config, `auto` resolved by `choose_backend` (its reason is kept
    in the backend's `reason`)."""
    choice = await choose_backend(conn, kind)
    backend: Backend
    if choice.name == "timescaledb":
        from exporter.store.timescale import TimescaleBackend

        backend = TimescaleBackend(
            chunk_interval=partition_interval,
            use_policies=use_policies,
            compress_after=compress_after,
        )
    else:
        backend = PostgresBackend(partition_interval, premake)
    backend.reason = choice.reason
    return backend


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
