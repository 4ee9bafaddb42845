"""Workload generator: determinism, invariants of the model, ground truth, writer."""

from __future__ import annotations

import copy
import json
from collections import Counter
from datetime import UTC, datetime, timedelta
from random import Random
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from exporter.histogram import bucket_le
from exporter.simulate import (
    ATTEMPT_STATUSES,
    EXECUTION_STATUSES,
    SimData,
    SimExecution,
    advance,
    create_source_schema,
    execution_record,
    generate,
    insert_bad_rows,
    profile_for,
    simulate_execution,
    upsert_executions,
    workflow_record,
    write,
)
from exporter.simulate.model import MS
from exporter.simulate.writer import EXECUTION_COLUMNS, WORKFLOW_COLUMNS
from tests.kit.truth import Truth, bucket_start

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
EVER = (datetime(2000, 1, 1, tzinfo=UTC), datetime(2100, 1, 1, tzinfo=UTC))


@pytest.fixture(scope="module")
def data() -> SimData:
    """2,000 executions over two weeks."""
    return generate(executions=2000, days=14, workflows=5, tenants=2, seed=7, now=NOW)


def _timestamps(ex: SimExecution) -> list[datetime]:
    out = [ex.enrolled_at, ex.updated_at]
    out += [t for t in (ex.completed_at, ex.converted_at, ex.exited_at) if t is not None]
    for a in ex.step_progress:
        out.append(a.entered_at)
        if a.finished_at is not None:
            out.append(a.finished_at)
    return out


def _latest(ex: SimExecution) -> datetime:
    return max(_timestamps(ex))


def check_execution(ex: SimExecution, data: SimData) -> None:
    """Every invariant the generator promises for one execution."""
    wf = data.workflow(ex.workflow_id)
    order = {sid: k for k, sid in enumerate(wf.step_ids)}
    assert ex.tenant_id == wf.tenant_id
    assert ex.status in EXECUTION_STATUSES
    for t in _timestamps(ex):
        assert t.utcoffset() == timedelta(0)
        assert t.microsecond % 1000 == 0
        assert t <= data.now
    assert ex.updated_at == _latest(ex)
    progress = ex.step_progress
    assert progress and progress[0].step_id == wf.step_ids[0]
    assert progress[0].entered_at == ex.enrolled_at
    prev = None
    for a in progress:
        assert a.status in ATTEMPT_STATUSES
        assert (a.finished_at is None) == (a.status == "running")
        assert (a.error is not None) == (a.status == "failed")
        if a.finished_at is not None:
            assert a.finished_at >= a.entered_at
        if a.status == "skipped":
            assert a.finished_at == a.entered_at
        if prev is not None:
            assert a.entered_at == prev.finished_at
            if prev.status == "failed":
                assert a.step_id == prev.step_id  # a retry
            else:
                assert order[a.step_id] == order[prev.step_id] + 1
        prev = a
    last = progress[-1]
    running = [a for a in progress if a.status == "running"]
    if ex.status == "active":
        assert running == [last]
        assert ex.current_step_id == last.step_id
        assert ex.completed_at is ex.exited_at is ex.exit_reason is None
    else:
        assert not running
    if ex.status == "completed":
        assert last.step_id == wf.step_ids[-1] and last.status in ("succeeded", "skipped")
        assert ex.completed_at == last.finished_at
        assert ex.current_step_id is None and ex.exited_at is None
    else:
        assert ex.completed_at is None
    if ex.status == "exited":
        assert ex.exited_at == last.finished_at and ex.exit_reason
        assert ex.current_step_id is None and last.status in ("succeeded", "skipped")
    else:
        assert ex.exited_at is None and ex.exit_reason is None
    if ex.status == "failed":
        assert last.status == "failed"
        assert ex.failed_at == last.finished_at
        assert ex.current_step_id == last.step_id
    else:
        assert ex.failed_at is None
    if ex.converted_at is not None:
        assert ex.enrolled_at < ex.converted_at
        end = ex.completed_at or ex.exited_at or ex.failed_at or data.now
        assert ex.converted_at <= end


def test_deterministic_for_a_seed() -> None:
    a = generate(executions=300, days=3, workflows=3, seed=11, now=NOW)
    b = generate(executions=300, days=3, workflows=3, seed=11, now=NOW)
    c = generate(executions=300, days=3, workflows=3, seed=12, now=NOW)
    assert a == b
    assert a.executions != c.executions


