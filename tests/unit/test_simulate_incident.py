"""Incidents of the live workload: the spec grammar, its errors, and what they do to executions."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta
from random import Random

import pytest

from exporter.simulate.generate import simulate_execution
from exporter.simulate.incident import (
    INCIDENT_ERROR,
    Incident,
    IncidentError,
    parse_incident,
    stage,
)
from exporter.simulate.live import LiveWorkload
from exporter.simulate.model import SimExecution, SimStep, SimWorkflow, to_ms

START = datetime.now(UTC).replace(microsecond=0)


def _workflow(wf_id: str = "wf-fast") -> SimWorkflow:
    types = ["send_email", "update_field", "webhook", "send_email"]
    steps = [SimStep(f"{wf_id}-s{k + 1}", f"Step {k + 1}", t) for k, t in enumerate(types)]
    return SimWorkflow(wf_id, "tenant-1", "Fast", steps, START - timedelta(days=1))


def test_spec_grammar() -> None:
    inc = parse_incident("workflow=wf-01,step=3,dropoff=0.8,after=2m,for=10m")
    assert inc == Incident(
        "wf-01", "3", "dropoff", 0.8, timedelta(minutes=2), timedelta(minutes=10)
    )
    assert parse_incident(" step = s-2 , workflow=a , failure=60% ").value == pytest.approx(0.6)
    slow = parse_incident("workflow=a,step=1,slowdown=10x")
    assert (slow.kind, slow.value, slow.after, slow.duration) == (
        "slowdown",
        10.0,
        timedelta(0),
        timedelta(minutes=10),
    )
    assert "80% drop-off at step 3 of wf-01, from 2m for 10m" in inc.describe()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("step=3,dropoff=0.8", "workflow= is required"),
        ("workflow=a,dropoff=0.8", "step= is required"),
        ("workflow=a,step=1", "exactly one of dropoff=, failure= or slowdown="),
        ("workflow=a,step=1,dropoff=0.5,failure=0.5", "exactly one of"),
        ("workflow=a,step=1,dropoff=1.5", "dropoff='1.5': must be above 0 and at most 1"),
        ("workflow=a,step=1,failure=0", "failure='0': must be above 0"),
        ("workflow=a,step=1,failure=lots", "must be a share such as 0.8 or 80%"),
        ("workflow=a,step=1,slowdown=1", "slowdown='1': must be above 1"),
        ("workflow=a,step=1,slowdown=fast", "must be a factor such as 10 or 10x"),
        ("workflow=a,step=1,dropoff=0.5,after=soon", "after='soon': must be a duration"),
        ("workflow=a,step=1,dropoff=0.5,for=0s", "for= must be longer than 0s"),
        ("workflow=a,step=1,dropoff=0.5,stpe=2", "unknown key 'stpe'"),
        ("workflow=a,step=1,step=2,dropoff=0.5", "step is given twice"),
        ("workflow=a,step=1,dropoff", "'dropoff': expected key=value"),
        ("workflow=,step=1,dropoff=0.5", "workflow has no value"),
    ],
)
def test_spec_errors_name_the_part(spec: str, message: str) -> None:
    with pytest.raises(IncidentError, match=message.replace("(", r"\(").replace("*", r"\*")):
        parse_incident(spec)


def test_staging_against_the_workflows() -> None:
    wf = _workflow()
    staged = stage(
        [parse_incident("workflow=wf-fast,step=wf-fast-s2,failure=0.5,after=1m")], [wf], 0
    )
    (only,) = staged["wf-fast"]
    assert (only.step_index, only.start_ms, only.end_ms) == (1, 60_000, 660_000)
    for spec, message in (
        ("workflow=nope,step=1,dropoff=0.5", "not in the source \\(known: wf-fast\\)"),
        ("workflow=wf-fast,step=5,dropoff=0.5", "has steps 1 to 4"),
        ("workflow=wf-fast,step=0,dropoff=0.5", "has steps 1 to 4"),
        ("workflow=wf-fast,step=4,dropoff=0.5", "last step of wf-fast"),
    ):
        with pytest.raises(IncidentError, match=message):
            stage([parse_incident(spec)], [wf], 0)


def _run(incidents: list[Incident], minutes: int = 6, rate: float = 20.0) -> list[SimExecution]:
    """Executions enrolled at `rate` per second for `minutes`, each played out to its end."""
    wf = _workflow()
    staged = stage(incidents, [wf], to_ms(START)).get(wf.id)
    rng = Random(11)
    out = []
    for i in range(int(minutes * 60 * rate)):
        at = START + timedelta(seconds=i / rate)
        out.append(
            simulate_execution(
                rng,
                wf,
                at,
                at + timedelta(days=30),
                execution_id=f"x-{i}",
                contact_id=f"c-{i}",
                incidents=staged,
            )
        )
    return out


def test_the_live_workload_stages_and_announces_incidents() -> None:
    inc = parse_incident("workflow=wf-fast,step=2,dropoff=1,after=30s,for=30s")
    live = LiveWorkload([_workflow()], rate=10, seed=3, start=START, incidents=[inc])
    assert live.staged["wf-fast"][0].step_index == 1
    said = []
    seen: dict[str, SimExecution] = {}
    for s in range(0, 91, 5):
        for ex in live.step(START + timedelta(seconds=s)):
            seen[ex.id] = ex
        said += [(s, line) for line in live.announcements()]
    assert [s for s, _ in said] == [30, 60]
    assert said[0][1].startswith("incident starts: 100% drop-off at step 2 of wf-fast")
    assert said[1][1].startswith("incident ends:")
    left = [
        e for e in seen.values() if _in(_entered(e, "wf-fast-s2"), 31, 55) and e.status != "active"
    ]
    assert left and all(_entered(e, "wf-fast-s3") is None for e in left)
    with pytest.raises(IncidentError):
        LiveWorkload(
            [_workflow()],
            rate=1,
            seed=3,
            start=START,
            incidents=[parse_incident("workflow=other,step=1,dropoff=1")],
        )


def _entered(ex: SimExecution, step: str) -> datetime | None:
    return next((a.entered_at for a in ex.step_progress if a.step_id == step), None)


def _in(t: datetime | None, lo: int, hi: int) -> bool:
    return t is not None and lo <= (t - START).total_seconds() < hi


def test_dropoff_makes_executions_leave_at_the_step_while_it_is_on() -> None:
    runs = _run([parse_incident("workflow=wf-fast,step=2,dropoff=0.8,after=2m,for=2m")])
    step2, step3 = "wf-fast-s2", "wf-fast-s3"

    def share_leaving(lo: int, hi: int) -> float:
        entered = [e for e in runs if _in(_entered(e, step2), lo, hi)]
        assert len(entered) > 300
        return sum(_entered(e, step3) is None for e in entered) / len(entered)

    assert share_leaving(120, 240) == pytest.approx(0.8, abs=0.06)
    assert share_leaving(0, 115) < 0.2 and share_leaving(250, 360) < 0.2
    left = [e for e in runs if _in(_entered(e, step2), 120, 240) and _entered(e, step3) is None]
    assert all(e.status in ("exited", "failed") for e in left)
    assert all(e.exit_reason for e in left if e.status == "exited")


def test_failure_makes_attempts_fail_while_it_is_on() -> None:
    runs = _run([parse_incident("workflow=wf-fast,step=3,failure=0.6,after=2m,for=2m")])
    error = INCIDENT_ERROR.format(action_type="webhook")

    def first_attempts(lo: int, hi: int) -> list:
        out = []
        for e in runs:
            attempts = [a for a in e.step_progress if a.step_id == "wf-fast-s3"]
            if attempts and _in(attempts[0].entered_at, lo, hi):
                out.append(attempts[0])
        return out

    during = first_attempts(120, 240)
    assert sum(a.status == "failed" for a in during) / len(during) == pytest.approx(0.6, abs=0.07)
    assert all(a.error == error for a in during if a.status == "failed")
    before = first_attempts(0, 115)
    assert sum(a.status == "failed" for a in before) / len(before) < 0.2
    assert not [a for a in before if a.error == error]


def test_slowdown_stretches_durations_while_it_is_on() -> None:
    runs = _run([parse_incident("workflow=wf-fast,step=1,slowdown=10,after=2m,for=2m")])

    def median_ms(lo: int, hi: int) -> float:
        ds = [
            a.duration_ms
            for e in runs
            for a in e.step_progress
            if a.step_id == "wf-fast-s1" and _in(a.entered_at, lo, hi) and a.duration_ms
        ]
        return statistics.median(ds)

    assert median_ms(120, 240) / median_ms(0, 115) == pytest.approx(10, rel=0.25)


def test_an_incident_that_is_not_on_changes_nothing() -> None:
    plain = _run([], minutes=2)
    later = _run([parse_incident("workflow=wf-fast,step=2,dropoff=1,after=900d,for=1m")], minutes=2)
    key = lambda e: (e.id, e.status, [(a.step_id, a.finished_at) for a in e.step_progress])  # noqa: E731
    assert sorted(map(key, plain)) == sorted(map(key, later))
