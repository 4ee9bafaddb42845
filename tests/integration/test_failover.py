"""Fenced leadership: lock sessions killed mid-batch, leaders killed, restarts mid-catch-up.

Real `wfa exporter` processes on one store and a real source; afterwards every counter,
rollup and raw table equals an independent count of the source.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import pytest

from exporter.config import config_from_dict
from exporter.leadership import Leadership
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.model import SimData
from exporter.simulate.writer import create_source_schema, write
from tests.kit.truth import Truth

from .exporters import Fleet, kill_lock_sessions, leader, missing_rows, wait_for
from .truthcheck import check_store, check_workflow

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=2)


async def _fill(conn: asyncpg.Connection, executions: int, seed: int) -> SimData:
    data = generate(executions=executions, days=0.5, workflows=4, tenants=2, seed=seed, now=NOW)
    await create_source_schema(conn)
    await write(conn, data)
    return data


async def _bulk_exit(conn: asyncpg.Connection, data: SimData) -> int:
    """Exit every active execution in one UPDATE (one updated_at), in the source and the model."""
    rows = await conn.fetch(
        "UPDATE workflow_executions SET status = 'exited', exited_at = now(), "
        "exit_reason = 'bulk', current_step_id = NULL, updated_at = now() "
        "WHERE status = 'active' RETURNING id, updated_at"
    )
    stamp = {r["id"]: r["updated_at"] for r in rows}
    for ex in data.executions:
        if ex.id in stamp:
            ex.status, ex.exit_reason, ex.current_step_id = "exited", "bulk", None
            ex.exited_at = ex.updated_at = stamp[ex.id]
    return len(rows)


async def _final_check(dsn: str, backend: str, conn: asyncpg.Connection, data: SimData) -> None:
    """One more poll finds nothing to write; then every number equals the truth."""
    cfg = config_from_dict({"source": {"dsn": dsn}, "store": {"backend": backend}})
    svc = ExporterService(cfg)
    await svc.open()
    try:
        result = await svc.poll_once()
        async with svc.store.acquire() as st:
            await svc.backend.refresh(st)
    finally:
        await svc.close()
    assert result is not None and result.written == 0, result
    truth = Truth(data)
    assert not truth.rejected
    await check_store(conn, truth)
    for wf in data.workflows:
        for start, end in ((NOW - timedelta(days=1), NOW + timedelta(days=1)),
                           (NOW - timedelta(hours=7, minutes=13), NOW - timedelta(minutes=41))):
            await check_workflow(conn, truth, wf.tenant_id, wf.id, start, end)


@pytest.mark.slow
async def test_lock_sessions_killed_mid_batch_count_nothing_twice(store_dsn, conn, tmp_path):
    backend, dsn = store_dsn
    data = await _fill(conn, 40_000, seed=9)
    fleet = Fleet(
        dsn,
        backend,
        tmp_path,
        {"poll_interval": "200ms", "batch_size": 500, "overlap": "2s", "refresh_interval": "2s"},
    )
    rng = random.Random(5)
    figures = {"lock_sessions_killed": 0, "leaders_sigkilled": 0, "leader_flag_dropped": 0}
    try:
        fleet.start()
        fleet.start()
        await wait_for(lambda: _caught_up(conn), 300, 0.5, "the first ingest")
        bulk = await _bulk_exit(conn, data)
        assert bulk > 15_000
        figures["bulk_update_rows"] = bulk
        recover: list[float] = []
        drop: list[float | None] = []
        while await missing_rows(conn) > 0 or figures["lock_sessions_killed"] < 8:
            await asyncio.sleep(rng.uniform(0.3, 0.9))
            held = await leader(conn)
            assert held is not None
            old = fleet.by_pid(held[0])
            if figures["lock_sessions_killed"] == 3 and not figures["leaders_sigkilled"] and old:
                old.kill()
                fleet.running.remove(old)
                fleet.start()
                figures["leaders_sigkilled"] += 1
            else:
                if not await kill_lock_sessions(conn):
                    continue
                figures["lock_sessions_killed"] += 1
                if old is not None:
                    drop.append(await _flag_drop(conn, old, held[1]))
            t0 = time.monotonic()
            epoch = held[1]
            await wait_for(lambda e=epoch: _led(conn, e), 60, 0.05, "a new leader")
            recover.append(time.monotonic() - t0)
        seen = [d for d in drop if d is not None]
        figures["leader_flag_dropped"] = len(seen)
        figures["max_seconds_to_leader_flag_0"] = round(max(seen), 3) if seen else None
        figures["max_seconds_to_new_leader"] = round(max(recover), 3)
        await wait_for(lambda: _caught_up(conn), 300, 0.5, "catching up")
        await asyncio.sleep(3)  # a rollup refresh
    finally:
        fleet.stop_all()
    assert figures["leader_flag_dropped"] >= 1
    logs = fleet.logs()
    figures["batches_fenced_off"] = logs.count("no longer leads")
    await _final_check(dsn, backend, conn, data)
    figures["rows_lost"] = figures["rows_double_counted"] = 0  # check_store passed
    print(json.dumps({"backend": backend, **figures}))
    (tmp_path / "figures.json").write_text(json.dumps(figures))


async def _flag_drop(conn: asyncpg.Connection, old, epoch: int) -> float | None:
    """Seconds until the replica whose lock session died reports leader 0 (None when it took
    the lock again first, at a newer epoch, before it could be seen at 0)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0:
        health = await old.healthz()
        if health is not None and not health["leader"]:
            return time.monotonic() - t0
        held = await leader(conn)
        if held is not None and held[0] == old.pid and held[1] > epoch:
            return None
        await asyncio.sleep(0.01)
    raise AssertionError("wfa_exporter_leader stayed 1 for a second after the lock was lost")


