"""The live workload moves the numbers (and stays exact); backfill resumes after SIGINT."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from exporter import queries
from exporter.config import config_from_dict
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.live import LiveWorkload, parse_rate, run_live
from exporter.simulate.model import SimData
from exporter.simulate.writer import (
    create_source_schema,
    execution_record,
    upsert_executions,
    write,
)
from tests.kit.truth import Truth

from .truthcheck import check_workflow

T0 = (datetime.now(UTC) - timedelta(days=1)).replace(second=0, microsecond=0)
TICK = timedelta(seconds=20)


def test_parse_rate() -> None:
    """Rates read as per second."""
    assert parse_rate("20/s") == 20
    assert parse_rate("300/m") == 5
    assert parse_rate("7200/h") == 2
    assert parse_rate("1.5") == 1.5


def test_live_is_deterministic() -> None:
    """Same seed, same start data, same tick times: the same rows, tick by tick."""
    data = generate(executions=400, days=5, workflows=3, tenants=2, seed=4, now=T0)
    active = [e for e in data.executions if e.status == "active"]

    def rows(seed: int) -> list[list[tuple]]:
        live = LiveWorkload(data.workflows, rate=2, seed=seed, start=T0, active=active)
        return [
            [execution_record(e) for e in live.step(T0 + TICK * i)] for i in range(1, 40)
        ]

    a = rows(1)
    assert a == rows(1)
    assert a != rows(2)
    assert sum(map(len, a)) > 100
    assert all(e.status == "active" for e in active)  # the inputs are not changed


async def _summary(
    conn: asyncpg.Connection, tenant: str, wf_id: str, start: datetime, end: datetime
) -> dict:
    wf = await queries.get_workflow(conn, tenant, wf_id)
    assert wf is not None
    return await queries.summary(conn, tenant, wf, start, end, "day", "UTC")


async def test_live_moves_the_numbers_exactly(db_dsn: str) -> None:
    """Ticks of the live workload, ingested as they come, equal the truth of what was written."""
    data = generate(executions=1500, days=10, workflows=3, tenants=2, seed=5, now=T0)
    src = await asyncpg.connect(db_dsn)
    cfg = config_from_dict({"source": {"dsn": db_dsn}, "store": {"backend": "postgres"}})
    svc = ExporterService(cfg)
    try:
        await create_source_schema(src)
        await write(src, data)
        await svc.open()
        await svc.poll_once()
        everything = (T0 - timedelta(days=11), T0 + timedelta(days=1))
        wf = data.workflows[0]
        async with svc.store.acquire() as st:
            before = await _summary(st, wf.tenant_id, wf.id, *everything)

        latest = {e.id: e for e in data.executions}
        active = [e for e in data.executions if e.status == "active"]
        live = LiveWorkload(data.workflows, rate=0.5, seed=9, start=T0, active=active)
        times = iter(T0 + TICK * i for i in range(1, 91))
        stop = asyncio.Event()
        last = T0

        def clock() -> datetime:
            nonlocal last
            last = next(times)
            if last >= T0 + TICK * 90:
                stop.set()
            return last

        for _ in range(3):
            # a third of the ticks, then a poll: ingestion follows the workload as it goes
            ticks = live.ticks
            while live.ticks < ticks + 30 and not stop.is_set():
                changed = live.step(clock())
                latest.update((e.id, e) for e in changed)
                await upsert_executions(src, changed)
            await svc.poll_once()
        assert live.enrolled > 600
        async with svc.store.acquire() as st:
            after = await _summary(st, wf.tenant_id, wf.id, *everything)
            assert after["enrollments"] > before["enrollments"]
            assert after["completions"] + after["exits"] > before["completions"] + before["exits"]
            truth = Truth(SimData(data.workflows, list(latest.values()), last))
            for w in data.workflows:
                for start, end in (everything, (T0, last + timedelta(seconds=1))):
                    await check_workflow(st, truth, w.tenant_id, w.id, start, end)
    finally:
        await svc.close()
        await src.close()


async def test_run_live_stops_and_writes(db_dsn: str) -> None:
    """run_live against an empty source: workflows made, rows written, stops on the event."""
    from exporter.simulate.live import open_live

    conn = await asyncpg.connect(db_dsn)
    try:
        await create_source_schema(conn)
        live = await open_live(conn, rate=50, seed=1, start=T0)
        assert len(live.workflows) == 5
        stop = asyncio.Event()
        times = iter(T0 + timedelta(seconds=i) for i in range(1, 100))

        def clock() -> datetime:
            t = next(times)
            if t >= T0 + timedelta(seconds=10):
                stop.set()
            return t

        written = await run_live(conn, live, tick=0, stop=stop, clock=clock)
        rows = await conn.fetchval("SELECT count(*) FROM workflow_executions")
        assert written >= rows > 300
        assert await conn.fetchval("SELECT count(*) FROM workflows") == 5
    finally:
        await conn.close()


def _backfill(cfg: Path) -> subprocess.Popen[str]:
    argv = ["backfill", "-c", str(cfg), "--progress-interval", "0.2"]
    return subprocess.Popen(
        [sys.executable, "-m", "exporter", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_backfill_resumes_after_sigint_and_ends_exact(db_dsn: str, tmp_path: Path) -> None:
    """SIGINT mid-way leaves a committed cursor; the second run resumes and matches the truth."""
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    data = generate(executions=8_000, days=20, workflows=3, tenants=2, seed=11, now=now)
    conn = await asyncpg.connect(db_dsn)
    try:
        await create_source_schema(conn)
        await write(conn, data)
    finally:
        await conn.close()
    cfg = tmp_path / "wfa.yaml"
    cfg.write_text(
        f"source: {{dsn: '{db_dsn}'}}\nstore: {{backend: postgres}}\n"
        "exporter: {batch_size: 100}\n"
    )

    proc = _backfill(cfg)
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        line = await asyncio.to_thread(proc.stderr.readline)
        seen += line
        m = re.match(r"backfill: ([\d,]+)/([\d,]+) rows", line)
        if m and int(m.group(1).replace(",", "")) > 0:
            break
        assert line, f"backfill ended before it could be interrupted:\n{seen}"
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    assert proc.returncode == 130, seen + err
    assert "interrupted at" in err and "run it again to resume" in err

    conn = await asyncpg.connect(db_dsn)
    try:
        partial = await conn.fetchval("SELECT count(*) FROM wfa.executions")
        assert 0 < partial < len(data.executions)
        assert await conn.fetchval("SELECT count(*) FROM wfa.cursors WHERE name = 'executions'")
    finally:
        await conn.close()

    proc = _backfill(cfg)
    _, err = await asyncio.to_thread(proc.communicate, timeout=240)
    assert proc.returncode == 0, err
    assert "resuming at" in err
    done = re.findall(r"backfill: ([\d,]+)/([\d,]+) rows", err)[-1]
    assert done == (f"{len(data.executions):,}", f"{len(data.executions):,}")

    conn = await asyncpg.connect(db_dsn)
    try:
        assert await conn.fetchval("SELECT count(*) FROM wfa.executions") == len(data.executions)
        truth = Truth(data)
        for wf in data.workflows:
            await check_workflow(
                conn, truth, wf.tenant_id, wf.id, now - timedelta(days=21), now + timedelta(hours=1)
            )
            await check_workflow(
                conn, truth, wf.tenant_id, wf.id, now - timedelta(days=3, hours=5), now
            )
    finally:
        await conn.close()
