"""Fixtures for the TimescaleDB backend tests: one plain and one TimescaleDB store side by side."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from exporter.config import config_from_dict
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.model import SimData
from exporter.simulate.writer import create_source_schema, write

NOW = datetime.now(UTC).replace(minute=23, second=0, microsecond=0) - timedelta(hours=1)


def make_config(dsn: str, backend: str, **store: Any) -> Any:
    """A config whose source and store are the same database."""
    return config_from_dict({"source": {"dsn": dsn}, "store": {"backend": backend, **store}})


async def ingest(dsn: str, backend: str, **store: Any):
    """Open an exporter on the database, poll until caught up, refresh, close."""
    svc = ExporterService(make_config(dsn, backend, **store))
    await svc.open()
    try:
        return await svc.poll_once()
    finally:
        await svc.close()


@dataclass
class Store:
    """One store database with its own copy of the source tables."""

    backend: str
    dsn: str
    conn: asyncpg.Connection

    async def ingest(self, **store: Any):
        """Poll this database's source into its store and refresh."""
        return await ingest(self.dsn, self.backend, **store)

    async def poll_without_refresh(self) -> int:
        """Poll this database's source into its store, no refresh; executions written."""
        svc = ExporterService(make_config(self.dsn, self.backend))
        await svc.open()
        try:
            result = await svc.poll_once(refresh=False)
            assert result is not None
            return result.written
        finally:
            await svc.close()


async def fill(
    stores: list[Store], executions: int, days: float, seed: int, recent: int = 0
) -> SimData:
    """The same simulated data written into every store's source; `recent` more in the last day."""
    data = generate(executions=executions, days=days, workflows=4, tenants=2, seed=seed, now=NOW)
    if recent:
        extra = generate(executions=recent, days=1, workflows=4, tenants=2, seed=seed, now=NOW)
        for ex in extra.executions:
            ex.id = f"r{ex.id}"
        data.executions += extra.executions
    for s in stores:
        await create_source_schema(s.conn)
        await write(s.conn, data)
    return data


@pytest.fixture
async def pair(db_dsn: str, timescale_dsn: str) -> AsyncIterator[tuple[Store, Store]]:
    """(plain PostgreSQL store, TimescaleDB store), each on a fresh database."""
    pg = await asyncpg.connect(db_dsn)
    ts = await asyncpg.connect(timescale_dsn)
    try:
        yield Store("postgres", db_dsn, pg), Store("timescaledb", timescale_dsn, ts)
    finally:
        await pg.close()
        await ts.close()


@pytest.fixture
async def ts_store(timescale_dsn: str) -> AsyncIterator[Store]:
    """A TimescaleDB store on a fresh database."""
    conn = await asyncpg.connect(timescale_dsn)
    try:
        yield Store("timescaledb", timescale_dsn, conn)
    finally:
        await conn.close()
