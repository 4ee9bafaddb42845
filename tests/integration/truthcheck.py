"""Compare every read query with the simulator's independent truth."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from exporter import queries
from tests.kit.truth import Truth, le_label


async def check_workflow(
    conn: asyncpg.Connection,
    truth: Truth,
    tenant: str,
    workflow_id: str,
    start: datetime,
    end: datetime,
) -> None:
    """Assert cohort funnel, activity, activity funnel and actions equal the truth on a range."""
    wf = await queries.get_workflow(conn, tenant, workflow_id)
    assert wf is not None
    where = f"{workflow_id} [{start.isoformat()}, {end.isoformat()})"

    want = truth.cohort_funnel(workflow_id, start, end)
    got = await queries.cohort_funnel(conn, tenant, wf, start, end)
    for key in ("enrolled", "completed", "converted", "exited", "failed", "in_progress"):
        assert got[key] == want[key], f"cohort {key} {where}"
    assert [s["step_id"] for s in got["steps"]] == [s["step_id"] for s in want["steps"]]
    for g, w in zip(got["steps"], want["steps"], strict=True):
        for key in ("reached", "in_progress", "dropped"):
            assert g[key] == w[key], f"cohort step {g['step_id']} {key} {where}"

    act = truth.activity(workflow_id, start, end)
    summary = await queries.summary(conn, tenant, wf, start, end, "day", "UTC")
    for key in ("enrollments", "completions", "conversions", "exits", "failures"):
        assert summary[key] == act[key], f"activity {key} {where}"
    assert summary["exits_by_reason"] == act["exits_by_reason"], where

    af = await queries.activity_funnel(conn, tenant, wf, start, end)
    want_af = truth.activity_funnel(workflow_id, start, end)
    for s in af["steps"]:
        assert s["reached"] == want_af.get(s["step_id"], 0), (
            f"activity funnel {s['step_id']} {where}"
        )

    got_actions = {
        a["step_id"]: a for a in (await queries.actions(conn, tenant, wf, start, end))["actions"]
    }
    for step_id, w in truth.actions(workflow_id, start, end).items():
        if not w["executions"]:
            continue
        g = got_actions[step_id]
        for key in ("executions", "succeeded", "failed", "skipped", "running"):
            assert g[key] == w[key], f"actions {step_id} {key} {where}"
        h = g["duration_histogram"]
        assert h["count"] == w["duration_count"], f"duration count {step_id} {where}"
        assert h["sum_ms"] == w["duration_ms_sum"], f"duration sum {step_id} {where}"
        assert h["buckets"] == {le: n for le, n in w["duration_buckets"].items() if n}, step_id
        top = sorted(w["errors"].items(), key=lambda kv: (-kv[1], kv[0]))[: queries.TOP_ERRORS]
        assert [(e["error"], e["count"]) for e in g["top_errors"]] == top, step_id

    for name in ("time_to_complete", "time_to_convert"):
        w = getattr(truth, name)(workflow_id, start, end)
        totals = (await queries.activity_totals(conn, tenant, [wf], start, end))[workflow_id]
        assert totals[name]["count"] == w["count"], f"{name} count {where}"
        assert totals[name]["sum_ms"] == w["sum_ms"], f"{name} sum {where}"


async def check_series(
    conn: asyncpg.Connection,
    truth: Truth,
    tenant: str,
    workflow_id: str,
    start: datetime,
    end: datetime,
    granularity: str,
    tz: str,
) -> None:
    """Assert the summary series equals the truth bucket by bucket."""
    wf = await queries.get_workflow(conn, tenant, workflow_id)
    got = await queries.summary(conn, tenant, wf, start, end, granularity, tz)
    want = truth.activity_series(workflow_id, start, end, granularity, tz)
    fields = ("enrollments", "completions", "conversions", "exits", "failures")
    got_nonzero = {
        row["bucket"]: {k: row[k] for k in fields}
        for row in got["series"]
        if any(row[k] for k in fields)
    }
    want_nonzero = {b: {k: v.get(k, 0) for k in fields} for b, v in want.items()}
    assert got_nonzero == want_nonzero, f"series {granularity} {tz} {workflow_id}"
    buckets = [row["bucket"] for row in got["series"]]
    assert buckets == sorted(buckets) and len(set(buckets)) == len(buckets)


_EVENT_OF = {
    "enrollments": "enrolled",
    "completions": "completed",
    "conversions": "converted",
    "exits": "exited",
    "failures": "failed",
}


async def _grouped(conn: asyncpg.Connection, sql: str) -> dict[tuple, int]:
    return {tuple(r.values())[:-1]: r[-1] for r in await conn.fetch(sql)}


async def check_store(conn: asyncpg.Connection, truth: Truth) -> None:
    """Assert every persisted counter, every raw table and every rollup equals the truth."""
    counters = await _grouped(
        conn,
        "SELECT workflow_id, metric, step_id, label, sum(value) FROM wfa.counters "
        "WHERE workflow_id <> '' GROUP BY 1, 2, 3, 4",
    )
    events = await _grouped(
        conn, "SELECT workflow_id, event, count(*) FROM wfa.workflow_events GROUP BY 1, 2"
    )
    runs = await _grouped(
        conn, "SELECT workflow_id, step_id, status, count(*) FROM wfa.step_runs GROUP BY 1, 2, 3"
    )
    executions = await _grouped(
        conn, "SELECT workflow_id, status, count(*) FROM wfa.executions GROUP BY 1, 2"
    )
    reached = await _grouped(
        conn, "SELECT workflow_id, step_id, count(*) FROM wfa.execution_steps GROUP BY 1, 2"
    )
    rollups = {}
    for level in ("1h", "1d"):
        rollups[("events", level)] = await _grouped(
            conn, f"SELECT workflow_id, event, sum(events) FROM wfa.events_{level} GROUP BY 1, 2"
        )
        rollups[("step_runs", level)] = await _grouped(
            conn,
            f"SELECT workflow_id, step_id, status, sum(runs) FROM wfa.step_runs_{level} "
            "GROUP BY 1, 2, 3",
        )
        rollups[("cohort", level)] = await _grouped(
            conn,
            f"SELECT workflow_id, status, sum(executions) FROM wfa.cohort_{level} GROUP BY 1, 2",
        )
        rollups[("cohort_steps", level)] = await _grouped(
            conn,
            f"SELECT workflow_id, step_id, sum(reached) FROM wfa.cohort_steps_{level} "
            "GROUP BY 1, 2",
        )
    want_events: dict[tuple, int] = {}
    want_runs: dict[tuple, int] = {}
    want_execs: dict[tuple, int] = {}
    want_reached: dict[tuple, int] = {}
    for wf in truth.data.workflows:
        w = wf.id
        t = truth.totals(w)
        for field, event in _EVENT_OF.items():
            if t[field]:
                want_events[(w, event)] = t[field]
        for metric in ("enrollments", "completions", "conversions", "failures"):
            assert counters.get((w, metric, "", ""), 0) == t[metric], (w, metric)
        got_exits = {k[3]: v for k, v in counters.items() if k[:2] == (w, "exits")}
        assert got_exits == t["exits_by_reason"], (w, "exits")
        for name in ("time_to_complete", "time_to_convert"):
            h = t[name]
            got = {k[3]: v for k, v in counters.items() if k[:2] == (w, f"{name}_bucket")}
            assert got == {le_label(le): n for le, n in h["buckets"].items() if n}, (w, name)
            assert counters.get((w, f"{name}_sum_ms", "", ""), 0) == h["sum_ms"], (w, name)
        for sid, s in t["steps"].items():
            assert counters.get((w, "step_runs", sid, ""), 0) == s["attempts"], (w, sid)
            for outcome in ("succeeded", "failed", "skipped"):
                got = counters.get((w, "step_outcomes", sid, outcome), 0)
                assert got == s[outcome], (w, sid, outcome)
            bucket = (w, "step_duration_bucket", sid)
            got = {k[3]: v for k, v in counters.items() if k[:3] == bucket}
            want = {le_label(le): n for le, n in s["duration_buckets"].items() if n}
            assert got == want, (w, sid, "duration buckets")
            got_sum = counters.get((w, "step_duration_sum_ms", sid, ""), 0)
            assert got_sum == s["duration_ms_sum"], (w, sid, "duration sum")
            for status in ("succeeded", "failed", "skipped", "running"):
                if s[status]:
                    want_runs[(w, sid, status)] = s[status]
        for ex in truth.executions(w):
            want_execs[(w, ex.status)] = want_execs.get((w, ex.status), 0) + 1
            for sid in {a.step_id for a in ex.step_progress}:
                want_reached[(w, sid)] = want_reached.get((w, sid), 0) + 1
    assert events == want_events, "raw workflow_events"
    assert runs == want_runs, "raw step_runs"
    assert executions == want_execs, "raw executions"
    assert reached == want_reached, "raw execution_steps"
    for level in ("1h", "1d"):
        assert rollups[("events", level)] == want_events, f"events_{level}"
        assert rollups[("step_runs", level)] == want_runs, f"step_runs_{level}"
        assert rollups[("cohort", level)] == want_execs, f"cohort_{level}"
        assert rollups[("cohort_steps", level)] == want_reached, f"cohort_steps_{level}"
