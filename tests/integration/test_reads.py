"""Range reads: exact against the real-time relations whatever the watermarks, one statement per
answer, cached generic plans that prune partitions when they start; on both backends."""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from exporter import queries
from exporter.config import config_from_dict
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.model import SimExecution
from exporter.simulate.writer import create_source_schema, write
from exporter.store.rollups import ROLLUPS, Rollup
from exporter.timerange import plan

NOW = datetime.now(UTC).replace(minute=23, second=0, microsecond=0) - timedelta(hours=1)
ARGS = "$1, $2, $3, $4, $5, $6, $7, $8"


def _reference(r: Rollup) -> str:
    """The rows of a range read by definition: the real-time relations and raw edge rows."""
    dims = [d for d in r.dims if d.name != "tenant_id"]
    rolled = ", ".join([*(d.name for d in dims), *(m.name for m in r.measures)])
    raw = ", ".join([*(d.expr for d in dims), *(m.per_row for m in r.measures)])
    scope = "($1::text IS NULL OR tenant_id = $1) AND workflow_id = ANY($2::text[])"
    t = r.time
    return f"""
        SELECT bucket, {rolled} FROM {r.relation("1d")}
         WHERE {scope} AND bucket >= $5 AND bucket < $6
        UNION ALL
        SELECT bucket, {rolled} FROM {r.relation("1h")}
         WHERE {scope} AND ((bucket >= $4 AND bucket < $5) OR (bucket >= $6 AND bucket < $7))
        UNION ALL
        SELECT {t}, {raw} FROM {r.raw}
         WHERE {scope} AND (({t} >= $3::timestamptz AND {t} < $4)
                            OR ({t} >= $7 AND {t} < $8::timestamptz))"""


def _ranges(pivot: datetime) -> list[tuple[datetime, datetime]]:
    """Ranges around now and around `pivot` (the hour the watermarks stand at)."""
    day = NOW.replace(hour=0, minute=0)
    h, d = timedelta(hours=1), timedelta(days=1)
    return [
        (NOW - 14 * d, NOW + 2 * h),  # everything, into the future
        (day - 6 * d, day - d),  # whole days
        (NOW - timedelta(days=6, minutes=13), NOW - timedelta(days=1, hours=3, minutes=41)),
        (NOW - timedelta(minutes=50), NOW + timedelta(minutes=5)),  # inside the live hour
        (NOW - timedelta(microseconds=1), NOW),  # one microsecond
        (datetime(1900, 1, 1, tzinfo=UTC), datetime(9999, 12, 31, tzinfo=UTC)),  # all time
        (pivot - timedelta(days=3, minutes=5), pivot + timedelta(hours=2, minutes=13)),
        (pivot - timedelta(minutes=30), pivot + timedelta(hours=26)),
        (pivot.replace(hour=0, minute=13), pivot + timedelta(days=2, hours=3)),
        (pivot - 25 * h, pivot),
        (pivot.replace(hour=0) - d, pivot.replace(hour=0) + 2 * d),
        (pivot - timedelta(days=1, microseconds=1), pivot + timedelta(days=1, microseconds=1)),
    ]


def _shift(ex: SimExecution, to: datetime, at: datetime) -> None:
    """Move an execution in time so that its instant `at` falls exactly on `to`."""
    delta = to - at
    ex.enrolled_at += delta
    for name in ("completed_at", "converted_at", "exited_at"):
        if getattr(ex, name) is not None:
            setattr(ex, name, getattr(ex, name) + delta)
    for a in ex.step_progress:
        a.entered_at += delta
        if a.finished_at is not None:
            a.finished_at += delta


def _on_boundaries(executions: list[SimExecution], pivot: datetime) -> None:
    """Put some enrollments, step entries and completions exactly on hour and day boundaries,
    among them the hour and the day the watermarks stand at."""
    hour = timedelta(hours=1)
    for i, ex in enumerate(executions):
        if i % 5 == 0:
            _shift(ex, ex.enrolled_at.replace(minute=0, second=0, microsecond=0), ex.enrolled_at)
        elif i % 5 == 1 and ex.step_progress:
            first = ex.step_progress[0].entered_at
            _shift(ex, first.replace(minute=0, second=0, microsecond=0) + hour, first)
        elif i % 5 == 2 and ex.completed_at is not None:
            _shift(ex, ex.completed_at.replace(minute=0, second=0, microsecond=0), ex.completed_at)
    for ex, to in zip(executions[3::50], (pivot, pivot.replace(hour=0)) * 3, strict=False):
        _shift(ex, to, ex.enrolled_at)


