"""Compare every read query with the simulator's independent truth."""

from __future__ import annotations

from datetime import datetime

import asyncpg

from exporter import queries
from exporter.simulate.truth import Truth


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
