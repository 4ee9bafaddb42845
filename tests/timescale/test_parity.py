"""The same simulated source ingested into both backends reads back the same, bucket by bucket."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from exporter import queries
from exporter.simulate.generate import advance, generate
from exporter.simulate.writer import insert_bad_rows, upsert_executions, write

from .conftest import NOW, Store, fill
from .parity import answers, assert_same, everything

pytestmark = pytest.mark.timescale


async def _compare(pg: Store, ts: Store, now) -> None:
    assert_same(await everything(pg.conn, now), await everything(ts.conn, now))


async def test_relations_have_the_same_columns(pair: tuple[Store, Store]) -> None:
    pg, ts = pair
    await fill([pg, ts], executions=10, days=1, seed=1)
    for s in pair:
        await s.ingest()
    sql = """SELECT c.table_name, c.ordinal_position, c.column_name, c.data_type
               FROM information_schema.columns c
              WHERE c.table_schema = 'wfa' AND c.table_name NOT LIKE '%\\_mat'
                AND c.table_name <> 'watermarks'
                AND c.table_name NOT IN (SELECT relname FROM pg_class WHERE relispartition)
              ORDER BY 1, 2"""
    assert [tuple(r) for r in await pg.conn.fetch(sql)] == [
        tuple(r) for r in await ts.conn.fetch(sql)
    ]
    fn = """SELECT p.proname, pg_get_function_result(p.oid), pg_get_function_arguments(p.oid)
              FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
             WHERE n.nspname = 'wfa' ORDER BY 1"""
    assert [tuple(r) for r in await pg.conn.fetch(fn)] == [
        tuple(r) for r in await ts.conn.fetch(fn)
    ]


async def test_parity_over_progress_late_and_bad_rows(pair: tuple[Store, Store]) -> None:
    pg, ts = pair
    data = await fill([pg, ts], executions=1500, days=30, seed=21, recent=500)
    for s in pair:
        assert (await s.ingest()).written == len(data.executions)
    await _compare(pg, ts, NOW)

    # executions progress; a late row lands in an hour that is already materialized
    changed = advance(data, NOW + timedelta(hours=2), seed=5)
    assert changed
    late = generate(executions=3, days=20, workflows=4, tenants=2, seed=99, now=NOW).executions
    for i, ex in enumerate(late):
        ex.id = f"late-{i}"
        ex.updated_at = NOW + timedelta(hours=2)
    for s in pair:
        await upsert_executions(s.conn, changed)
        await write(s.conn, (data.workflows, late))
        await insert_bad_rows(s.conn, [w.id for w in data.workflows], at=NOW)
        result = await s.ingest()
        assert result.written == len(changed) + len(late)
        assert sum(result.rejected.values()) == 6
    await _compare(pg, ts, data.now)


async def test_cached_plans_follow_a_refresh(pair: tuple[Store, Store]) -> None:
    """A session that read before a refresh reads the new numbers after it."""
    pg, ts = pair
    data = await fill([pg, ts], executions=800, days=10, seed=8, recent=300)
    for s in pair:
        await s.ingest()
    # enough calls on the same connection for PostgreSQL to cache generic plans
    for _ in range(8):
        before = await answers(ts.conn, NOW)
    assert_same(await answers(pg.conn, NOW), before)
    changed = advance(data, NOW + timedelta(hours=3), seed=2)
    for s in pair:
        await upsert_executions(s.conn, changed)
        await s.ingest()
    after_ts = await answers(ts.conn, data.now)
    assert_same(await answers(pg.conn, data.now), after_ts)
    assert after_ts != before


async def test_real_time_rows_before_any_refresh(pair: tuple[Store, Store]) -> None:
    """Rows above the watermark are read live (materialized_only = false) before a refresh."""
    pg, ts = pair
    data = await fill([pg, ts], executions=300, days=4, seed=4)
    for s in pair:
        await s.ingest()
    live_hour = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    more = generate(
        executions=60,
        days=40 / 1440,
        workflows=4,
        tenants=2,
        seed=6,
        now=live_hour + timedelta(minutes=50),
    ).executions
    for i, ex in enumerate(more):
        ex.id = f"new-{i}"
    for s in pair:
        await write(s.conn, (data.workflows, more))
        assert await s.poll_without_refresh() == len(more)
    start, end = NOW - timedelta(days=5), live_hour + timedelta(hours=1)
    for wf in await queries.list_workflows(ts.conn, None):
        got = await queries.cohort_funnel(ts.conn, wf.tenant_id, wf, start, end)
        assert got == await queries.cohort_funnel(pg.conn, wf.tenant_id, wf, start, end)
        assert got["enrolled"] == sum(
            1 for e in [*data.executions, *more] if e.workflow_id == wf.workflow_id
        )


async def test_time_bucket_equals_date_bin(timescale_dsn: str) -> None:
    conn = await asyncpg.connect(timescale_dsn)
    try:
        differ = await conn.fetchval(
            """SELECT count(*) FROM generate_series('1999-12-25'::timestamptz,
                                                    '2031-01-05'::timestamptz,
                                                    '7 hours 13 minutes 17.123 seconds') t
                WHERE time_bucket('1 hour', t) <> date_bin('1 hour', t, '2000-01-03 00:00+00')
                   OR time_bucket('1 day', t) <> date_bin('1 day', t, '2000-01-03 00:00+00')
                   OR time_bucket('1 day', time_bucket('1 hour', t))
                      <> date_trunc('day', t, 'UTC')"""
        )
    finally:
        await conn.close()
    assert differ == 0
