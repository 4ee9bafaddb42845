"""No row halts ingestion: hostile rows are quarantined or bounded, the rest stays exact."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

import exporter.ingest as ingest_module
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.model import SimData
from exporter.simulate.writer import create_source_schema, write
from exporter.transform import MAX_TEXT_BYTES, TRUNCATED, bounded_key
from tests.kit.truth import Truth

from .conftest import ingest, make_config
from .hostile import hostile_rows
from .truthcheck import check_store, check_workflow

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


async def _fill(conn: asyncpg.Connection, executions: int, days: float = 3, seed: int = 11):
    data = generate(executions=executions, days=days, workflows=3, tenants=2, seed=seed, now=NOW)
    await create_source_schema(conn)
    await write(conn, data)
    return data


def _ranges(now: datetime) -> list[tuple[datetime, datetime]]:
    return [
        (now - timedelta(days=30), now + timedelta(hours=2)),
        (now - timedelta(days=2, minutes=7), now - timedelta(hours=3, minutes=11)),
    ]


async def _check(conn: asyncpg.Connection, truth: Truth) -> None:
    await check_store(conn, truth)
    for wf in truth.data.workflows:
        for start, end in _ranges(NOW):
            await check_workflow(conn, truth, wf.tenant_id, wf.id, start, end)


async def _rejected(conn: asyncpg.Connection) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT raw->>'id' AS id, reason FROM wfa.rejected_rows WHERE source_table = 'executions'"
    )
    return {r["id"]: r["reason"] for r in rows}


async def _reject_counters(conn: asyncpg.Connection) -> dict[str, int]:
    rows = await conn.fetch("SELECT label, value FROM wfa.counters WHERE metric = 'rejected_rows'")
    return {r["label"]: r["value"] for r in rows}


async def test_hostile_rows_are_quarantined_or_bounded(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn, 800)
    now = await conn.fetchval("SELECT now()")
    hostile = hostile_rows(data, now)
    await write(conn, SimData([], list(hostile.values()), data.now))
    data.executions += hostile.values()
    truth = Truth(data)
    assert truth.rejected == {
        hostile[name].id: reason
        for name, reason in {
            "duplicate-attempt": "duplicate_attempt",
            "enrolled-9999": "implausible_time",
            "enrolled-1900": "implausible_time",
            "completed-before-enrolled": "before_enrolled",
            "id-too-long": "id_too_long",
            "updated-9999": "implausible_time",
        }.items()
    }

    result = await ingest(dsn, backend)
    assert result.written == len(data.executions) - len(truth.rejected)
    assert await _rejected(conn) == truth.rejected
    assert await _reject_counters(conn) == Counter(truth.rejected.values())
    long_id = await conn.fetchval(
        "SELECT source_id FROM wfa.rejected_rows WHERE reason = 'id_too_long'"
    )
    assert long_id == bounded_key(hostile["id-too-long"].id) and len(long_id.encode()) <= 200
    # the cursor stops before the row stamped in the year 9999, so it cannot hide what follows
    head = await conn.fetchval("SELECT updated_at FROM wfa.cursors WHERE name = 'executions'")
    assert head == now
    # free text is stored cut, with a marker, under the btree limit
    reason = await conn.fetchval(
        "SELECT exit_reason FROM wfa.executions WHERE execution_id = 'hostile-exit-reason-3kb'"
    )
    assert reason.endswith(TRUNCATED) and len(reason.encode()) <= MAX_TEXT_BYTES
    assert reason.startswith("unsubscribed because é")
    for eid in ("hostile-error-10kb", "hostile-error-multibyte"):
        err = await conn.fetchval(
            "SELECT error FROM wfa.step_runs WHERE execution_id = $1 AND error IS NOT NULL", eid
        )
        assert err.endswith(TRUNCATED) and len(err.encode()) <= MAX_TEXT_BYTES, eid
    await _check(conn, truth)

    # rows keep coming after the hostile ones, and nothing is counted twice
    counters = await conn.fetch("SELECT * FROM wfa.counters ORDER BY 1, 2, 3, 4, 5, 6")
    again = await ingest(dsn, backend)
    assert again.written == 0 and again.rejected == {}
    assert await conn.fetch("SELECT * FROM wfa.counters ORDER BY 1, 2, 3, 4, 5, 6") == counters
    late = generate(executions=1, days=1, workflows=3, tenants=2, seed=99, now=NOW).executions[0]
    late.id, late.updated_at = "after-hostile", await conn.fetchval("SELECT now()")
    await write(conn, SimData([], [late], data.now))
    assert (await ingest(dsn, backend)).written == 1
    data.executions.append(late)
    await _check(conn, Truth(data))


async def test_plausible_window_is_configurable(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn, 300, days=2)
    # everything enrolled before yesterday is implausible for this config
    cut = NOW - timedelta(days=1)
    cfg = make_config(dsn, backend, batch_size=50)
    cfg = cfg.model_copy(update={"source": cfg.source.model_copy(update={"valid_from": cut})})
    svc = ExporterService(cfg)
    await svc.open()
    try:
        res = await svc.poll_once()
    finally:
        await svc.close()
    assert res is not None
    truth = Truth(data, valid_from=cut)
    assert truth.rejected and set(truth.rejected.values()) == {"implausible_time"}
    assert res.rejected == {"implausible_time": len(truth.rejected)}
    assert await _rejected(conn) == truth.rejected
    await check_store(conn, truth)


async def _refuse_trigger(conn: asyncpg.Connection, execution_id: str, action: str) -> None:
    await conn.execute(
        f"""CREATE FUNCTION wfa_test_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.execution_id = '{execution_id}' THEN {action}; END IF;
            RETURN NEW;
        END $$"""
    )
    await conn.execute(
        "CREATE TRIGGER wfa_test_refuse BEFORE INSERT OR UPDATE ON wfa.step_runs "
        "FOR EACH ROW EXECUTE FUNCTION wfa_test_refuse()"
    )


async def test_row_refused_by_the_store_is_split_out(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn, 2000)
    svc = ExporterService(make_config(dsn, backend, batch_size=400))
    await svc.open()
    try:
        with_steps = [e for e in data.executions if e.step_progress]
        victim = with_steps[len(with_steps) // 2]
        await _refuse_trigger(
            conn, victim.id, "RAISE EXCEPTION 'refused by a store trigger for %', NEW.execution_id"
        )
        result = await svc.poll_once()
    finally:
        await svc.close()
    assert result is not None
    assert result.written == len(data.executions) - 1
    row = await conn.fetchrow("SELECT source_id, reason, detail FROM wfa.rejected_rows")
    assert row["source_id"] == victim.id and row["reason"] == "store_error"
    assert row["detail"].startswith("P0001") and "refused by a store trigger" in row["detail"]
    assert await _reject_counters(conn) == {"store_error": 1}
    head = await conn.fetchval("SELECT updated_at FROM wfa.cursors WHERE name = 'executions'")
    assert head == max(e.updated_at for e in data.executions)
    data.executions.remove(victim)
    await _check(conn, Truth(data))


async def test_statement_timeout_is_not_a_row_fault(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn, 1000)
    cfg = make_config(dsn, backend, batch_size=300)
    cfg = cfg.model_copy(
        update={"store": cfg.store.model_copy(update={"statement_timeout": timedelta(seconds=1)})}
    )
    svc = ExporterService(cfg)
    await svc.open()
    try:
        victim = [e for e in data.executions if e.step_progress][500]
        await _refuse_trigger(conn, victim.id, "PERFORM pg_sleep(3)")
        with pytest.raises(asyncpg.QueryCanceledError):
            await svc.poll_once()
        assert svc.state.errors["statement_timeout"] == 1
        assert await conn.fetchval("SELECT count(*) FROM wfa.rejected_rows") == 0
        stored = await conn.fetchval("SELECT count(*) FROM wfa.executions")
        assert stored < len(data.executions)
        await conn.execute("DROP TRIGGER wfa_test_refuse ON wfa.step_runs")
        result = await svc.poll_once()
    finally:
        await svc.close()
    assert result is not None
    assert await conn.fetchval("SELECT count(*) FROM wfa.executions") == len(data.executions)
    await _check(conn, Truth(data))


async def test_bulk_update_then_idle_reads_nothing_and_late_commit_is_caught(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn, 12_000, days=0.5, seed=3)
    svc = ExporterService(make_config(dsn, backend, batch_size=2000, overlap="4s"))
    await svc.open()
    try:
        assert (await svc.poll_once()).written == len(data.executions)
        bulk = await conn.fetchval(
            "WITH u AS (UPDATE workflow_executions SET updated_at = now() RETURNING updated_at) "
            "SELECT count(DISTINCT updated_at) FROM u"
        )
        assert bulk == 1
        first = await svc.poll_once()
        assert first.read == len(data.executions) and first.late == 0
        await asyncio.sleep(4.5)
        # the previous read began right after the bulk update: its overlap still reaches it,
        # the unchanged rows are skipped (not written)
        again = await svc.poll_once()
        assert again.written == 0 and again.read == again.skipped == len(data.executions)
        # this poll's previous read began more than the overlap after the bulk update
        idle = await svc.poll_once()
        assert (idle.read, idle.written, idle.skipped) == (0, 0, 0)
        assert (await svc.poll_once()).read == 0

        # a transaction stamps a row, another commits past it, then the first commits
        active = next(e for e in data.executions if e.status == "active")
        other = next(e for e in data.executions if e.status == "active" and e is not active)
        late_conn = await asyncpg.connect(dsn)
        try:
            tx = late_conn.transaction()
            await tx.start()
            stamped = await late_conn.fetchval(
                "UPDATE workflow_executions SET status = 'exited', exited_at = now(), "
                "exit_reason = 'late', current_step_id = NULL, updated_at = now() "
                "WHERE id = $1 RETURNING updated_at",
                active.id,
            )
            await asyncio.sleep(0.05)
            moved = await conn.fetchval(
                "UPDATE workflow_executions SET updated_at = now() WHERE id = $1 "
                "RETURNING updated_at",
                other.id,
            )
            assert (await svc.poll_once()).written == 1
            head = await conn.fetchval(
                "SELECT updated_at FROM wfa.cursors WHERE name = 'executions'"
            )
            assert head == moved > stamped
            await tx.commit()
        finally:
            await late_conn.close()
        caught = await svc.poll_once()
    finally:
        await svc.close()
    assert caught.written == 1 and caught.late == 1
    assert await conn.fetchval(
        "SELECT value FROM wfa.counters WHERE metric = 'late_commits'"
    ) == 1
    active.status, active.exited_at, active.exit_reason = "exited", stamped, "late"
    active.current_step_id, active.updated_at = None, stamped
    await _check(conn, Truth(data))


async def test_rereads_skip_what_this_writer_stored_until_a_takeover(
    store_dsn, conn, monkeypatch
):
    backend, dsn = store_dsn
    data = await _fill(conn, 400, days=0.5, seed=5)
    asked: list[int] = []
    real_old_states = ingest_module.old_states

    async def old_states(store, rows):
        asked.append(len(rows))
        return await real_old_states(store, rows)

    monkeypatch.setattr(ingest_module, "old_states", old_states)
    svc = ExporterService(make_config(dsn, backend, batch_size=150))
    await svc.open()
    try:
        assert (await svc.poll_once()).written == len(data.executions)
        # Stamped now: inside the overlap window, so every later poll re-reads them.
        await conn.execute("UPDATE workflow_executions SET updated_at = now()")
        assert (await svc.poll_once()).written == len(data.executions)
        asked.clear()
        again = await svc.poll_once()
        # The re-read skips the versions this writer committed without asking the store.
        assert again.read == again.skipped == len(data.executions) and again.written == 0
        assert sum(asked) == 0

        # A row rejected is not remembered: its re-read tries it again, and once its
        # workflow is known it is written.
        orphan = next(e for e in data.executions if e.status == "active")
        await conn.execute(
            "UPDATE workflow_executions SET workflow_id = 'wf-later', updated_at = now() "
            "WHERE id = $1", orphan.id,
        )
        refused = await svc.poll_once()
        assert refused.rejected == {"unknown_workflow": 1} and refused.written == 0
        owner = next(w for w in data.workflows if w.id == orphan.workflow_id)
        await conn.execute(
            "INSERT INTO workflows (id, tenant_id, name, steps, updated_at) "
            "SELECT 'wf-later', tenant_id, 'later', steps, now() FROM workflows WHERE id = $1",
            owner.id,
        )
        asked.clear()
        caught = await svc.poll_once()
        assert caught.written == 1 and sum(asked) == 1

        # After a takeover another writer may have changed the store: nothing is skipped
        # unasked, and a row missing from the store is written again.
        gone = next(e for e in data.executions if e.id != orphan.id)
        for table in ("executions", "execution_steps", "workflow_events", "step_runs"):
            await conn.execute(f"DELETE FROM wfa.{table} WHERE execution_id = $1", gone.id)
        svc.ingestor.reset()
        asked.clear()
        healed = await svc.poll_once()
        assert healed.written == 1 and sum(asked) >= len(data.executions)
    finally:
        await svc.close()
    assert await conn.fetchval(
        "SELECT count(*) FROM wfa.executions WHERE execution_id = $1", gone.id
    ) == 1