def test_invariants_hold_for_every_execution(data: SimData) -> None:
    start = NOW - timedelta(days=14)
    assert len(data.executions) == 2000
    for ex in data.executions:
        assert start <= ex.enrolled_at < NOW
        check_execution(ex, data)
    for wf in data.workflows:
        assert 3 <= len(wf.steps) <= 8
        assert wf.updated_at <= NOW
        assert len(set(wf.step_ids)) == len(wf.steps)
    assert len({ex.id for ex in data.executions}) == 2000
    assert {wf.tenant_id for wf in data.workflows} == {"tenant-1", "tenant-2"}


def test_every_kind_of_outcome_occurs(data: SimData) -> None:
    statuses = Counter(ex.status for ex in data.executions)
    assert set(statuses) == set(EXECUTION_STATUSES)
    attempts = Counter(a.status for ex in data.executions for a in ex.step_progress)
    assert set(attempts) == set(ATTEMPT_STATUSES)
    retried = [
        ex
        for ex in data.executions
        if any(
            a.status == "failed" and b.step_id == a.step_id
            for a, b in zip(ex.step_progress, ex.step_progress[1:], strict=False)
        )
    ]
    assert retried
    assert sum(ex.converted_at is not None for ex in data.executions) > 20
    assert any(ex.converted_at is not None and ex.status == "active" for ex in data.executions)
    reasons = Counter(ex.exit_reason for ex in data.executions if ex.exit_reason)
    assert {"unsubscribed", "goal_met_elsewhere", "manual_removal"} <= set(reasons)
    errors = {a.error for ex in data.executions for a in ex.step_progress if a.error}
    assert len(errors) >= 3
    types = {s.action_type for wf in data.workflows for s in wf.steps}
    assert {"send_email", "wait", "branch"} <= types
    waits = [
        a.duration_ms
        for ex in data.executions
        for a in ex.step_progress
        if a.status == "succeeded" and a.step_id in _step_ids_of_type(data, "wait")
    ]
    assert min(waits) >= 3_600_000


def _step_ids_of_type(data: SimData, action_type: str) -> set[str]:
    return {s.id for wf in data.workflows for s in wf.steps if s.action_type == action_type}


def test_json_form_of_attempts(data: SimData) -> None:
    ex = next(e for e in data.executions if e.status == "active")
    doc = json.loads(json.dumps(ex.step_progress_json()))
    assert [d["step_id"] for d in doc] == [a.step_id for a in ex.step_progress]
    first = doc[0]
    assert set(first) == {"step_id", "entered_at", "finished_at", "status", "error"}
    assert first["entered_at"].endswith("+00:00")
    assert datetime.fromisoformat(first["entered_at"]) == ex.step_progress[0].entered_at
    assert doc[-1]["finished_at"] is None and doc[-1]["status"] == "running"


def test_records_match_the_model(data: SimData) -> None:
    for ex in data.executions[:300]:
        rec = execution_record(ex)
        assert len(rec) == len(EXECUTION_COLUMNS)
        assert json.loads(rec[EXECUTION_COLUMNS.index("step_progress")]) == ex.step_progress_json()
        assert rec[EXECUTION_COLUMNS.index("updated_at")] == ex.updated_at
    wf = data.workflows[0]
    rec = workflow_record(wf)
    assert json.loads(rec[WORKFLOW_COLUMNS.index("steps")]) == [
        {"id": s.id, "name": s.name, "action_type": s.action_type} for s in wf.steps
    ]


def test_simulate_execution_is_reusable() -> None:
    data = generate(executions=1, days=1, workflows=2, seed=3, now=NOW)
    wf = data.workflows[1]
    enrolled = NOW - timedelta(days=2, microseconds=1500)
    one = simulate_execution(Random(5), wf, enrolled, NOW, execution_id="x-1", contact_id="c-1")
    two = simulate_execution(
        Random(5),
        wf,
        enrolled,
        NOW,
        execution_id="x-1",
        contact_id="c-1",
        profile=profile_for(wf),
    )
    assert one == two
    assert one.enrolled_at == NOW - timedelta(days=2, milliseconds=2)
    check_execution(one, data)
    fresh = simulate_execution(Random(5), wf, NOW, NOW, execution_id="x-2", contact_id="c-2")
    assert fresh.status == "active" and fresh.updated_at == NOW
    with pytest.raises(ValueError):
        simulate_execution(Random(5), wf, NOW + MS, NOW, execution_id="x", contact_id="c")


def test_generate_rejects_naive_now() -> None:
    with pytest.raises(ValueError):
        generate(executions=1, days=1, workflows=1, now=datetime(2026, 1, 1))


