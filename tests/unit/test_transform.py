"""transform.py on its own: one source row (and its stored state) in, store rows and counter
deltas out. Times derive from now; nothing touches a database."""

from __future__ import annotations

import json
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from exporter.histogram import bucket_le
from exporter.source.reader import EXECUTION_FIELDS, SourceExecution
from exporter.store.rows import EXECUTIONS, STEP_RUNS, WORKFLOW_EVENTS, ExecutionRow
from exporter.transform import (
    LE_LABELS,
    Batch,
    OldExecution,
    Plausible,
    Rejected,
    WorkflowInfo,
    apply_execution,
    hour_of,
    hour_start,
    parse_progress,
    parse_steps,
)

NOW = datetime.now(UTC).replace(microsecond=0)
T0 = NOW - timedelta(days=2)
WINDOW = Plausible(NOW - timedelta(days=3650), NOW + timedelta(days=1))
WF = WorkflowInfo("wf-1", "t1", {"s1": "send_email", "s2": "webhook"})


def progress(*attempts: tuple[str, datetime, datetime | None, str, str | None]) -> str:
    """step_progress JSON of (step, entered, finished, status, error) attempts."""
    return json.dumps(
        [
            {
                "step_id": s,
                "entered_at": e.isoformat(),
                "finished_at": f.isoformat() if f else None,
                "status": st,
                "error": err,
            }
            for s, e, f, st, err in attempts
        ]
    )


def row(**changes: object) -> SourceExecution:
    """An active execution of WF enrolled at T0 that entered s1 a minute later."""
    base: dict[str, object] = {
        "id": "e1",
        "tenant_id": "t1",
        "workflow_id": "wf-1",
        "contact_id": "c1",
        "status": "active",
        "enrolled_at": T0,
        "completed_at": None,
        "converted_at": None,
        "exited_at": None,
        "exit_reason": None,
        "failed_at": None,
        "current_step_id": "s1",
        "step_progress": progress(("s1", T0 + timedelta(minutes=1), None, "running", None)),
        "updated_at": T0 + timedelta(minutes=1),
    }
    base.update(changes)
    return SourceExecution(**base)  # type: ignore[arg-type]


def stored(batch: Batch) -> OldExecution:
    """What the store holds after `batch` (as storeio.old_states reads it back)."""
    (e,) = batch.executions
    events = {ev.event: ev.occurred_at for ev in batch.events_new + batch.events_upd}
    times = {k: events.get(k) for k in ("enrolled", "completed", "converted", "exited", "failed")}
    return OldExecution(
        e.enrolled_at, e.source_updated_at, times, e.exit_reason, e.failed_at, list(e.attempts)
    )


def test_source_fields_are_what_the_reader_selects() -> None:
    assert tuple(SourceExecution.__dataclass_fields__) == EXECUTION_FIELDS
    assert EXECUTION_FIELDS[0] == "id" and EXECUTION_FIELDS[-1] == "updated_at"


def test_row_types_drive_the_copy_columns_and_the_upsert() -> None:
    assert EXECUTIONS.columns == ExecutionRow._fields
    sql = EXECUTIONS.upsert_sql
    assert sql.count("$") == len(ExecutionRow._fields) == 15
    assert "string_to_array(u.attempts" in sql
    assert "ON CONFLICT (execution_id, enrolled_at) DO UPDATE SET tenant_id" in sql
    # An event's or attempt's tenant and workflow never change for its key.
    for table in (WORKFLOW_EVENTS, STEP_RUNS):
        assert "tenant_id = excluded" not in table.upsert_sql
    bound = EXECUTIONS.bind([ExecutionRow(*(["x"] * 13), ["a", "b"], "u")])
    assert bound[13] == ["a\x1eb"] and len(bound) == 15


def test_a_new_execution_writes_its_rows_and_counts_once() -> None:
    batch = Batch()
    apply_execution(batch, row(), WF, None, None, WINDOW)
    (e,) = batch.executions
    assert isinstance(e, ExecutionRow)
    assert (e.execution_id, e.status, e.current_step_id) == ("e1", "active", "s1")
    assert batch.executions_new == {"e1"}
    assert [ev.event for ev in batch.events_new] == ["enrolled"]
    (run,) = batch.runs_new
    assert (run.step_id, run.action_type, run.status, run.duration_ms) == (
        "s1", "send_email", "running", None,
    )
    assert [s.step_id for s in batch.steps_new] == ["s1"]
    assert batch.deltas()[("enrollments", "t1", "wf-1", "", "", "")] == 1
    assert batch.deltas()[("step_runs", "t1", "wf-1", "s1", "send_email", "")] == 1
    assert ("cohort", hour_of(T0)) in batch.invalid
    assert hour_start(hour_of(T0)) == T0.replace(minute=0, second=0)
    assert batch.touched == {"wf-1"}


def test_the_same_version_again_is_skipped() -> None:
    first = Batch()
    apply_execution(first, row(), WF, None, None, WINDOW)
    again = Batch()
    apply_execution(again, row(), WF, stored(first), None, WINDOW)
    assert again.skipped == 1 and not again.executions and not again.deltas()


