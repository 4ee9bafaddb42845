"""TimescaleDB backend: schema, refresh windows, plans, policies and compression."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from exporter.runtime import Jobs
from exporter.service import ExporterService
from exporter.simulate.generate import advance
from exporter.simulate.writer import upsert_executions
from exporter.store import make_backend
from exporter.store.backend import RAW_TABLES
from exporter.store.migrate import SchemaError, migrate
from exporter.store.postgres import PostgresBackend
from exporter.store.rollups import ROLLUPS, hourly_select
from exporter.store.timescale import MAX_WINDOWS, TimescaleBackend, merge_windows

from .conftest import NOW, Store, fill, make_config
from .parity import assert_same, everything

H = timedelta(hours=1)
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_merge_windows_joins_neighbours_and_bounds_the_count() -> None:
    hours = [T0 + k * H for k in (0, 1, 2, 5, 6, 30, 31, 100, 200, 201, 202, 300)]
    assert merge_windows([(h, h + H) for h in hours], limit=100) == [
        (T0, T0 + 3 * H),
        (T0 + 5 * H, T0 + 7 * H),
        (T0 + 30 * H, T0 + 32 * H),
        (T0 + 100 * H, T0 + 101 * H),
        (T0 + 200 * H, T0 + 203 * H),
        (T0 + 300 * H, T0 + 301 * H),
    ]
    bounded = merge_windows([(h, h + H) for h in hours], limit=3)
    assert len(bounded) == 3
    assert all(any(lo <= h < hi for lo, hi in bounded) for h in hours)
    assert bounded[0][0] == T0 and bounded[-1][1] == T0 + 301 * H
    assert merge_windows([], limit=3) == []
    assert merge_windows([(T0, T0)], limit=3) == []


async def test_auto_picks_the_backend(db_dsn: str, timescale_dsn: str) -> None:
    conn = await asyncpg.connect(timescale_dsn)
    try:
        b = await make_backend(conn, "auto")
        assert isinstance(b, TimescaleBackend)
        assert b.reason == "the timescaledb extension is created in the store"
    finally:
        await conn.close()
    conn = await asyncpg.connect(db_dsn)
    try:
        await migrate(conn, await make_backend(conn, "postgres"))
        await conn.execute("CREATE EXTENSION timescaledb")
        b = await make_backend(conn, "auto")
        assert isinstance(b, PostgresBackend), "auto keeps the backend the store was made for"
        assert b.reason == "the store was created for it"
    finally:
        await conn.close()
    conn = await asyncpg.connect(timescale_dsn)
    try:
        b = await make_backend(
            conn, "timescaledb", timedelta(days=3), use_policies=True, compress_after=H * 24
        )
        assert isinstance(b, TimescaleBackend)
        assert (b.chunk_interval, b.use_policies, b.compress_after) == (
            timedelta(days=3),
            True,
            timedelta(days=1),
        )
    finally:
        await conn.close()


async def test_auto_creates_the_extension_when_it_can(
    pg: Any, databases: Any, db_dsn: str
) -> None:
    """Available and preloaded: `auto` creates timescaledb; a user without CREATE on the
    database cannot, and gets plain PostgreSQL and the reason."""
    if not pg.has_timescaledb:
        pytest.skip("TimescaleDB is not installed in the test cluster")
    conn = await asyncpg.connect(db_dsn)
    try:
        b = await make_backend(conn, "auto")
        assert isinstance(b, TimescaleBackend)
        assert b.reason.startswith("created the timescaledb extension")
        assert await conn.fetchval(
            "SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'"
        )
        await conn.execute(
            "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'wfa_plain') "
            "THEN CREATE ROLE wfa_plain LOGIN; END IF; END $$"
        )
    finally:
        await conn.close()
    name = await databases.create()
    admin = await asyncpg.connect(pg.dsn(name))
    try:
        # may connect and use the public schema, may not CREATE in the database
        await admin.execute("GRANT ALL ON SCHEMA public TO wfa_plain")
    finally:
        await admin.close()
    try:
        conn = await asyncpg.connect(pg.dsn(name), user="wfa_plain")
    except asyncpg.InvalidAuthorizationSpecificationError as exc:
        pytest.skip(f"cannot log in as a plain role on this server: {exc}")
    try:
        b = await make_backend(conn, "auto")
        assert isinstance(b, PostgresBackend)
        assert b.reason.startswith("creating the timescaledb extension failed: "), b.reason
    finally:
        await conn.close()


@pytest.mark.timescale
async def test_schema_hypertables_and_hierarchical_caggs(ts_store: Store) -> None:
    conn = ts_store.conn
    backend = TimescaleBackend(chunk_interval=timedelta(days=3))
    assert await migrate(conn, backend) == await migrate(conn, backend), "idempotent"
    dims = {
        r["hypertable_name"]: (r["column_name"], r["time_interval"])
        for r in await conn.fetch(
            "SELECT hypertable_name, column_name, time_interval FROM "
            "timescaledb_information.dimensions WHERE hypertable_schema = 'wfa'"
        )
    }
    assert dims == {
        "executions": ("enrolled_at", timedelta(days=3)),
        "execution_steps": ("enrolled_at", timedelta(days=3)),
        "workflow_events": ("occurred_at", timedelta(days=3)),
        "step_runs": ("entered_at", timedelta(days=3)),
    }
    caggs = {
        r["view_name"]: (r["hypertable_name"], r["materialized_only"])
        for r in await conn.fetch(
            "SELECT view_name, hypertable_name, materialized_only "
            "FROM timescaledb_information.continuous_aggregates WHERE view_schema = 'wfa'"
        )
    }
    mats = {
        r["view_name"]: r["materialization_hypertable_name"]
        for r in await conn.fetch(
            "SELECT view_name, materialization_hypertable_name "
            "FROM timescaledb_information.continuous_aggregates"
        )
    }
    for r in ROLLUPS:
        assert caggs[f"{r.name}_1h"] == (r.raw.removeprefix("wfa."), False)
        assert caggs[f"{r.name}_1d"] == (mats[f"{r.name}_1h"], False), "1d is built on 1h"
    assert await conn.fetchval("SELECT to_regclass('wfa.watermarks')") is None
    indexes = await conn.fetch(
        "SELECT c.view_name, i.indnkeyatts FROM timescaledb_information.continuous_aggregates c "
        "JOIN pg_index i ON i.indrelid = format('%I.%I', c.materialization_hypertable_schema, "
        "c.materialization_hypertable_name)::regclass WHERE c.view_schema = 'wfa'"
    )
    for r in ROLLUPS:
        widths = sorted(i["indnkeyatts"] for i in indexes if i["view_name"] == f"{r.name}_1d")
        assert widths == [2], "daily caggs are read by (workflow_id, bucket) only"
    with pytest.raises(SchemaError):
        await migrate(conn, PostgresBackend())


@pytest.mark.timescale
async def test_refresh_outside_a_transaction_only(ts_store: Store) -> None:
    backend = TimescaleBackend()
    await migrate(ts_store.conn, backend)
    async with ts_store.conn.transaction():
        with pytest.raises(RuntimeError, match="transaction"):
            await backend.refresh(ts_store.conn)


class _Recording(TimescaleBackend):
    """The backend, remembering each refresh window it asks TimescaleDB for."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls: list[tuple[str, datetime, datetime]] = []

    async def _refresh_window(self, conn, cagg, lo, hi) -> None:
        self.calls.append((cagg, lo, hi))
        await super()._refresh_window(conn, cagg, lo, hi)


