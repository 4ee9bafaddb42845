"""Shared fixtures: a PostgreSQL server for the session and a fresh database per test."""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Protocol

import asyncpg
import pytest

from tests.kit.devdb import DevCluster, quote_ident, replace_dbname

TEST_DSN_ENV = "WFA_TEST_DSN"
_db_counter = itertools.count(1)


class PgServer(Protocol):
    """What tests need from a PostgreSQL server."""

    has_timescaledb: bool
    timescaledb_reason: str

    def dsn(self, dbname: str = "postgres") -> str:
        """Return a DSN for ``dbname`` on this server."""
        ...


class ExternalServer:
    """An already running server given by ``WFA_TEST_DSN``."""

    def __init__(self, dsn: str) -> None:
        self.base_dsn = dsn
        self.has_timescaledb = False
        self.timescaledb_reason = ""

    def dsn(self, dbname: str = "postgres") -> str:
        """Return a DSN for ``dbname`` on this server."""
        return replace_dbname(self.base_dsn, dbname)

    async def probe(self) -> None:
        """Read whether TimescaleDB is available from ``pg_available_extensions``."""
        conn = await asyncpg.connect(self.base_dsn)
        try:
            found = await conn.fetchval(
                "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
            )
            preload = await conn.fetchval("SHOW shared_preload_libraries")
        finally:
            await conn.close()
        self.has_timescaledb = bool(found) and "timescaledb" in preload
        if not found:
            self.timescaledb_reason = f"not in pg_available_extensions of ${TEST_DSN_ENV}"
        elif "timescaledb" not in preload:
            self.timescaledb_reason = f"not in shared_preload_libraries of ${TEST_DSN_ENV}"


def _timescale_skip_reason(server: PgServer) -> str:
    """Return the skip message for tests that need TimescaleDB."""
    return (
        f"TimescaleDB extension is not installed in the test cluster ({server.timescaledb_reason})"
    )


@pytest.fixture(scope="session")
async def pg() -> AsyncIterator[PgServer]:
    """The session's PostgreSQL server: ``$WFA_TEST_DSN`` or a private throwaway cluster."""
    external = os.environ.get(TEST_DSN_ENV)
    if external:
        server = ExternalServer(external)
        await server.probe()
        yield server
        return
    # A root-owned 0755 base dir, so the unprivileged server user can reach it when root.
    base = Path(tempfile.mkdtemp(prefix="wfa-test-pg-"))
    base.chmod(0o755)
    cluster = DevCluster(base / "data", fast=True)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)


class Databases:
    """Creates uniquely named databases on the test server and drops them afterwards."""

    def __init__(self, server: PgServer) -> None:
        self.server = server
        self.created: list[str] = []

    async def _admin(self, sql: str) -> None:
        """Run one statement on the maintenance database."""
        conn = await asyncpg.connect(self.server.dsn("postgres"))
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    async def create(self, extensions: tuple[str, ...] = ()) -> str:
        """Create an empty database (with ``extensions``) and return its name."""
        name = f"wfa_test_{os.getpid()}_{next(_db_counter)}"
        await self._admin(f"CREATE DATABASE {quote_ident(name)}")
        self.created.append(name)
        if extensions:
            conn = await asyncpg.connect(self.server.dsn(name))
            try:
                for ext in extensions:
                    await conn.execute(f"CREATE EXTENSION IF NOT EXISTS {quote_ident(ext)}")
            finally:
                await conn.close()
        return name

    async def drop(self, name: str) -> None:
        """Terminate the connections to ``name`` and drop it."""
        await self._admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            f"WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        )
        await self._admin(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        if name in self.created:
            self.created.remove(name)

    async def drop_all(self) -> None:
        """Drop every database this object created."""
        for name in list(self.created):
            await self.drop(name)


@pytest.fixture
async def databases(pg: PgServer) -> AsyncIterator[Databases]:
    """A factory for extra databases; all of them are dropped after the test."""
    dbs = Databases(pg)
    try:
        yield dbs
    finally:
        await dbs.drop_all()


@pytest.fixture
async def dbname(databases: Databases) -> str:
    """The name of a fresh, empty database, dropped after the test."""
    return await databases.create()


@pytest.fixture
def db_dsn(pg: PgServer, dbname: str) -> str:
    """A DSN for a fresh, empty database, dropped after the test."""
    return pg.dsn(dbname)


@pytest.fixture
async def timescale_dsn(pg: PgServer, databases: Databases) -> str:
    """A DSN for a fresh database with the timescaledb extension; skips when unavailable."""
    if not pg.has_timescaledb:
        pytest.skip(_timescale_skip_reason(pg))
    return pg.dsn(await databases.create(extensions=("timescaledb",)))


@pytest.fixture(autouse=True)
def _skip_timescale_marked(request: pytest.FixtureRequest) -> Iterator[None]:
    """Skip tests marked ``timescale`` when the test server lacks TimescaleDB."""
    if request.node.get_closest_marker("timescale") is not None:
        server: PgServer = request.getfixturevalue("pg")
        if not server.has_timescaledb:
            pytest.skip(_timescale_skip_reason(server))
    yield
