"""Hostile source rows built from simulated ones, each with the defect an attacker would try."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from exporter.simulate.model import SimAttempt, SimData, SimExecution


def _with_attempts(ex: SimExecution) -> SimExecution:
    """A copy of `ex` that has at least one finished attempt."""
    if not ex.step_progress or ex.step_progress[0].finished_at is None:
        entered = ex.enrolled_at + timedelta(seconds=1)
        first = SimAttempt(ex.current_step_id or "s1", entered, entered, "succeeded", None)
        ex = replace(ex, step_progress=[first, *ex.step_progress[1:]])
    return ex


def hostile_rows(data: SimData, now: datetime) -> dict[str, SimExecution]:
    """One execution per hostile shape, keyed by a name; ids are new, updated_at is `now`."""
    done = [e for e in data.executions if e.status == "completed" and e.step_progress]
    base = [replace(e, updated_at=now) for e in done[:12]]
    wf_steps = {wf.id: wf.step_ids for wf in data.workflows}
    out: dict[str, SimExecution] = {}

    def add(name: str, ex: SimExecution, **changes) -> None:
        out[name] = replace(ex, id=f"hostile-{name}", **changes)

    a = _with_attempts(base[0])
    add("duplicate-attempt", a, step_progress=[*a.step_progress, replace(a.step_progress[0])])
    add(
        "exit-reason-3kb",
        base[1],
        status="exited",
        completed_at=None,
        converted_at=None,
        exited_at=base[1].enrolled_at + timedelta(minutes=5),
        exit_reason="unsubscribed because " + "é" * 1500,
    )
    add(
        "enrolled-9999",
        base[2],
        status="active",
        enrolled_at=datetime(9999, 12, 31, tzinfo=UTC),
        completed_at=None,
        converted_at=None,
        current_step_id=wf_steps[base[2].workflow_id][0],
        step_progress=[],
    )
    add(
        "enrolled-1900",
        base[3],
        enrolled_at=datetime(1900, 1, 1, tzinfo=UTC),
    )
    add("beside-1900", base[4])
    add(
        "completed-before-enrolled",
        base[5],
        completed_at=base[5].enrolled_at - timedelta(hours=3),
    )
    b = _with_attempts(base[6])
    add(
        "error-10kb",
        b,
        step_progress=[replace(b.step_progress[0], status="failed", error="E" * 10_000),
                       *b.step_progress[1:]],
    )
    add("id-too-long", base[7])
    out["id-too-long"].id = "x" * 300
    add("updated-9999", base[8], updated_at=datetime(9999, 1, 1, tzinfo=UTC))
    add("error-multibyte", b, step_progress=[
        replace(b.step_progress[0], status="failed", error="€" * 700), *b.step_progress[1:]
    ])
    return out