def test_cohort_funnel_identity(data: SimData) -> None:
    truth = Truth(data)
    ranges = [
        EVER,
        (NOW - timedelta(days=3), NOW),
        (NOW - timedelta(days=10), NOW - timedelta(days=9)),
    ]
    for wf in data.workflows:
        for start, end in ranges:
            f = truth.cohort_funnel(wf.id, start, end)
            steps = f["steps"]
            assert [s["step_id"] for s in steps] == wf.step_ids
            # every execution enters step 1 at enrollment
            assert steps[0]["reached"] == f["enrolled"]
            assert all(s["dropped"] >= 0 for s in steps)
            total = sum(s["dropped"] + s["in_progress"] for s in steps) + f["completed"]
            assert total == f["enrolled"]
            # drop-off is exactly the exits and failures
            assert sum(s["dropped"] for s in steps) == f["exited"] + f["failed"]
            assert sum(s["in_progress"] for s in steps) == f["in_progress"]
            assert f["enrolled"] == f["completed"] + f["exited"] + f["failed"] + f["in_progress"]
            reached = [s["reached"] for s in steps]
            assert reached == sorted(reached, reverse=True)


def test_conversion_window_narrows_cohort_conversions(data: SimData) -> None:
    wf = max(data.workflows, key=lambda w: len(Truth(data).executions(w.id)))
    wide = Truth(data).cohort_funnel(wf.id, *EVER)["converted"]
    narrow = Truth(data, conversion_window=timedelta(hours=1)).cohort_funnel(wf.id, *EVER)
    expected = sum(
        ex.converted_at is not None and ex.converted_at - ex.enrolled_at <= timedelta(hours=1)
        for ex in data.executions
        if ex.workflow_id == wf.id
    )
    assert narrow["converted"] == expected < wide


def test_activity_and_totals_agree(data: SimData) -> None:
    truth = Truth(data)
    for wf in data.workflows:
        execs = [ex for ex in data.executions if ex.workflow_id == wf.id]
        act = truth.activity(wf.id, *EVER)
        tot = truth.totals(wf.id)
        assert act["enrollments"] == len(execs) == tot["enrollments"]
        assert act["completions"] == sum(ex.status == "completed" for ex in execs)
        assert act["failures"] == sum(ex.status == "failed" for ex in execs) == tot["failures"]
        assert act["exits"] == sum(act["exits_by_reason"].values()) == tot["exits"]
        assert act["exits_by_reason"] == tot["exits_by_reason"]
        assert act["conversions"] == tot["conversions"]
        assert tot["time_to_complete"]["count"] == act["completions"]
        assert sum(tot["time_to_convert"]["buckets"].values()) == act["conversions"]
        funnel = truth.activity_funnel(wf.id, *EVER)
        actions = truth.actions(wf.id, *EVER)
        for sid in wf.step_ids:
            row = actions[sid]
            assert row["executions"] == funnel[sid] == tot["steps"][sid]["attempts"]
            outcomes = row["succeeded"] + row["failed"] + row["skipped"] + row["running"]
            assert outcomes == row["executions"]
            assert row["duration_count"] == row["executions"] - row["running"]
            assert sum(row["duration_buckets"].values()) == row["duration_count"]
            assert sum(row["errors"].values()) == row["failed"]


def test_activity_ranges_are_half_open(data: SimData) -> None:
    truth = Truth(data)
    ex = next(e for e in data.executions if e.status == "completed")
    t = ex.completed_at
    assert t is not None
    at = [e for e in data.executions if e.workflow_id == ex.workflow_id and e.completed_at == t]
    assert truth.activity(ex.workflow_id, t, t + MS)["completions"] == len(at)
    assert truth.activity(ex.workflow_id, t - MS, t)["completions"] == 0


