"""Reconcile finds what the keyset cursor missed and heals exactly that, on both backends."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import asyncpg

from exporter.config import config_from_dict
from exporter.runtime import Jobs
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.model import SimData
from exporter.simulate.writer import create_source_schema, write
from tests.kit.truth import Truth

from .hostile import hostile_rows
from .test_metrics import get, parse, promtool_check, snapshot_samples
from .truthcheck import check_store, check_workflow

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)


def _config(dsn: str, backend: str, **exporter):
    return config_from_dict(
        {
            "source": {"dsn": dsn},
            "store": {"backend": backend},
            "exporter": {"overlap": "1s", "batch_size": 500, **exporter},
        }
    )


async def _fill(conn: asyncpg.Connection, executions: int, days: float, seed: int = 21):
    data = generate(executions=executions, days=days, workflows=3, tenants=2, seed=seed, now=NOW)
    await create_source_schema(conn)
    await write(conn, data)
    return data


async def _check(conn: asyncpg.Connection, data: SimData) -> None:
    truth = Truth(data)
    await check_store(conn, truth)
    for wf in data.workflows:
        for start, end in ((NOW - timedelta(days=10), NOW + timedelta(hours=1)),
                           (NOW - timedelta(days=1, hours=3), NOW - timedelta(minutes=7))):
            await check_workflow(conn, truth, wf.tenant_id, wf.id, start, end)


async def _exit(conn, ex, reason: str, stamp: datetime, exited: datetime | None = None) -> None:
    """Exit `ex` in the source (stamped `stamp`) and in the model."""
    exited = exited or stamp
    await conn.execute(
        "UPDATE workflow_executions SET status = 'exited', exited_at = $2, exit_reason = $3, "
        "current_step_id = NULL, updated_at = $4 WHERE id = $1",
        ex.id,
        exited,
        reason,
        stamp,
    )
    ex.status, ex.exited_at, ex.exit_reason = "exited", exited, reason
    ex.current_step_id, ex.updated_at = None, stamp


async def test_reconcile_heals_set_back_rows_and_commits_later_than_the_overlap(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn, 3000, days=3)
    now = await conn.fetchval("SELECT now()")
    hostile = hostile_rows(data, now)
    quarantined = [hostile[k] for k in ("duplicate-attempt", "completed-before-enrolled")]
    await write(conn, SimData([], quarantined, data.now))
    data.executions += quarantined
    svc = ExporterService(_config(dsn, backend))
    await svc.open()
    try:
        await svc.poll_once()
        clean = await svc.reconcile_once()
        assert clean is not None and clean.days_compared >= 4
        # quarantined rows count as seen: nothing differs, nothing is read again
        assert (clean.days_differing, clean.rows_read, clean.healed) == (0, 0, {})

        active = [e for e in data.executions if e.status == "active"]
        set_back, late_update, mover = active[0], active[1], active[2]
        # 1. a change whose updated_at goes back an hour
        await _exit(conn, set_back, "set-back", set_back.updated_at - timedelta(hours=1),
                    exited=set_back.updated_at)
        assert (await svc.poll_once()).written == 0
        # 2. a transaction that commits long after its stamp: an update and a new row
        new_row = replace(
            generate(executions=1, days=1, workflows=3, tenants=2, seed=21, now=NOW).executions[0],
            id="late-insert",
        )
        late_conn = await asyncpg.connect(dsn)
        try:
            tx = late_conn.transaction()
            await tx.start()
            stamp = await late_conn.fetchval("SELECT now()")
            await _exit(late_conn, late_update, "too-late", stamp)
            new_row.updated_at = stamp
            await write(late_conn, SimData([], [new_row], data.now))
            await asyncio.sleep(0.05)
            mover.updated_at = await conn.fetchval(
                "UPDATE workflow_executions SET updated_at = now() WHERE id = $1 "
                "RETURNING updated_at",
                mover.id,
            )
            for _ in range(3):  # the exporter polls past the stamp for longer than the overlap
                await svc.poll_once()
                await asyncio.sleep(0.7)
            await tx.commit()
        finally:
            await late_conn.close()
        data.executions.append(new_row)
        missed = await svc.poll_once()
        assert missed.written == 0 and missed.late == 0

        healed = await svc.reconcile_once()
        assert healed is not None
        assert healed.healed == {"set_back": 1, "stale": 1, "missing": 1}
        assert healed.days_differing >= 1 and healed.still_differing == []
        assert healed.rejected == {}
        _, body = await snapshot_samples(svc, datetime.now(UTC))
        promtool_check(body)
        samples = parse(body)
        for reason in ("set_back", "stale", "missing"):
            assert get(samples, "wfa_exporter_reconciled_rows_total", reason=reason) == 1
        assert get(samples, "wfa_exporter_late_commits_total") == 0
        async with svc.store.acquire() as st:
            await svc.backend.refresh(st)
        await _check(conn, data)

        again = await svc.reconcile_once()
        assert (again.days_differing, again.rows_read, again.healed) == (0, 0, {})
    finally:
        await svc.close()


async def test_reconcile_keeps_to_retained_days_and_reports_what_it_cannot_heal(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn, 1500, days=5, seed=4)
    cfg = config_from_dict(
        {
            "source": {"dsn": dsn},
            "store": {"backend": backend},
            "exporter": {"overlap": "1s"},
            "retention": {"executions": "2d", "step_runs": "3d", "workflow_events": "3d"},
        }
    )
    svc = ExporterService(cfg)
    await svc.open()
    try:
        await svc.poll_once()
        old = next(e for e in data.executions if e.enrolled_at < NOW - timedelta(days=4))
        hours_ago = NOW - timedelta(hours=2)
        recent = next(e for e in reversed(data.executions) if e.enrolled_at < hours_ago)
        await conn.execute(
            "DELETE FROM workflow_executions WHERE id = ANY($1::text[])", [old.id, recent.id]
        )
        result = await svc.reconcile_once()
    finally:
        await svc.close()
    assert result is not None
    # the day past retention is not compared; the recent one differs and cannot be healed
    day = recent.enrolled_at.astimezone(UTC).replace(tzinfo=None, hour=0, minute=0, second=0,
                                                     microsecond=0)
    assert result.days_differing == 1 and result.healed == {}
    assert result.still_differing == [(recent.workflow_id, day)]


async def test_scheduled_reconcile_runs_on_the_leader(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn, 600, days=2, seed=8)
    off = ExporterService(_config(dsn, backend, reconcile_interval="off"))
    sched = Jobs()
    off.start(sched)
    assert sched.get_job("reconcile") is None
    cfg = _config(
        dsn, backend, reconcile_interval="1s", poll_interval="1h", ready_max_lag="2h"
    )
    svc = ExporterService(cfg)
    await svc.open()
    sched = Jobs()
    try:
        await svc.poll_once()
        victim = next(e for e in data.executions if e.status == "active")
        await _exit(conn, victim, "set-back", victim.updated_at - timedelta(minutes=5),
                    exited=victim.updated_at)
        svc.start(sched)
        job = sched.get_job("reconcile")
        assert job is not None and job.trigger.interval == timedelta(seconds=1)
        sched.start()
        for _ in range(100):
            await asyncio.sleep(0.1)
            healed = await conn.fetchval(
                "SELECT value FROM wfa.counters WHERE metric = 'reconciled_rows' "
                "AND label = 'set_back'"
            )
            if healed:
                break
        assert healed == 1
    finally:
        sched.shutdown(wait=False)
        await svc.close()
    await svc_refresh(dsn, backend)
    await _check(conn, data)


async def svc_refresh(dsn: str, backend: str) -> None:
    """Poll once and refresh the rollups with a fresh exporter."""
    svc = ExporterService(_config(dsn, backend))
    await svc.open()
    try:
        await svc.poll_once()
    finally:
        await svc.close()