def test_progress_updates_diff_against_the_stored_state() -> None:
    first = Batch()
    apply_execution(first, row(), WF, None, None, WINDOW)
    entered = T0 + timedelta(minutes=1)
    finished = entered + timedelta(seconds=90)
    done = Batch()
    apply_execution(
        done,
        row(
            status="completed",
            completed_at=finished + timedelta(minutes=1),
            current_step_id=None,
            step_progress=progress(
                ("s1", entered, finished, "failed", "smtp 550"),
                ("s2", finished, finished + timedelta(seconds=1), "succeeded", None),
            ),
            updated_at=finished + timedelta(minutes=1),
        ),
        WF,
        stored(first),
        None,
        WINDOW,
    )
    (upd,) = done.runs_upd
    assert (upd.step_id, upd.status, upd.duration_ms) == ("s1", "failed", 90_000)
    assert upd.error == "smtp 550"
    assert [r.step_id for r in done.runs_new] == ["s2"]
    c = done.deltas()
    # s1 was counted as an attempt already: only its outcome and duration are new.
    assert ("step_runs", "t1", "wf-1", "s1", "send_email", "") not in c
    assert c[("step_outcomes", "t1", "wf-1", "s1", "send_email", "failed")] == 1
    assert c[("step_duration_sum_ms", "t1", "wf-1", "s1", "send_email", "")] == 90_000
    le = LE_LABELS[bucket_le(90.0)]
    assert c[("step_duration_bucket", "t1", "wf-1", "s1", "send_email", le)] == 1
    assert c[("completions", "t1", "wf-1", "", "", "")] == 1
    (completed,) = [e for e in done.events_upd if e.event == "completed"]
    assert completed.duration_ms == (completed.occurred_at - T0) // timedelta(milliseconds=1)
    assert done.executions[0].current_step_id is None
    assert not done.executions_new


@pytest.mark.parametrize("step", ["s1", "s\x1f1"])
def test_an_unchanged_attempt_is_not_rewritten_when_another_is_added(step: str) -> None:
    wf = WorkflowInfo("wf-1", "t1", {step: "send_email", "s2": "webhook"})
    entered = T0 + timedelta(minutes=1)
    finished = entered + timedelta(seconds=5)
    first = Batch()
    s1 = (step, entered, finished, "succeeded", None)
    apply_execution(first, row(step_progress=progress(s1), current_step_id=step), wf,
                    None, None, WINDOW)
    later = Batch()
    s2 = ("s2", finished, None, "running", None)
    apply_execution(
        later,
        row(step_progress=progress(s1, s2), current_step_id="s2", updated_at=finished),
        wf, stored(first), None, WINDOW,
    )
    assert [r.step_id for r in later.runs_new] == ["s2"]
    assert not later.runs_upd and not later.runs_del
    assert [s.step_id for s in later.steps_new] == ["s2"] and not later.steps_del
    assert later.deltas()[("step_runs", "t1", "wf-1", "s2", "webhook", "")] == 1
    assert not any(k[3] == step for k in later.deltas())
    # The stored signatures still read back: a later change of the first attempt is an update.
    again = Batch()
    s1_failed = (step, entered, finished, "failed", "bounce")
    apply_execution(
        again,
        row(step_progress=progress(s1_failed, s2), current_step_id="s2",
            updated_at=finished + timedelta(seconds=1)),
        wf, stored(later), None, WINDOW,
    )
    assert [r.step_id for r in again.runs_upd] == [step]
    assert not again.runs_new and not again.runs_del and not again.steps_new
    assert again.deltas()[("step_outcomes", "t1", "wf-1", step, "send_email", "failed")] == 1


def test_a_vanished_attempt_and_a_changed_exit_are_deleted_and_invalidated() -> None:
    entered = T0 + timedelta(minutes=1)
    first = Batch()
    apply_execution(
        first,
        row(status="exited", exited_at=entered, exit_reason="unsubscribed",
            current_step_id=None, updated_at=entered),
        WF, None, None, WINDOW,
    )
    later = entered + timedelta(hours=3)
    second = Batch()
    apply_execution(
        second,
        row(status="exited", exited_at=later, exit_reason="bounced", current_step_id=None,
            step_progress="[]", updated_at=later),
        WF, stored(first), None, WINDOW,
    )
    assert second.runs_del == [("e1", "s1", entered)]
    assert ("e1", "exited", entered) in second.events_del
    assert ("events", hour_of(entered)) in second.invalid
    assert ("events", hour_of(later)) in second.invalid
    assert second.steps_del == [("e1", "s1", T0)]
    # The exit was counted when first seen; moving it counts nothing again.
    assert not any(k[0] == "exits" for k in second.deltas())


def test_conversion_window_decides_converted_in_window() -> None:
    late = T0 + timedelta(days=1)
    for window, expected in ((timedelta(hours=1), False), (timedelta(days=2), True), (None, True)):
        batch = Batch()
        apply_execution(batch, row(converted_at=late, updated_at=late), WF, None, window, WINDOW)
        assert batch.executions[0].converted_in_window is expected