def _segments(start: datetime, end: datetime) -> list[tuple[datetime, ...]]:
    """Every way the read queries cut a range: totals, whole-hour zone, other zones."""
    out = []
    for g, tz in (
        (None, "UTC"),
        ("day", "UTC"),
        ("day", "Europe/Berlin"),
        ("hour", "Asia/Kolkata"),
    ):
        params = plan(start, end, granularity=g, tz=tz).params()
        if params not in out:
            out.append(params)
    return out


def _config(dsn: str, backend: str) -> Any:
    return config_from_dict({"source": {"dsn": dsn}, "store": {"backend": backend}})


async def _fill(dsn: str, backend: str, refreshed_at: datetime | None, seed: int = 5) -> list[str]:
    """Simulated source rows ingested; rollups refreshed up to `refreshed_at` (None: never).

    Some rows arrive after the refresh, so the reads meet rows above the watermarks, and
    late rows below them that are invalidated but not recomputed yet. Many rows lie
    exactly on hour and day boundaries, the watermarks' among them.
    """
    pivot = _pivot(refreshed_at)
    data = generate(executions=1200, days=12, workflows=4, tenants=2, seed=seed, now=NOW)
    more = generate(executions=300, days=5, workflows=4, tenants=2, seed=seed + 1, now=NOW)
    for i, ex in enumerate(more.executions):
        ex.id = f"late-{i}"
        ex.updated_at = NOW + timedelta(hours=1)  # after the cursor: read by the next poll
    _on_boundaries(data.executions, pivot)
    _on_boundaries(more.executions, pivot)
    conn = await asyncpg.connect(dsn)
    svc = ExporterService(_config(dsn, backend))
    await svc.open()
    try:
        await create_source_schema(conn)
        await write(conn, data)
        assert await svc.poll_once(refresh=False)
        assert svc.store is not None and svc.backend is not None
        if refreshed_at is not None:
            async with svc.store.acquire() as store:
                await svc.backend.refresh(store, now=refreshed_at)
        await write(conn, (data.workflows, more.executions))
        late = await svc.poll_once(refresh=False)
        assert late is not None and late.written == len(more.executions)
    finally:
        await svc.close()
        await conn.close()
    return sorted({w.id for w in data.workflows})


def _pivot(refreshed_at: datetime | None) -> datetime:
    """The hour the watermarks stand at (two days back when nothing was refreshed)."""
    at = refreshed_at or NOW - timedelta(days=2)
    return at.replace(minute=0, second=0, microsecond=0)


def _rows(rows: list[asyncpg.Record]) -> list[tuple]:
    return sorted((tuple(r.values()) for r in rows), key=repr)


def _summed(r: Rollup, rows: list[asyncpg.Record]) -> list[tuple]:
    """Range rows summed over time, by dimension (what the totals functions return)."""
    names = [d.name for d in r.dims if d.name != "tenant_id"]
    out: dict[tuple, list] = defaultdict(lambda: [None] * len(r.measures))
    for row in rows:
        acc = out[tuple(row[n] for n in names)]
        for i, m in enumerate(r.measures):
            if row[m.name] is not None:
                acc[i] = (acc[i] or 0) + row[m.name]
    return sorted(((*k, *v) for k, v in out.items()), key=repr)


@pytest.mark.parametrize("lag", ["current", "days_behind", "never_refreshed"])
async def test_reads_equal_the_real_time_relations(store_dsn, conn, lag: str) -> None:
    """Every read function equals the real-time relations for every range, zone and scope."""
    backend, dsn = store_dsn
    refreshed_at = {
        "current": NOW,
        "days_behind": (NOW - timedelta(days=4)).replace(hour=15, minute=41),
        "never_refreshed": None,
    }[lag]
    wfs = await _fill(dsn, backend, refreshed_at)
    tenants = [r[0] for r in await conn.fetch("SELECT DISTINCT tenant_id FROM wfa.workflows")]
    own = await conn.fetchval("SELECT tenant_id FROM wfa.workflows WHERE workflow_id = $1", wfs[0])
    compared = 0
    for r in ROLLUPS:
        ref = _reference(r)
        for start, end in _ranges(_pivot(refreshed_at)):
            for params in _segments(start, end):
                for tenant, ids in ((None, wfs), (own, [wfs[0]]), (None, [])):
                    args = (tenant, ids, *params)
                    expected = await conn.fetch(ref, *args)
                    got = await conn.fetch(f"SELECT * FROM wfa.{r.name}_range({ARGS})", *args)
                    assert _rows(got) == _rows(expected), (r.name, start, end, params, tenant)
                    totals = await conn.fetch(f"SELECT * FROM wfa.{r.name}_totals({ARGS})", *args)
                    assert _summed(r, totals) == _summed(r, expected), (r.name, start, end)
                    compared += len(expected)
                # a tenant reads nothing of another tenant's workflows
                for other in (t for t in tenants if t != own):
                    args = (other, [wfs[0]], *params)
                    assert not await conn.fetch(f"SELECT * FROM wfa.{r.name}_range({ARGS})", *args)
                    assert not await conn.fetch(f"SELECT * FROM wfa.{r.name}_totals({ARGS})", *args)
    assert compared > 10_000