@pytest.mark.timescale
async def test_refresh_recomputes_scattered_hours_in_few_calls(ts_store: Store) -> None:
    conn = ts_store.conn
    await fill([ts_store], executions=2000, days=25, seed=31)
    await ts_store.ingest()
    # change raw rows in many scattered materialized hours, and log them as ingest does
    hours = [
        r["h"]
        for r in await conn.fetch(
            "SELECT DISTINCT date_bin('1 hour', entered_at, '2000-01-03') AS h FROM wfa.step_runs "
            "WHERE entered_at < $1 ORDER BY 1 LIMIT 40",
            NOW - timedelta(days=1),
        )
    ][::2]
    await conn.execute(
        "UPDATE wfa.step_runs SET error = 'changed', status = 'failed' "
        "WHERE date_bin('1 hour', entered_at, '2000-01-03') = ANY($1::timestamptz[])",
        hours,
    )
    await conn.execute(
        "INSERT INTO wfa.invalidations SELECT 'step_runs', unnest($1::timestamptz[])", hours
    )
    backend = _Recording(max_windows=4)
    result = await backend.refresh(conn)
    assert result.buckets["step_runs"] == len(hours) + len({h.date() for h in hours})
    hourly = [c for c in backend.calls if c[0] == "wfa.step_runs_1h"]
    daily = [c for c in backend.calls if c[0] == "wfa.step_runs_1d"]
    assert 1 <= len(hourly) <= 4 + 1 and 1 <= len(daily) <= 4 + 1, backend.calls
    assert all(any(lo <= h < hi for _, lo, hi in hourly) for h in hours)
    assert not await conn.fetchval("SELECT count(*) FROM wfa.invalidations")
    # the materialized hours equal a fresh aggregate of the raw rows
    r = next(x for x in ROLLUPS if x.name == "step_runs")
    wm = result.watermarks["step_runs"]
    fresh = await conn.fetch(hourly_select(r, "date_bin", f"{r.time} < $1"), wm)
    stored = await conn.fetch(f"SELECT * FROM {r.relation('1h')} WHERE bucket < $1", wm)
    assert sorted(map(tuple, fresh), key=repr) == sorted(map(tuple, stored), key=repr)
    assert MAX_WINDOWS >= 4