def test_actions_durations_are_exact(data: SimData) -> None:
    truth = Truth(data)
    wf = data.workflows[0]
    start, end = NOW - timedelta(days=5), NOW - timedelta(days=1)
    actions = truth.actions(wf.id, start, end)
    for sid in wf.step_ids:
        attempts = [
            a
            for ex in data.executions
            for a in ex.step_progress
            if a.step_id == sid and start <= a.entered_at < end
        ]
        done = [a for a in attempts if a.finished_at is not None]
        ms = [(a.finished_at - a.entered_at) // MS for a in done]
        assert actions[sid]["executions"] == len(attempts)
        assert actions[sid]["duration_ms_sum"] == sum(ms)
        assert actions[sid]["duration_buckets"] == dict(Counter(bucket_le(m / 1000) for m in ms))


@pytest.mark.parametrize("granularity", ["hour", "day", "week", "month"])
@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_activity_series_sums_to_activity(data: SimData, granularity: str, tz: str) -> None:
    truth = Truth(data)
    start, end = NOW - timedelta(days=9, hours=5), NOW - timedelta(hours=3)
    zone = ZoneInfo(tz)
    for wf in data.workflows[:2]:
        series = truth.activity_series(wf.id, start, end, granularity, tz)
        act = truth.activity(wf.id, start, end)
        for field in ("enrollments", "completions", "conversions", "exits", "failures"):
            assert sum(row[field] for row in series.values()) == act[field]
        for bucket, row in series.items():
            assert any(row.values())
            assert bucket.tzinfo is not None and bucket.utcoffset() == timedelta(0)
            local = bucket.astimezone(zone)
            assert (local.minute, local.second) == (0, 0)
            if granularity != "hour":
                assert local.hour == 0
            if granularity == "week":
                assert local.weekday() == 0
            if granularity == "month":
                assert local.day == 1


def test_bucket_start_in_time_zones() -> None:
    t = datetime(2026, 3, 8, 3, 30, tzinfo=UTC)  # 22:30 on Mar 7 in New York (EST)
    assert bucket_start(t, "day", "America/New_York") == datetime(2026, 3, 7, 5, tzinfo=UTC)
    assert bucket_start(t, "week", "UTC") == datetime(2026, 3, 2, tzinfo=UTC)
    assert bucket_start(t, "month", "America/New_York") == datetime(2026, 3, 1, 5, tzinfo=UTC)
    assert bucket_start(t, "hour", "Asia/Kolkata") == t  # 09:00 IST
    ist = datetime(2026, 3, 8, 3, 10, tzinfo=UTC)  # 08:40 IST
    assert bucket_start(ist, "hour", "Asia/Kolkata") == datetime(2026, 3, 8, 2, 30, tzinfo=UTC)
    assert bucket_start(ist, "hour", "UTC") == datetime(2026, 3, 8, 3, tzinfo=UTC)
    after_dst = datetime(2026, 3, 9, 12, tzinfo=UTC)  # EDT from Mar 8
    assert bucket_start(after_dst, "day", "America/New_York") == datetime(2026, 3, 9, 4, tzinfo=UTC)


def test_advance_progresses_only_active_executions() -> None:
    data = generate(executions=1500, days=7, workflows=4, seed=21, now=NOW)
    before = copy.deepcopy(data)
    new_now = NOW + timedelta(days=2)
    changed = advance(data, new_now, seed=99)
    assert data.now == new_now
    changed_ids = {ex.id for ex in changed}
    assert changed and all(ex in data.executions for ex in changed)
    old_by_id = {ex.id: ex for ex in before.executions}
    moved = Counter()
    for ex in data.executions:
        old = old_by_id[ex.id]
        check_execution(ex, data)
        if ex.id not in changed_ids:
            assert ex == old
            continue
        assert old.status == "active"
        assert ex.updated_at > old.updated_at
        assert ex.updated_at > NOW
        # history is kept; the running attempt is the one that moves on
        n = len(old.step_progress) - 1
        assert ex.step_progress[:n] == old.step_progress[:n]
        head, was = ex.step_progress[n], old.step_progress[n]
        assert (head.step_id, head.entered_at) == (was.step_id, was.entered_at)
        assert head.finished_at is None or head.finished_at > NOW
        if old.converted_at is not None:
            assert ex.converted_at == old.converted_at
        moved[ex.status] += 1
    assert moved["completed"] > 0
    assert len(changed) <= sum(ex.status == "active" for ex in before.executions)
    again = advance(data, new_now, seed=100)
    assert again == []


def test_advance_is_deterministic() -> None:
    a = generate(executions=400, days=5, workflows=3, seed=2, now=NOW)
    b = copy.deepcopy(a)
    later = NOW + timedelta(hours=30)
    assert [e.id for e in advance(a, later, 4)] == [e.id for e in advance(b, later, 4)]
    assert a == b
    with pytest.raises(ValueError):
        advance(a, NOW, 4)


def test_to_json_writes_expected_numbers(data: SimData, tmp_path) -> None:
    truth = Truth(data, conversion_window=timedelta(days=3))
    path = tmp_path / "truth.json"
    truth.to_json(path, days=14)
    doc = json.loads(path.read_text())
    assert doc["conversion_window_seconds"] == 3 * 86400
    assert doc["range"]["from"] == "2026-02-15T00:00:00+00:00"
    assert doc["range"]["to"] == "2026-03-02T00:00:00+00:00"
    assert set(doc["workflows"]) == {wf.id for wf in data.workflows}
    enrolled = 0
    for wf_id, w in doc["workflows"].items():
        assert len(w["days"]) == 15
        enrolled += sum(d["cohort"]["enrolled"] for d in w["days"])
        assert sum(d["activity"]["enrollments"] for d in w["days"]) == w["totals"]["enrollments"]
        day = w["days"][5]
        start = datetime.fromisoformat(day["from"])
        assert day["cohort"] == truth.cohort_funnel(wf_id, start, start + timedelta(days=1))
        for row in w["actions"].values():
            assert all(k == "+Inf" or float(k) > 0 for k in row["duration_buckets"])
    assert enrolled == len(data.executions)
    report = truth.report(14)
    first, stop = (datetime.fromisoformat(report["range"][k]) for k in ("from", "to"))
    for wf in data.workflows[:2]:
        w = report["workflows"][wf.id]
        assert w["actions"] == truth.actions(wf.id, first, stop)
        assert w["time_to_convert"] == truth.time_to_convert(wf.id, first, stop)
        narrow = truth.report(3)["workflows"][wf.id]
        start = datetime.fromisoformat(narrow["days"][0]["from"])
        assert narrow["actions"] == truth.actions(wf.id, start, stop)
        assert narrow["time_to_complete"] == truth.time_to_complete(wf.id, start, stop)


async def test_write_and_read_back(db_dsn: str) -> None:
    data = generate(executions=1000, days=5, workflows=3, seed=5, now=NOW)
    conn = await asyncpg.connect(db_dsn)
    try:
        await create_source_schema(conn)
        await create_source_schema(conn)  # idempotent
        assert await write(conn, data, batch_size=300) == (3, 1000)
        assert await conn.fetchval("SELECT count(*) FROM workflow_executions") == 1000
        assert await conn.fetchval("SELECT count(*) FROM workflows") == 3
        ex = next(e for e in data.executions if len(e.step_progress) > 2)
        row = await conn.fetchrow(
            "SELECT status, updated_at, step_progress::text AS p FROM workflow_executions "
            "WHERE id = $1",
            ex.id,
        )
        assert (row["status"], row["updated_at"]) == (ex.status, ex.updated_at)
        got = json.loads(row["p"])
        assert [datetime.fromisoformat(a["entered_at"]) for a in got] == [
            a.entered_at for a in ex.step_progress
        ]
        changed = advance(data, NOW + timedelta(days=1), seed=1)
        assert await upsert_executions(conn, changed) == len(changed) > 0
        n_active = await conn.fetchval(
            "SELECT count(*) FROM workflow_executions WHERE status = 'active'"
        )
        assert n_active == sum(e.status == "active" for e in data.executions)
        assert await conn.fetchval("SELECT max(updated_at) FROM workflow_executions") > NOW
        bad = await insert_bad_rows(conn, [wf.id for wf in data.workflows])
        assert sorted(Counter(bad.values()).items()) == [
            ("finished_before_entered", 1),
            ("invalid_step_progress", 3),
            ("unknown_status", 1),
            ("unknown_workflow", 1),
        ]
        kinds = await conn.fetch(
            "SELECT id, jsonb_typeof(step_progress) AS t FROM workflow_executions "
            "WHERE id = ANY($1::text[])",
            list(bad),
        )
        assert len(kinds) == len(bad)
        assert {r["t"] for r in kinds} == {"string", "array"}
    finally:
        await conn.close()


async def test_renamed_source_tables(db_dsn: str) -> None:
    data = generate(executions=50, days=2, workflows=2, seed=8, now=NOW)
    conn = await asyncpg.connect(db_dsn)
    try:
        await conn.execute("CREATE SCHEMA app")
        names = {"executions_table": "app.Runs", "workflows_table": "app.Flow Defs"}
        await create_source_schema(conn, *names.values())
        await write(conn, data, **names)
        assert await conn.fetchval('SELECT count(*) FROM app."Runs"') == 50
        assert await conn.fetchval('SELECT count(*) FROM app."Flow Defs"') == 2
        bad = await insert_bad_rows(conn, [data.workflows[0].id], **names)
        assert await conn.fetchval('SELECT count(*) FROM app."Runs"') == 50 + len(bad)
    finally:
        await conn.close()