class _Counting:
    """A connection that counts the statements sent through it."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn
        self.statements: list[str] = []

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        self.statements.append(sql)
        return await self.conn.fetch(sql, *args)


async def test_each_answer_is_one_statement(store_dsn, conn) -> None:
    """Summary, cohort and activity funnels and actions each take one round trip."""
    backend, dsn = store_dsn
    wfs = await _fill(dsn, backend, NOW)
    wf = await queries.get_workflow(conn, None, wfs[0])
    assert wf is not None
    start, end = NOW - timedelta(days=9, minutes=3), NOW + timedelta(minutes=11)
    counting = _Counting(conn)
    calls = {
        "summary": queries.summary(counting, wf.tenant_id, wf, start, end, "day", "Europe/Berlin"),
        "cohort funnel": queries.cohort_funnel(counting, wf.tenant_id, wf, start, end),
        "activity funnel": queries.activity_funnel(counting, wf.tenant_id, wf, start, end),
        "actions": queries.actions(counting, wf.tenant_id, wf, start, end),
    }
    for name, call in calls.items():
        counting.statements.clear()
        answer = await call
        assert len(counting.statements) == 1, (name, counting.statements)
        assert answer
    summary = await queries.summary(conn, wf.tenant_id, wf, start, end, "day", "Europe/Berlin")
    assert sum(b["enrollments"] for b in summary["series"]) == summary["enrollments"] > 0


async def _plans(conn: asyncpg.Connection, sql: str, *args: Any) -> list[str]:
    """The plans of the statements `sql` runs, nested ones included (auto_explain)."""
    logged: list[str] = []

    def listen(_c: Any, msg: Any) -> None:
        logged.append(msg.message)

    conn.add_log_listener(listen)
    try:
        await conn.fetch(sql, *args)
    finally:
        conn.remove_log_listener(listen)
    return [p for p in logged if "RETURN QUERY" not in p and "plan:" in p]


async def test_postgres_reads_run_cached_generic_plans_pruned_at_start(db_dsn: str) -> None:
    """No parallel workers, parameters in the plan, raw partitions pruned at executor start,
    and the statement for buckets above the watermarks runs only when they are in range."""
    wfs = await _fill(db_dsn, "postgres", NOW)
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("LOAD 'auto_explain'")
        await conn.execute(
            "SET auto_explain.log_min_duration = 0; SET auto_explain.log_nested_statements = on;"
            " SET client_min_messages = log"
        )
        for r in ROLLUPS:
            fn = f"SELECT * FROM wfa.{r.name}_totals({ARGS})"
            settled = (NOW - timedelta(days=8, minutes=13), NOW - timedelta(hours=2, minutes=5))
            for start, end in (settled, (settled[0] - timedelta(hours=5), settled[1])):
                plans = await _plans(conn, fn, None, wfs, *plan(start, end).params())
                body = [p for p in plans if f"FROM wfa.{r.name}_1d_mat" in p]
                assert len(body) == 1, plans  # nothing above the watermarks: one statement
                assert "Gather" not in body[0]
                assert "bucket >= $" in body[0], body[0]  # generic: bounds are parameters
                assert "Subplans Removed" in body[0], body[0]  # partitions pruned at start
                assert f"{r.name}_1d_mat_read_idx" in body[0] or "Seq Scan" in body[0]
                for level in ("1h", "1d"):  # not the real-time views
                    assert f"FROM {r.relation(level)}\n" not in body[0]
            live = await _plans(conn, fn, None, wfs, *plan(NOW, NOW + timedelta(hours=3)).params())
            assert len([p for p in live if f"FROM {r.raw}\n" in p]) == 2, live
    finally:
        await conn.close()
