"""Simulate → ingest → every read query equals the generator's truth, on both backends."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from exporter.simulate.generate import advance, generate
from exporter.simulate.writer import create_source_schema, insert_bad_rows, upsert_executions, write
from tests.kit.truth import Truth

from .conftest import ingest
from .truthcheck import check_series, check_workflow

NOW = datetime.now(UTC).replace(minute=17, second=0, microsecond=0) - timedelta(hours=1)


def _ranges(now: datetime) -> list[tuple[datetime, datetime]]:
    day = now.replace(hour=0, minute=0)
    return [
        (now - timedelta(days=30), now + timedelta(hours=1)),  # everything
        (day - timedelta(days=9), day - timedelta(days=2)),  # whole days
        (now - timedelta(days=3, minutes=13), now - timedelta(hours=5, minutes=41)),  # ragged
        (now - timedelta(minutes=40), now + timedelta(minutes=5)),  # inside the live hour
    ]


async def _fill(conn: asyncpg.Connection, executions: int = 3000, days: float = 20, seed: int = 7):
    data = generate(executions=executions, days=days, workflows=4, tenants=2, seed=seed, now=NOW)
    await create_source_schema(conn)
    await write(conn, data)
    return data


async def _check_all(conn: asyncpg.Connection, data, now: datetime) -> None:
    truth = Truth(data)
    for wf in data.workflows:
        for start, end in _ranges(now):
            await check_workflow(conn, truth, wf.tenant_id, wf.id, start, end)


async def _counters(conn: asyncpg.Connection) -> dict:
    rows = await conn.fetch("SELECT * FROM wfa.counters")
    return {tuple(r.values())[:-1]: r["value"] for r in rows}


async def _rollups(conn: asyncpg.Connection) -> dict:
    out = {}
    for name in ("events", "step_runs", "cohort", "cohort_steps"):
        for level in ("1h", "1d"):
            rows = await conn.fetch(f"SELECT * FROM wfa.{name}_{level} ORDER BY 1,2,3,4")
            out[f"{name}_{level}"] = sorted(tuple(map(str, r.values())) for r in rows)
    return out


async def test_ingest_equals_truth(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn)
    result = await ingest(dsn, backend)
    assert result.written == len(data.executions)
    await _check_all(conn, data, NOW)
    truth = Truth(data)
    counters = await _counters(conn)
    for wf in data.workflows:
        t = truth.totals(wf.id)
        mine = {(k[0], k[5]): v for k, v in counters.items() if k[2] == wf.id and not k[3]}
        for metric in ("enrollments", "completions", "conversions", "failures"):
            assert mine.get((metric, ""), 0) == t[metric], (wf.id, metric)
        for reason, n in t["exits_by_reason"].items():
            assert mine[("exits", reason)] == n


async def test_series_granularities_and_dst(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn, executions=2500, days=300, seed=3)
    await ingest(dsn, backend)
    truth = Truth(data)
    wf = data.workflows[0]
    # both DST changes of Europe/Berlin fall inside these ranges
    spring = (datetime(2026, 3, 25, tzinfo=UTC), datetime(2026, 4, 2, tzinfo=UTC))
    autumn = (datetime(2025, 10, 22, 7, 30, tzinfo=UTC), datetime(2025, 10, 30, tzinfo=UTC))
    for start, end in (spring, autumn):
        if start < NOW - timedelta(days=300):
            continue
        for tz in ("Europe/Berlin", "UTC", "America/New_York", "Asia/Kolkata"):
            await check_series(conn, truth, wf.tenant_id, wf.id, start, end, "day", tz)
            await check_series(conn, truth, wf.tenant_id, wf.id, start, end, "hour", tz)
    year = (NOW - timedelta(days=200), NOW)
    for g in ("week", "month", "day"):
        await check_series(conn, truth, wf.tenant_id, wf.id, *year, g, "Europe/Berlin")
        await check_series(conn, truth, wf.tenant_id, wf.id, *year, g, "UTC")


async def test_progress_after_first_ingest(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn, executions=2000, days=10)
    await ingest(dsn, backend)
    before = await _counters(conn)
    changed = advance(data, NOW + timedelta(hours=3), seed=11)
    assert changed, "the simulator must progress some active executions"
    await upsert_executions(conn, changed)
    result = await ingest(dsn, backend)
    assert result.written == len(changed)
    await _check_all(conn, data, data.now)
    after = await _counters(conn)
    assert all(after[k] >= v for k, v in before.items()), "counters never decrease"
    truth = Truth(data)
    for wf in data.workflows:
        t = truth.totals(wf.id)
        assert after[("completions", wf.tenant_id, wf.id, "", "", "")] == t["completions"]
        for step_id, s in t["steps"].items():
            for outcome in ("succeeded", "failed", "skipped"):
                n = s[outcome]
                if n:
                    k = ("step_outcomes", wf.tenant_id, wf.id, step_id)
                    got = sum(v for kk, v in after.items() if kk[:4] == k and kk[5] == outcome)
                    assert got == n, (wf.id, step_id, outcome)


async def test_transform_interleaved_with_the_previous_write(store_dsn, conn, monkeypatch):
    """Each chunk is transformed one row per turn of the event loop while the previous chunk
    is written (small batches, a second store connection): the store still equals the truth,
    on the first ingest and on the changes after it."""
    import exporter.ingest as ingest_module

    monkeypatch.setattr(ingest_module, "TRANSFORM_SLICE", 1)
    backend, dsn = store_dsn
    data = await _fill(conn, executions=1200, days=6, seed=13)
    first = await ingest(dsn, backend, batch_size=50)
    assert first.written == len(data.executions) and not first.rejected
    assert first.batches > len(data.executions) // 50, "the ingest must span many chunks"
    changed = advance(data, NOW + timedelta(hours=2), seed=17)
    assert changed
    await upsert_executions(conn, changed)
    again = await ingest(dsn, backend, batch_size=50)
    assert again.written == len(changed) and not again.rejected
    await _check_all(conn, data, data.now)


async def test_late_row_in_overlap_and_idempotent_rerun(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn, executions=500, days=5)
    await ingest(dsn, backend, overlap="10m")
    counters, rollups = await _counters(conn), await _rollups(conn)
    # nothing changed: a second run changes no number
    again = await ingest(dsn, backend, overlap="10m")
    assert again.written == 0
    assert await _counters(conn) == counters
    assert await _rollups(conn) == await _rollups(conn) == rollups
    # a row committed late, with updated_at 2 minutes older than the cursor; the overlap is
    # re-read behind the source clock of the last read, so the cursor first moves to now
    lead, late = generate(executions=2, days=1, workflows=4, tenants=2, seed=7, now=NOW).executions
    lead.id, lead.updated_at = "lead-row-1", await conn.fetchval("SELECT now()")
    await write(conn, type(data)(workflows=[], executions=[lead], now=data.now))
    assert (await ingest(dsn, backend, overlap="10m")).written == 1
    cursor = await conn.fetchval("SELECT updated_at FROM wfa.cursors WHERE name = 'executions'")
    late.id = "late-row-1"
    late.updated_at = cursor - timedelta(minutes=2)
    await write(conn, type(data)(workflows=[], executions=[late], now=data.now))
    result = await ingest(dsn, backend, overlap="10m")
    assert result.written == 1
    assert result.late == 1
    assert (
        await conn.fetchval("SELECT count(*) FROM wfa.executions WHERE execution_id = 'late-row-1'")
        == 1
    )
    data.executions += [lead, late]
    await _check_all(conn, data, NOW)


async def test_bad_rows_are_quarantined(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn, executions=300, days=3)
    expected = await insert_bad_rows(conn, [w.id for w in data.workflows])
    result = await ingest(dsn, backend)
    assert result.written == len(data.executions)
    rows = await conn.fetch("SELECT source_id, reason, raw FROM wfa.rejected_rows")
    assert {r["source_id"]: r["reason"] for r in rows} == expected
    assert all(json.loads(r["raw"])["id"] == r["source_id"] for r in rows)
    by_reason = {
        r["label"]: r["value"]
        for r in await conn.fetch(
            "SELECT label, value FROM wfa.counters WHERE metric = 'rejected_rows'"
        )
    }
    want: dict[str, int] = {}
    for reason in expected.values():
        want[reason] = want.get(reason, 0) + 1
    assert by_reason == want
    await ingest(dsn, backend)  # re-reading the overlap quarantines nothing twice
    assert await conn.fetchval("SELECT count(*) FROM wfa.rejected_rows") == len(expected)
    await _check_all(conn, data, NOW)


@pytest.mark.slow
async def test_killed_mid_ingest_resumes_exactly(store_dsn, conn, tmp_path: Path):
    backend, dsn = store_dsn
    data = await _fill(conn, executions=30_000, days=10, seed=5)
    cfg = tmp_path / "wfa.yaml"
    cfg.write_text(
        f"source: {{dsn: '{dsn}'}}\nstore: {{backend: {backend}}}\nexporter: {{batch_size: 500}}\n"
    )
    env = {**os.environ, "WFA_CONFIG": str(cfg)}
    cmd = [sys.executable, "-m", "exporter", "exporter", "--once"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            await asyncio.sleep(0.05)
            exists = await conn.fetchval("SELECT to_regclass('wfa.cursors') IS NOT NULL")
            if exists and await conn.fetchval(
                "SELECT count(*) FROM wfa.cursors WHERE name = 'executions'"
            ):
                break
        assert proc.poll() is None, "the exporter finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    partial = await conn.fetchval("SELECT count(*) FROM wfa.executions")
    assert 0 < partial < len(data.executions)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert await conn.fetchval("SELECT count(*) FROM wfa.executions") == len(data.executions)
    await _check_all(conn, data, NOW)
