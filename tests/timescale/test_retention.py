"""Retention drops whole old chunks or partitions while the aggregates keep their numbers."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from exporter import queries
from exporter.simulate.generate import advance, generate
from exporter.simulate.writer import upsert_executions, write
from exporter.store.backend import Backend, retention_cutoffs
from exporter.store.postgres import PostgresBackend
from exporter.store.rollups import ROLLUPS
from exporter.store.timescale import TimescaleBackend

from .conftest import NOW, Store, fill, ingest
from .parity import relations

BACKENDS = {"postgres": PostgresBackend, "timescaledb": TimescaleBackend}
RAW = {"executions": "enrolled_at", "step_runs": "entered_at", "workflow_events": "occurred_at"}
_TABLE = {
    "executions": "executions",
    "step_runs": "step_runs",
    "workflow_events": "workflow_events",
}


@pytest.fixture(params=list(BACKENDS))
def backend_dsn(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(backend name, fresh database) for each backend."""
    if request.param == "postgres":
        return "postgres", request.getfixturevalue("db_dsn")
    return "timescaledb", request.getfixturevalue("timescale_dsn")


@pytest.fixture
async def store(backend_dsn: tuple[str, str]):
    """A store of the parametrized backend."""
    conn = await asyncpg.connect(backend_dsn[1])
    try:
        yield Store(backend_dsn[0], backend_dsn[1], conn)
    finally:
        await conn.close()


async def _old_answers(s: Store, start, end) -> dict:
    """Whole-day reads of the old range, which come from the daily aggregates."""
    out = {}
    for wf in await queries.list_workflows(s.conn, None):
        t = wf.tenant_id
        out[f"funnel {wf.workflow_id}"] = await queries.cohort_funnel(s.conn, t, wf, start, end)
        out[f"summary {wf.workflow_id}"] = await queries.summary(s.conn, t, wf, start, end, "day")
        out[f"actions {wf.workflow_id}"] = await queries.actions(s.conn, t, wf, start, end)
    return out


def _before(rel: dict[str, list[tuple]], before) -> dict[str, list[tuple]]:
    return {k: [r for r in v if r[0] < before] for k, v in rel.items()}


def _daily(rel: dict[str, list[tuple]], before) -> dict[str, list[tuple]]:
    return {k: v for k, v in _before(rel, before).items() if k.endswith("_1d")}


async def test_retention_keeps_daily_numbers(store: Store) -> None:
    s = store
    data = await fill([s], executions=2500, days=60, seed=12, recent=300)
    await s.ingest()
    backend: Backend = BACKENDS[s.backend]()
    cutoff = NOW.replace(hour=0, minute=0) - timedelta(days=30)
    first = min(e.enrolled_at for e in data.executions).replace(
        hour=0, minute=0, second=0, microsecond=0
    )
    first += timedelta(days=1)
    daily_before = _daily(await relations(s.conn), cutoff)
    hourly_before = _before(await relations(s.conn), cutoff)
    answers_before = await _old_answers(s, first, cutoff)
    assert any(r[-1] for r in daily_before["wfa.cohort_1d"]), "the old days hold numbers"
    counts = {d: await s.conn.fetchval(f"SELECT count(*) FROM wfa.{_TABLE[d]}") for d in RAW}

    for dataset in RAW:
        dropped = await backend.drop_before(s.conn, dataset, cutoff)
        assert dropped, dataset
        oldest = await s.conn.fetchval(f"SELECT min({RAW[dataset]}) FROM wfa.{_TABLE[dataset]}")
        assert oldest >= cutoff - timedelta(days=7), dataset
        assert (
            await s.conn.fetchval(f"SELECT count(*) FROM wfa.{_TABLE[dataset]}") < counts[dataset]
        )
    assert set(await retention_cutoffs(s.conn)) == set(RAW)
    assert _daily(await relations(s.conn), cutoff) == daily_before
    assert await _old_answers(s, first, cutoff) == answers_before
    if s.backend == "timescaledb":
        # drop_chunks logged no invalidation: even a refresh over the dropped range keeps them
        for level in ("1h", "1d"):
            for r in ROLLUPS:
                await s.conn.execute(
                    "CALL refresh_continuous_aggregate($1::regclass, NULL, $2::timestamptz)",
                    r.relation(level),
                    cutoff,
                )
        assert _before(await relations(s.conn), cutoff) == hourly_before

    # more progress, and a late execution enrolled in the dropped range: refreshes keep the days
    changed = advance(data, NOW + timedelta(hours=2), seed=3)
    late = generate(
        executions=1, days=1, workflows=4, tenants=2, seed=3, now=cutoff - timedelta(days=10)
    )
    late.executions[0].id = "late-old"
    late.executions[0].updated_at = NOW + timedelta(hours=2)
    await upsert_executions(s.conn, changed)
    await write(s.conn, (data.workflows, late.executions))
    await s.ingest()
    assert _daily(await relations(s.conn), cutoff) == daily_before
    assert await _old_answers(s, first, cutoff) == answers_before

    # hourly aggregates go too; the daily ones stay
    assert await backend.drop_before(s.conn, "rollups_1h", cutoff)
    for r in ROLLUPS:
        assert not await s.conn.fetchval(
            f"SELECT count(*) FROM {r.relation('1h')} WHERE bucket < $1", cutoff - timedelta(days=7)
        )
    await s.ingest()
    assert _daily(await relations(s.conn), cutoff) == daily_before
    assert await _old_answers(s, first, cutoff) == answers_before


async def test_retention_never_outruns_the_rollups(store: Store) -> None:
    """Raw data that no refresh has rolled up yet is never dropped."""
    s = store
    await fill([s], executions=400, days=40, seed=2)
    await s.poll_without_refresh()
    backend: Backend = BACKENDS[s.backend]()
    before = await s.conn.fetchval("SELECT count(*) FROM wfa.step_runs")
    assert await backend.drop_before(s.conn, "step_runs", NOW - timedelta(days=20)) == []
    assert await s.conn.fetchval("SELECT count(*) FROM wfa.step_runs") == before
    await ingest(s.dsn, s.backend)
    assert await backend.drop_before(s.conn, "step_runs", NOW - timedelta(days=20))