@pytest.mark.timescale
async def test_range_functions_read_caggs_with_a_constant_watermark(ts_store: Store) -> None:
    """The read path sees each cagg's watermark as a constant and excludes chunks."""
    conn = ts_store.conn
    await fill([ts_store], executions=500, days=20, seed=3)
    await ts_store.ingest()
    plans: list[str] = []
    conn.add_log_listener(lambda _c, msg: plans.append(msg.message))
    await conn.execute("LOAD 'auto_explain'")
    await conn.execute(
        "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on; "
        "SET client_min_messages = log"
    )
    wfs = [r[0] for r in await conn.fetch("SELECT workflow_id FROM wfa.workflows")]
    start = NOW - timedelta(days=15, minutes=7)
    h1 = start.replace(minute=0) + H
    d1 = (h1 + timedelta(days=1)).replace(hour=0)
    h2 = NOW.replace(minute=0)
    d2 = h2.replace(hour=0)
    for r in ROLLUPS:
        plans.clear()
        await conn.fetch(
            f"SELECT * FROM wfa.{r.name}_range(NULL, $1, $2, $3, $4, $5, $6, $7)",
            wfs,
            start,
            h1,
            d1,
            d2,
            h2,
            NOW,
        )
        inner = [p for p in plans if f"FROM {r.relation('1d')}" in p]
        assert inner, f"no plan logged for the body of {r.name}_range"
        assert "cagg_watermark" not in inner[0], inner[0]


async def _run_job(conn: asyncpg.Connection, job: int) -> None:
    """Run a job in this session, waiting out a run the background scheduler had started."""
    for _ in range(120):
        try:
            await conn.execute(f"CALL run_job({job})")
            return
        except asyncpg.LockNotAvailableError:
            await asyncio.sleep(0.5)
    raise AssertionError(f"job {job} stayed locked")


@pytest.mark.timescale
async def test_policies_registered_runnable_and_removed(ts_store: Store) -> None:
    conn = ts_store.conn
    await fill([ts_store], executions=300, days=5, seed=9)
    assert await ts_store.poll_without_refresh() == 300
    backend = TimescaleBackend(use_policies=True, compress_after=timedelta(days=30))
    await backend.maintain(conn, datetime.now(UTC))
    await backend.maintain(conn, datetime.now(UTC))
    # run them here, not in the background scheduler
    jobs = await conn.fetch(
        "SELECT job_id, proc_name, alter_job(job_id, scheduled => false) "
        "FROM timescaledb_information.jobs WHERE job_id >= 1000"
    )
    procs = [j["proc_name"] for j in jobs]
    assert procs.count("policy_refresh_continuous_aggregate") == 2 * len(ROLLUPS)
    assert procs.count("policy_compression") == 4
    # with policies the exporter's refresh only clears its log; running the jobs materializes
    assert (await backend.refresh(conn)).buckets == {r.name: 0 for r in ROLLUPS}
    assert not await conn.fetchval("SELECT count(*) FROM wfa.invalidations")
    for job in sorted(j["job_id"] for j in jobs if j["proc_name"].startswith("policy_refresh")):
        await _run_job(conn, job)
    assert all(v is not None for v in (await backend.watermarks(conn)).values())
    await TimescaleBackend().maintain(conn, datetime.now(UTC))
    assert not await conn.fetchval(
        "SELECT count(*) FROM timescaledb_information.jobs WHERE job_id >= 1000"
    )


