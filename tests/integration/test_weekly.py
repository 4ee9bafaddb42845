"""The coarser levels (weeks, four-week blocks): every summed period equals its days after
refreshes, late rows in summed periods and retention cutting through them (store-wide and
per workflow), and the totals reads that use them equal the real-time relations; on both
backends."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from exporter import retention
from exporter.config import config_from_dict
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.writer import create_source_schema, write
from exporter.store.partitions import partition_start
from exporter.store.rollups import COARSE, ROLLUPS, daily_select
from exporter.store.weekly import LOW
from tests.integration.test_reads import ARGS, NOW, _reference, _rows, _segments, _summed

DAY = timedelta(days=1)


def week_floor(t: datetime) -> datetime:
    """Start of the week holding `t` (Monday 00:00 UTC)."""
    return partition_start(t, COARSE[0].period)


def _config(dsn: str, backend: str, **retention_cfg: Any) -> Any:
    return config_from_dict(
        {"source": {"dsn": dsn}, "store": {"backend": backend}, "retention": retention_cfg}
    )


async def _periods_equal_days(conn: asyncpg.Connection, daily: str) -> int:
    """Assert every summed period of every level equals the sum of its days; rows compared."""
    compared = 0
    for c in COARSE:
        for r in ROLLUPS:
            mark = await conn.fetchval(
                "SELECT watermark FROM wfa.weekly_marks WHERE rollup = $1", c.key(r)
            )
            dims = ", ".join(d.name for d in r.dims)
            expected = await conn.fetch(
                daily_select(r, daily.format(name=r.name), "date_bin", "bucket < $1", c.width),
                mark,
            )
            got = await conn.fetch(
                f"SELECT bucket, {dims}, {', '.join(m.name for m in r.measures)} "
                f"FROM {c.table(r)}"
            )
            assert _rows(got) == _rows(expected), (c.suffix, r.name)
            assert all(row["bucket"] < mark for row in got), (c.suffix, r.name)
            compared += len(got)
    return compared


def _ranges() -> list[tuple[datetime, datetime]]:
    monday = week_floor(NOW)
    block = partition_start(monday, COARSE[1].period)
    return [
        (NOW - 62 * DAY, NOW + timedelta(hours=2)),
        (block - 28 * DAY - timedelta(hours=5), NOW - timedelta(hours=2)),
        (block - 28 * DAY, block),
        (monday - 21 * DAY, monday),
        (monday - 14 * DAY + timedelta(hours=3, minutes=17), NOW - DAY),
        (monday - 15 * DAY, monday - 6 * DAY),
        (datetime(1900, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)),
    ]


async def _totals_equal_reference(conn: asyncpg.Connection, wfs: list[str]) -> dict[str, int]:
    """Assert the totals reads equal the real-time relations; per rollup, its first measure
    summed over the first range as totals read it (days where the daily level serves)."""
    first: dict[str, int] = {}
    for r in ROLLUPS:
        for i, (start, end) in enumerate(_ranges()):
            for j, params in enumerate(_segments(start, end)):
                for ids in (wfs, [wfs[0]]):
                    args = (None, ids, *params)
                    expected = await conn.fetch(_reference(r), *args)
                    got = await conn.fetch(f"SELECT * FROM wfa.{r.name}_totals({ARGS})", *args)
                    assert _summed(r, got) == _summed(r, expected), (r.name, start, end, ids)
                    if i == j == 0 and ids is wfs:
                        m = r.measures[0].name
                        first[r.name] = sum(row[m] or 0 for row in expected)
    return first


async def test_weeks_equal_their_days_through_late_rows_and_retention(store_dsn, conn) -> None:
    backend, dsn = store_dsn
    monday = week_floor(NOW)
    # Retention cuts through a week already summed: store-wide on a Thursday noon three
    # weeks back, and one workflow on the Wednesday 06:00 of the week before this one; 63
    # days of history hold at least one whole four-week block before this week.
    store_cut = monday - 18 * DAY + timedelta(hours=12)
    own_cut = monday - 5 * DAY + timedelta(hours=6)
    run_at = NOW.replace(minute=0)
    hours = lambda cut: f"{int((run_at - cut) / timedelta(hours=1))}h"  # noqa: E731
    data = generate(executions=1500, days=63, workflows=4, tenants=2, seed=11, now=NOW)
    wfs = sorted(w.id for w in data.workflows)
    cfg = _config(
        dsn,
        backend,
        rollups_1d=hours(store_cut),
        workflows={wfs[0]: {"rollups_1d": hours(own_cut)}},
    )
    src = await asyncpg.connect(dsn)
    svc = ExporterService(cfg)
    await svc.open()
    try:
        assert svc.store is not None and svc.backend is not None
        daily = svc.backend.read_source.daily
        await create_source_schema(src)
        await write(src, data)
        assert await svc.poll_once(refresh=False)
        async with svc.store.acquire() as store:
            await svc.backend.refresh(store, now=NOW)
        for c in COARSE:
            for r in ROLLUPS:
                mark = await conn.fetchval(
                    "SELECT watermark FROM wfa.weekly_marks WHERE rollup = $1", c.key(r)
                )
                assert mark == partition_start(monday, c.period), (c.suffix, r.name)
                assert await conn.fetchval(f"SELECT count(*) FROM {c.table(r)}") > 0
        assert await _periods_equal_days(conn, daily) > 100
        before = await _totals_equal_reference(conn, wfs)

        # a store just upgraded to the block level: empty blocks at the lowest watermark,
        # which keeps the reads on the weeks until a refresh has summed the blocks
        blocks = COARSE[1]
        for r in ROLLUPS:
            await conn.execute(f"TRUNCATE {blocks.table(r)}")
            await conn.execute(
                "UPDATE wfa.weekly_marks SET watermark = $2 WHERE rollup = $1", blocks.key(r), LOW
            )
        assert await _totals_equal_reference(conn, wfs) == before

        # late rows in days of weeks already summed, then a refresh
        late = generate(executions=200, days=40, workflows=4, tenants=2, seed=12, now=monday)
        for i, ex in enumerate(late.executions):
            ex.id = f"late-{i}"
            ex.updated_at = NOW + timedelta(hours=1)
        await write(src, (data.workflows, late.executions))
        assert (await svc.poll_once(refresh=False)).written == len(late.executions)
        async with svc.store.acquire() as store:
            await svc.backend.refresh(store, now=NOW)
        await _periods_equal_days(conn, daily)
        after = await _totals_equal_reference(conn, wfs)
        assert after["cohort"] == before["cohort"] + len(late.executions)
        assert after["step_runs"] > before["step_runs"]

        # retention through the middle of summed weeks
        marks = await conn.fetchval("SELECT count(*) FROM wfa.weekly_marks")
        async with svc.store.acquire() as store:
            done = await retention.run(
                store, cfg, svc.backend, dry_run=False, trigger="test", actor="test", now=NOW
            )
        rolled = {d.dataset: d for d in done.datasets}["rollups_1d"]
        assert rolled.error is None
        assert [e["workflow_id"] for e in rolled.deleted if e["rows"]] == [wfs[0]]
        await _periods_equal_days(conn, daily)
        cut = await _totals_equal_reference(conn, wfs)
        assert cut["cohort"] < after["cohort"]
        assert await conn.fetchval("SELECT count(*) FROM wfa.weekly_marks") == marks
        # nothing is left before the cutoffs at any level (TimescaleDB drops whole chunks of
        # the daily level, which end after these cutoffs: its periods stay whole)
        for c in COARSE:
            for r in ROLLUPS:
                old = await conn.fetchval(
                    f"SELECT count(*) FROM {c.table(r)} WHERE bucket < $1",
                    partition_start(store_cut, c.period),
                )
                mine = await conn.fetchval(
                    f"SELECT count(*) FROM {c.table(r)} WHERE workflow_id = $1 AND bucket < $2",
                    wfs[0],
                    partition_start(own_cut, c.period),
                )
                assert mine == 0 and (old == 0 or backend == "timescaledb"), (c.suffix, r.name)
                assert await conn.fetchval(
                    "SELECT watermark FROM wfa.weekly_marks WHERE rollup = $1", c.key(r)
                ) not in (None, LOW)
    finally:
        await svc.close()
        await src.close()
