"""The test harness itself: the session server, per-test databases and the dev cluster."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import asyncpg
import pytest

from tests.kit import devdb
from tests.kit.devdb import replace_dbname

if TYPE_CHECKING:
    from conftest import Databases, PgServer


async def test_server_accepts_connections(pg: PgServer) -> None:
    """The session server answers queries on the maintenance database."""
    conn = await asyncpg.connect(pg.dsn("postgres"))
    try:
        assert await conn.fetchval("SELECT 1") == 1
        assert await conn.fetchval("SHOW server_encoding") == "UTF8"
    finally:
        await conn.close()


async def test_db_dsn_is_a_fresh_empty_database(pg: PgServer, dbname: str, db_dsn: str) -> None:
    """``db_dsn`` points at a new database with no user tables."""
    assert dbname.startswith("wfa_test_")
    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT current_database()") == dbname
        tables = await conn.fetchval(
            "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', "
            "'information_schema')"
        )
        assert tables == 0
        await conn.execute("CREATE TABLE t (id int)")
    finally:
        await conn.close()


async def _exists(pg: PgServer, name: str) -> bool:
    """Tell whether database ``name`` exists on the server."""
    conn = await asyncpg.connect(pg.dsn("postgres"))
    try:
        return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
    finally:
        await conn.close()


async def test_database_is_dropped_even_with_open_connections(
    pg: PgServer, databases: Databases
) -> None:
    """Dropping a test database terminates the sessions still connected to it."""
    name = await databases.create()
    assert await _exists(pg, name)
    conn = await asyncpg.connect(pg.dsn(name))
    try:
        await databases.drop(name)
        assert not await _exists(pg, name)
        assert name not in databases.created
    finally:
        await conn.close(timeout=1)


async def test_timescaledb_extension(timescale_dsn: str) -> None:
    """The timescaledb extension is created and a hypertable works."""
    conn = await asyncpg.connect(timescale_dsn)
    try:
        version = await conn.fetchval(
            "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
        )
        assert version
        await conn.execute("CREATE TABLE m (t timestamptz NOT NULL, v int)")
        await conn.execute("SELECT create_hypertable('m', 't')")
        await conn.execute("INSERT INTO m VALUES (now(), 1)")
        assert await conn.fetchval("SELECT count(*) FROM m") == 1
    finally:
        await conn.close()


@pytest.mark.timescale
async def test_timescale_marker_runs_only_with_timescaledb(pg: PgServer) -> None:
    """Tests marked ``timescale`` run only when the server has TimescaleDB."""
    assert pg.has_timescaledb


def test_replace_dbname() -> None:
    """DSNs in URL and keyword form are re-pointed at another database."""
    assert replace_dbname("postgresql://u:p@h:5/x?sslmode=disable", "y") == (
        "postgresql://u:p@h:5/y?sslmode=disable"
    )
    assert replace_dbname("postgresql://u@h:5", "y") == "postgresql://u@h:5/y"
    assert replace_dbname("host=h dbname=x user=u", "y") == "host=h user=u dbname=y"


def test_version_key_orders_numerically() -> None:
    """The newest server binaries win, comparing versions as numbers."""
    dirs = [Path(f"/usr/lib/postgresql/{v}/bin") for v in ("9.6", "15", "16", "10")]
    assert max(dirs, key=devdb.version_key) == Path("/usr/lib/postgresql/16/bin")


@pytest.mark.slow
def test_dev_cluster_lifecycle_and_reuse() -> None:
    """A dev cluster initialises, creates databases, stops, and restarts on its data dir."""
    try:
        devdb.find_bindir()
    except devdb.DevDBError as exc:
        pytest.skip(str(exc))
    base = Path(tempfile.mkdtemp(prefix="wfa-test-devdb-"))
    base.chmod(0o755)
    try:
        with devdb.DevCluster(base / "data", fast=True) as cluster:
            assert cluster.is_running()
            port = cluster.port
            assert cluster.dsn("x") == f"postgresql://postgres@127.0.0.1:{port}/x"
            assert cluster.psql("SHOW fsync").strip() == "off"
            assert cluster.psql("SHOW max_connections").strip() == "200"
            cluster.create_database("tmpl")
            cluster.psql("CREATE TABLE marker (id int)", dbname="tmpl")
            cluster.create_database("copy", template="tmpl")
            assert cluster.psql("SELECT count(*) FROM marker", dbname="copy").strip() == "0"
            if os.geteuid() == 0:
                assert cluster.os_user is not None
                assert (base / "data").stat().st_uid != 0
        assert not cluster.is_running()
        again = devdb.DevCluster(base / "data")
        old_port_free = devdb.port_is_free(port)
        again.start()
        try:
            if old_port_free:
                assert again.port == port
            assert again.database_exists("copy")
            assert again.psql("SHOW fsync").strip() == "on"
            again.drop_database("copy")
            assert not again.database_exists("copy")
        finally:
            again.stop()
    finally:
        shutil.rmtree(base, ignore_errors=True)