@pytest.mark.timescale
async def test_compression_of_settled_chunks_keeps_every_read(
    pair: tuple[Store, Store],
) -> None:
    pg, ts = pair
    data = await fill([pg, ts], executions=1500, days=40, seed=17, recent=300)
    for s in pair:
        await s.ingest()
    backend = TimescaleBackend(compress_after=timedelta(days=10))
    now = datetime.now(UTC)
    await backend.maintain(ts.conn, now)
    chunks = await ts.conn.fetch(
        "SELECT hypertable_name, range_end, is_compressed FROM timescaledb_information.chunks "
        "WHERE hypertable_schema = 'wfa' AND hypertable_name IN "
        "('executions', 'step_runs', 'workflow_events', 'execution_steps')"
    )
    assert any(c["is_compressed"] for c in chunks)
    assert not any(c["is_compressed"] for c in chunks if c["range_end"] > now - timedelta(days=10))
    active = await ts.conn.fetch(
        "SELECT c.is_compressed FROM wfa.executions e JOIN timescaledb_information.chunks c "
        "ON c.hypertable_name = 'executions' AND e.enrolled_at >= c.range_start "
        "AND e.enrolled_at < c.range_end WHERE e.status = 'active'"
    )
    assert not any(r["is_compressed"] for r in active), "chunks still changing stay rowstore"
    assert_same(await everything(pg.conn, NOW), await everything(ts.conn, NOW))
    # changes still land, in compressed chunks or not
    changed = advance(data, NOW + timedelta(hours=2), seed=4)
    await ts.conn.execute(
        "UPDATE wfa.executions SET contact_id = contact_id WHERE enrolled_at < $1",
        now - timedelta(days=30),
    )
    for s in pair:
        await upsert_executions(s.conn, changed)
        await s.ingest()
    await backend.maintain(ts.conn, datetime.now(UTC))
    assert_same(await everything(pg.conn, data.now), await everything(ts.conn, data.now))


@pytest.mark.timescale
async def test_the_exporter_honours_use_policies_and_compress_after(ts_store: Store) -> None:
    """The exporter builds its backend from the whole store config: its scheduled upkeep
    keeps the policies and compresses, as the API's retention backend always did."""
    conn = ts_store.conn
    await fill([ts_store], executions=600, days=40, seed=5)
    compress = {"compress_after": "10d"}
    with_policies = ExporterService(make_config(ts_store.dsn, "timescaledb", use_policies=True,
                                                **compress))
    await with_policies.open()
    try:
        backend = with_policies.backend
        assert isinstance(backend, TimescaleBackend)
        assert backend.use_policies and backend.compress_after == timedelta(days=10)
        await _maintain(with_policies)
        procs = await conn.fetch(
            "SELECT proc_name FROM timescaledb_information.jobs WHERE job_id >= 1000"
        )
        names = [p["proc_name"] for p in procs]
        assert names.count("policy_refresh_continuous_aggregate") == 2 * len(ROLLUPS)
        assert names.count("policy_compression") == 4
    finally:
        await with_policies.close()

    driven = ExporterService(make_config(ts_store.dsn, "timescaledb", **compress))
    await driven.open()
    try:
        assert await driven.poll_once() is not None
        await _maintain(driven)
        assert not await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.jobs WHERE job_id >= 1000"
        ), "without use_policies the exporter drives refresh and compression itself"
        compressed = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks WHERE hypertable_schema = 'wfa' "
            "AND is_compressed"
        )
        assert compressed > 0, "the exporter's upkeep compressed the settled chunks"
    finally:
        await driven.close()


async def _maintain(svc: ExporterService) -> None:
    """Run the exporter's scheduled upkeep job once, as its hourly schedule would."""
    jobs = Jobs()
    svc.start(jobs)
    jobs.start()
    try:
        job = jobs.get_job("maintain")
        assert job is not None
        await job.func()
        assert not jobs.failures, jobs.failures
    finally:
        await jobs.drain(5)


@pytest.mark.timescale
async def test_raw_tables_have_the_same_columns_and_keys_on_both_backends(
    pair: tuple[Store, Store],
) -> None:
    """The raw DDL is written once: both backends get the same columns, types, defaults and
    primary keys; only the partitioning differs."""
    shapes = []
    for store, backend in zip(pair, (PostgresBackend(), TimescaleBackend()), strict=True):
        await migrate(store.conn, backend)
        columns = await store.conn.fetch(
            "SELECT table_name, column_name, data_type, is_nullable, column_default, "
            "ordinal_position FROM information_schema.columns WHERE table_schema = 'wfa' "
            "AND table_name = ANY($1::text[]) ORDER BY table_name, ordinal_position",
            list(RAW_TABLES),
        )
        keys = await store.conn.fetch(
            "SELECT c.conrelid::regclass::text AS tbl, pg_get_constraintdef(c.oid) AS def "
            "FROM pg_constraint c WHERE c.contype = 'p' AND c.conrelid::regclass::text = "
            "ANY($1::text[]) ORDER BY 1",
            [f"wfa.{t}" for t in RAW_TABLES],
        )
        shapes.append(([tuple(r) for r in columns], [tuple(r) for r in keys]))
    assert shapes[0] == shapes[1]
    assert len(shapes[0][1]) == len(RAW_TABLES) and len(shapes[0][0]) > 30
    partitioned = await pair[0].conn.fetchval(
        "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid "
        "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'wfa'"
    )
    hypertables = await pair[1].conn.fetchval(
        "SELECT count(*) FROM timescaledb_information.hypertables WHERE hypertable_schema = 'wfa'"
    )
    assert partitioned == hypertables == len(RAW_TABLES)