async def _caught_up(conn: asyncpg.Connection) -> bool:
    if not await conn.fetchval("SELECT to_regclass('wfa.cursors') IS NOT NULL"):
        return False
    return await missing_rows(conn) == 0


async def _led(conn: asyncpg.Connection, epoch: int) -> bool:
    held = await leader(conn)
    return held is not None and held[1] > epoch


@pytest.mark.slow
async def test_restarts_mid_catch_up_always_progress(store_dsn, conn, tmp_path):
    backend, dsn = store_dsn
    data = await _fill(conn, 30_000, seed=23)
    cfg = tmp_path / "wfa.yaml"
    cfg.write_text(
        f"source: {{dsn: '{dsn}'}}\nstore: {{backend: {backend}}}\n"
        "exporter: {batch_size: 500, overlap: 3s}\n"
    )
    cmd = [sys.executable, "-m", "exporter", "exporter", "--once", "--config", str(cfg)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    bulk = await _bulk_exit(conn, data)
    assert bulk > 10_000
    rng = random.Random(3)
    behind = [await missing_rows(conn)]
    kills = 0
    while True:
        before = await _cursor(conn)
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            # kill once this run's cursor was seen to move a random number (1-4) of times, at
            # a random point after that: counted in commits, not seconds, so that a faster
            # machine or exporter still sees its catch-up cut several times
            commits, target, last = 0, rng.randint(1, 4), before
            for _ in range(6000):
                if proc.poll() is not None:
                    break
                now = await _cursor(conn)
                if now != last:
                    commits, last = commits + 1, now
                    if commits >= target:
                        break
                await asyncio.sleep(0.01)
            if commits >= target and kills < 12:
                await asyncio.sleep(rng.uniform(0, 0.05))
                if proc.poll() is None:
                    proc.kill()
                    kills += 1
        finally:
            _, err = proc.communicate(timeout=600)
        left = await missing_rows(conn)
        assert left <= behind[-1], "a restart lost ground"
        assert await _cursor(conn) != before or left == 0, "a run made no progress"
        behind.append(left)
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, err.decode()[-2000:]
        assert len(behind) < 40, f"no end in sight: {behind}"
    assert kills >= 5 and behind[-1] == 0
    await _final_check(dsn, backend, conn, data)
    print(json.dumps({"backend": backend, "kills": kills, "rows_behind_after_each": behind}))


async def _cursor(conn: asyncpg.Connection) -> tuple | None:
    row = await conn.fetchrow(
        "SELECT updated_at, id, checked_updated_at, checked_id, read_at FROM wfa.cursors "
        "WHERE name = 'executions'"
    )
    return None if row is None else tuple(row.values())


async def test_a_stale_leader_commits_nothing(store_dsn, conn):
    backend, dsn = store_dsn
    data = await _fill(conn, 3000, seed=2)
    cfg = config_from_dict(
        {"source": {"dsn": dsn}, "store": {"backend": backend}, "exporter": {"batch_size": 200}}
    )
    stale = ExporterService(cfg)
    await stale.open()
    try:
        await stale.poll_once()
        assert stale.state.is_leader
        counters = await conn.fetch("SELECT * FROM wfa.counters ORDER BY 1, 2, 3, 4, 5, 6")
        cursors = await conn.fetch("SELECT * FROM wfa.cursors ORDER BY name")
        await _bulk_exit(conn, data)
        # another replica took over while this one's lock session looks alive to it
        await conn.execute("UPDATE wfa.leadership SET epoch = epoch + 1, holder = 'other:1'")
        assert await stale.poll_once() is None
        assert not stale.state.is_leader
        assert await conn.fetch("SELECT * FROM wfa.counters ORDER BY 1, 2, 3, 4, 5, 6") == counters
        assert await conn.fetch("SELECT * FROM wfa.cursors ORDER BY name") == cursors
        # it takes the lock again (a new epoch) and reads everything from the store
        result = await stale.poll_once()
        assert result is not None and result.written > 0 and stale.state.is_leader
    finally:
        await stale.close()
    await _final_check(dsn, backend, conn, data)


_RESTORED = (
    "counters", "cursors", "execution_steps", "executions", "invalidations", "rejected_rows",
    "step_runs", "workflow_events", "workflow_steps", "workflows", "ingest_status",
)


async def test_a_store_restored_under_a_running_exporter(store_dsn, conn):
    """The store goes back to a backup taken before the exporter's hold (no ingested rows,
    the leadership epoch one lower): the next hold hands out the very epoch the exporter held
    before, and it still reads everything again instead of trusting what it remembered."""
    backend, dsn = store_dsn
    data = await _fill(conn, 1500, seed=5)
    cfg = config_from_dict({"source": {"dsn": dsn}, "store": {"backend": backend}})
    svc = ExporterService(cfg)
    await svc.open()
    try:
        first = await svc.poll_once()
        assert first is not None and first.written == len(data.executions)
        epoch = await conn.fetchval("SELECT epoch FROM wfa.leadership")
        # the restore: the ingested rows are gone, the epoch is the backup's, the lock
        # session was cut by the store's restart
        await conn.execute(
            "TRUNCATE " + ", ".join(f"wfa.{t}" for t in _RESTORED) + "; "
            "UPDATE wfa.leadership SET epoch = epoch - 1"
        )
        await kill_lock_sessions(conn)

        async def lock_lost() -> bool:
            return not svc.leadership.held

        await wait_for(lock_lost, 10, what="the exporter to see its lock session gone")
        again = await svc.poll_once()
        assert svc.leadership.epoch == epoch, "the restored store handed out the same epoch"
        assert again is not None and again.written == len(data.executions), again
        assert await conn.fetchval("SELECT count(*) FROM wfa.executions") == len(data.executions)
    finally:
        await svc.close()
    await _final_check(dsn, backend, conn, data)


async def test_takeover_waits_for_the_batch_in_flight(db_dsn):
    conn = await asyncpg.connect(db_dsn)
    cfg = config_from_dict({"source": {"dsn": db_dsn}, "store": {"backend": "postgres"}})
    svc = ExporterService(cfg)
    await svc.open()  # the schema
    await svc.close()
    changes: list[tuple[str, bool]] = []
    a = Leadership(db_dsn, 42, lambda held: changes.append(("a", held)))
    b = Leadership(db_dsn, 42, lambda held: changes.append(("b", held)))
    try:
        assert await a.acquire() and a.epoch == 1
        assert not await b.acquire()
        batch = conn.transaction()
        await batch.start()
        await a.fence(conn)  # a batch of `a` in flight holds the epoch row
        assert await kill_lock_sessions(conn) == 1
        await wait_for(_async(lambda: ("a", False) in changes), 5, 0.01, "the lost flag")
        taking = asyncio.create_task(b.acquire())
        await asyncio.sleep(0.5)
        assert not taking.done(), "the takeover did not wait for the batch in flight"
        await batch.commit()
        assert await asyncio.wait_for(taking, 10) and b.epoch == 2
        with pytest.raises(Exception, match="lock session is closed"):
            await a.fence(conn)
    finally:
        await a.release()
        await b.release()
        await conn.close()
    assert changes == [("a", True), ("a", False), ("b", True), ("b", False)]


def _async(fn):
    async def call():
        return fn()

    return call


@pytest.mark.slow
async def test_reconcile_command_and_a_running_exporter(db_dsn, conn_pg, tmp_path: Path):
    conn = conn_pg
    data = await _fill(conn, 2000, seed=9)
    fleet = Fleet(db_dsn, "postgres", tmp_path, {"poll_interval": "300ms", "overlap": "1s"})
    try:
        running = fleet.start()
        await wait_for(lambda: _caught_up(conn), 120, 0.3, "the first ingest")
        victim = next(e for e in data.executions if e.status == "active")
        back = victim.updated_at - timedelta(minutes=3)
        await conn.execute(
            "UPDATE workflow_executions SET status = 'exited', exited_at = $2, "
            "exit_reason = 'by-hand', current_step_id = NULL, updated_at = $3 WHERE id = $1",
            victim.id,
            victim.updated_at,
            back,
        )
        victim.status, victim.exited_at, victim.exit_reason = "exited", victim.updated_at, "by-hand"
        victim.current_step_id, victim.updated_at = None, back
        config = str(fleet.config(running.port))
        cmd = [sys.executable, "-m", "exporter", "reconcile", "--config", config]
        refused = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert refused.returncode == 1 and "--take-over" in refused.stderr
        epoch = (await leader(conn))[1]
        took = subprocess.run([*cmd, "--take-over"], capture_output=True, text=True, timeout=120)
        assert took.returncode == 0, took.stderr[-2000:]
        out = json.loads(took.stdout)
        assert out["healed"] == {"set_back": 1} and out["healed_total"] == 1
        assert out["still_differing"] == 0
        # the running exporter leads again, at a newer epoch than the command's
        await wait_for(lambda: _led(conn, epoch + 1), 30, 0.1, "the exporter to lead again")
        assert (await leader(conn))[0] == running.pid
        health = await running.healthz()
        assert health is not None and health["leader"]
        again = subprocess.run([*cmd, "--take-over"], capture_output=True, text=True, timeout=120)
        assert json.loads(again.stdout)["healed_total"] == 0
        await asyncio.sleep(2.5)  # a rollup refresh
    finally:
        fleet.stop_all()
    await _final_check(db_dsn, "postgres", conn, data)


@pytest.fixture
async def conn_pg(db_dsn):
    """A connection to a fresh PostgreSQL-backend test database."""
    c = await asyncpg.connect(db_dsn)
    yield c
    await c.close()