@pytest.mark.parametrize(
    ("changes", "reason"),
    [
        ({"status": "paused"}, "unknown_status"),
        ({"tenant_id": "t2"}, "tenant_mismatch"),
        ({"completed_at": T0 - timedelta(seconds=1)}, "before_enrolled"),
        ({"enrolled_at": datetime(1900, 1, 1, tzinfo=UTC)}, "implausible_time"),
        ({"updated_at": NOW + timedelta(days=400)}, "implausible_time"),
        ({"id": "x" * 201}, "id_too_long"),
        ({"step_progress": "{not json"}, "invalid_step_progress"),
        ({"step_progress": progress(("s1", T0, T0 - timedelta(seconds=1), "failed", None))},
         "finished_before_entered"),
        ({"step_progress": progress(("s1", T0, None, "running", None),
                                    ("s1", T0, None, "running", None))}, "duplicate_attempt"),
    ],
)
def test_hostile_rows_are_rejected_with_a_reason(changes: dict, reason: str) -> None:
    batch = Batch()
    with pytest.raises(Rejected) as err:
        apply_execution(batch, row(**changes), WF, None, None, WINDOW)
    assert err.value.reason == reason
    assert not batch.executions and not batch.deltas()


def test_unknown_workflow_is_rejected() -> None:
    with pytest.raises(Rejected) as err:
        apply_execution(Batch(), row(), None, None, None, WINDOW)
    assert err.value.reason == "unknown_workflow"


def test_parse_progress_and_steps_bound_free_text() -> None:
    long_error = "é" * 5000
    (a,) = parse_progress(progress(("s1", T0, T0 + timedelta(seconds=1), "failed", long_error)))
    assert a.error is not None and len(a.error.encode()) <= 1000
    assert a.error.endswith("…[truncated]") and a.duration_ms == 1000
    steps = parse_steps(json.dumps([{"id": 1, "name": "n" * 5000}, {"id": "b"}]))
    assert [s[0] for s in steps] == ["1", "b"]
    assert len(steps[0][1].encode()) <= 1000 and steps[1] == ("b", "b", "unknown")
    with pytest.raises(Rejected):
        parse_steps(json.dumps([{"id": "a"}, {"id": "a"}]))


def _final_state(batches: list[Batch]) -> tuple[dict, dict, set, Counter]:
    """Store contents (attempts, events, reached steps) and counter totals after `batches`."""
    runs: dict = {}
    events: dict = {}
    steps: set = set()
    total: Counter = Counter()
    for b in batches:
        for key in b.runs_del:
            runs.pop(key, None)
        for r in b.runs_new + b.runs_upd:
            runs[(r.execution_id, r.step_id, r.entered_at)] = r
        for key in b.events_del:
            events.pop(key, None)
        for ev in b.events_new + b.events_upd:
            events[(ev.execution_id, ev.event, ev.occurred_at)] = ev
        steps -= set(b.steps_del)
        steps |= {(s.execution_id, s.step_id, s.enrolled_at) for s in b.steps_new}
        total.update(b.deltas())
    return runs, events, steps, total


def test_first_import_equals_the_same_history_seen_version_by_version() -> None:
    """A first-seen execution takes its own path; it must store and count what diffing each
    earlier version and then the last one does."""
    e1 = T0 + timedelta(minutes=1)
    f1 = e1 + timedelta(seconds=2)
    e2 = f1 + timedelta(hours=1)
    f2 = e2 + timedelta(minutes=30)
    versions = [
        row(),
        row(step_progress=progress(("s1", e1, f1, "failed", "smtp 550"),
                                   ("s1", f1, None, "running", None)),
            current_step_id="s1", updated_at=f1),
        row(status="completed", completed_at=f2, converted_at=f2, current_step_id=None,
            step_progress=progress(("s1", e1, f1, "failed", "smtp 550"),
                                   ("s1", f1, e2, "succeeded", None),
                                   ("s2", e2, f2, "skipped", None),
                                   ("s9", e2, f2, "succeeded", "é" * 2000)),
            updated_at=f2),
    ]
    seen: list[Batch] = []
    old = None
    for v in versions:
        b = Batch()
        apply_execution(b, v, WF, old, timedelta(days=1), WINDOW)
        seen.append(b)
        # What the store holds now: this version's execution row, every event so far.
        _, events, _, _ = _final_state(seen)
        old = stored(b)
        old.times = {k: None for k in old.times} | {ev: t for _, ev, t in events}
    direct = Batch()
    apply_execution(direct, versions[-1], WF, None, timedelta(days=1), WINDOW)
    assert _final_state([direct]) == _final_state(seen)
    assert direct.executions[0].attempts == seen[-1].executions[0].attempts
    runs, _, _, counts = _final_state([direct])
    assert len(runs) == 4 and counts[("step_runs", "t1", "wf-1", "s9", "unknown", "")] == 1
