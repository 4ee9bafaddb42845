"""Read queries shared by the API, the metrics and the exports (README: "What the numbers mean")."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from exporter.histogram import quantile
from exporter.store.sqlfiles import named
from exporter.timerange import plan, series_buckets

Q = named("queries.sql")
SERIES_FIELDS = ("enrollments", "completions", "conversions", "exits", "failures")
_EVENT_FIELD = dict(
    zip(("enrolled", "completed", "converted", "exited", "failed"), SERIES_FIELDS, strict=True)
)
TOP_ERRORS = 5


@dataclass(slots=True)
class Step:
    """A step of a workflow definition; `index` is None for a removed step."""

    step_id: str
    index: int | None
    name: str
    action_type: str


@dataclass(slots=True)
class Workflow:
    """A workflow with its current steps in order."""

    workflow_id: str
    tenant_id: str
    name: str
    updated_at: datetime
    steps: list[Step] = field(default_factory=list)
    removed_steps: list[Step] = field(default_factory=list)


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


async def _steps(conn: asyncpg.Connection, tenant: str | None, ids: Sequence[str]):
    out: dict[str, tuple[list[Step], list[Step]]] = {i: ([], []) for i in ids}
    for r in await conn.fetch(Q["steps"], tenant, list(ids)):
        removed = r["removed_at"] is not None
        step = Step(r["step_id"], None if removed else r["step_index"], r["name"], r["action_type"])
        out[r["workflow_id"]][1 if removed else 0].append(step)
    return out


async def _with_steps(
    conn: asyncpg.Connection, tenant: str | None, rows: Sequence[asyncpg.Record]
) -> list[Workflow]:
    steps = await _steps(conn, tenant, [r["workflow_id"] for r in rows])
    return [
        Workflow(
            r["workflow_id"], r["tenant_id"], r["name"], r["source_updated_at"],
            *steps[r["workflow_id"]],
        )
        for r in rows
    ]


async def list_workflows(conn: asyncpg.Connection, tenant: str | None) -> list[Workflow]:
    """Every workflow of `tenant` (None: all tenants) with its steps."""
    return await _with_steps(conn, tenant, await conn.fetch(Q["workflows"], tenant))


async def workflows_page(
    conn: asyncpg.Connection, tenant: str, after: str | None, limit: int
) -> list[Workflow]:
    """Up to `limit` workflows of `tenant` by id, after the id `after`, with their steps."""
    rows = await conn.fetch(Q["workflows_page"], tenant, after, limit)
    return await _with_steps(conn, tenant, rows)


async def get_workflow(
    conn: asyncpg.Connection, tenant: str | None, workflow_id: str
) -> Workflow | None:
    """One workflow of `tenant`, or None when it does not exist for that tenant."""
    r = await conn.fetchrow(Q["workflow"], tenant, workflow_id)
    if r is None:
        return None
    steps = await _steps(conn, tenant, [workflow_id])
    return Workflow(
        r["workflow_id"], r["tenant_id"], r["name"], r["source_updated_at"], *steps[workflow_id]
    )


def _args(tenant: str | None, wfs: Sequence[Workflow], start: datetime, end: datetime, **kw):
    return (tenant, [w.workflow_id for w in wfs], *plan(start, end, **kw).params())


# cohort funnel ---------------------------------------------------------------------------


def _cohort_totals() -> dict:
    return {
        "enrolled": 0,
        "completed": 0,
        "converted": 0,
        "exited": 0,
        "failed": 0,
        "in_progress": 0,
        "active_by_step": defaultdict(int),
    }


def _add_cohort(t: dict, status: str, n: int, converted: int, step_id: str | None) -> None:
    """Count `n` executions of the cohort with `status` (and current step when active)."""
    t["enrolled"] += n
    t["converted"] += converted
    if status == "completed":
        t["completed"] += n
    elif status == "exited":
        t["exited"] += n
    elif status == "failed":
        t["failed"] += n
    elif status == "active":
        t["in_progress"] += n
        t["active_by_step"][step_id] += n


async def cohort_funnels(
    conn: asyncpg.Connection,
    tenant: str | None,
    wfs: Sequence[Workflow],
    start: datetime,
    end: datetime,
    min_volume: int = 20,
) -> dict[str, dict]:
    """Cohort funnel of each workflow: executions enrolled in [start, end), followed to now."""
    totals: dict[str, dict] = defaultdict(_cohort_totals)
    reached: dict[str, dict[str, int]] = defaultdict(dict)
    for r in await conn.fetch(Q["cohort"], *_args(tenant, wfs, start, end)):
        if r["part"] == "c":
            _add_cohort(
                totals[r["workflow_id"]],
                r["status"],
                r["n"],
                r["converted_in_window"],
                r["step_id"],
            )
        else:
            reached[r["workflow_id"]][r["step_id"]] = r["n"]
    return {
        w.workflow_id: _funnel(w, totals[w.workflow_id], reached[w.workflow_id], min_volume)
        for w in wfs
    }


def _funnel(wf: Workflow, t: dict, reached: dict[str, int], min_volume: int) -> dict:
    active = t.pop("active_by_step")
    enrolled = t["enrolled"]
    counts = [reached.get(s.step_id, 0) for s in wf.steps] + [t["completed"]]
    steps = []
    for k, s in enumerate(wf.steps):
        r_k, ip = counts[k], active.get(s.step_id, 0)
        dropped = r_k - counts[k + 1] - ip
        steps.append(
            {
                "index": k,
                "step_id": s.step_id,
                "name": s.name,
                "action_type": s.action_type,
                "reached": r_k,
                "in_progress": ip,
                "dropped": dropped,
                "dropoff_ratio": _ratio(dropped, r_k),
                "conversion_from_previous": _ratio(r_k, counts[k - 1] if k else enrolled),
                "conversion_from_start": _ratio(r_k, enrolled),
                "bottleneck": False,
            }
        )
    eligible = [s for s in steps if s["reached"] >= min_volume and s["dropoff_ratio"] is not None]
    if eligible:
        worst = max(eligible, key=lambda s: (s["dropoff_ratio"], -s["index"]))
        if worst["dropoff_ratio"] > 0:
            worst["bottleneck"] = True
    return {
        **t,
        "completion_rate": _ratio(t["completed"], enrolled),
        "conversion_rate": _ratio(t["converted"], enrolled),
        "steps": steps,
    }


async def cohort_funnel(conn, tenant, wf: Workflow, start, end, min_volume: int = 20) -> dict:
    """Cohort funnel of one workflow."""
    return (await cohort_funnels(conn, tenant, [wf], start, end, min_volume))[wf.workflow_id]


# activity --------------------------------------------------------------------------------


async def activity_funnel(
    conn: asyncpg.Connection, tenant: str | None, wf: Workflow, start: datetime, end: datetime
) -> dict:
    """Activity funnel: attempts entered per step in [start, end), plus event counts in range."""
    attempts: dict[str, int] = {}
    events = dict.fromkeys(SERIES_FIELDS, 0)
    for r in await conn.fetch(Q["activity"], *_args(tenant, [wf], start, end)):
        if r["part"] == "r":
            attempts[r["key"]] = r["n"]
        else:
            events[_EVENT_FIELD[r["key"]]] = r["n"]
    steps = [
        {
            "index": k,
            "step_id": s.step_id,
            "name": s.name,
            "action_type": s.action_type,
            "reached": attempts.get(s.step_id, 0),
            "in_progress": None,
            "dropped": None,
            "dropoff_ratio": None,
            "conversion_from_previous": None,
            "conversion_from_start": None,
            "bottleneck": None,
        }
        for k, s in enumerate(wf.steps)
    ]
    return {
        "enrolled": events["enrollments"],
        "completed": events["completions"],
        "converted": events["conversions"],
        "in_progress": None,
        "steps": steps,
    }


async def activity_totals(
    conn: asyncpg.Connection,
    tenant: str | None,
    wfs: Sequence[Workflow],
    start: datetime,
    end: datetime,
) -> dict[str, dict]:
    """Event counts in [start, end) per workflow, exits by reason, time-to histograms."""
    out = {w.workflow_id: _activity() for w in wfs}
    for r in await conn.fetch(Q["events"], *_args(tenant, wfs, start, end)):
        _add_event(
            out[r["workflow_id"]],
            r["event"],
            r["reason"],
            r["duration_le"],
            r["events"],
            r["duration_ms_sum"],
        )
    return out


def _activity() -> dict:
    return {
        **dict.fromkeys(SERIES_FIELDS, 0),
        "exits_by_reason": {},
        "time_to_complete": _hist(),
        "time_to_convert": _hist(),
    }


def _add_event(
    t: dict, event: str, reason: str | None, le: float | None, n: int, sum_ms: int | None
) -> None:
    """Count `n` events of one kind, reason and duration bucket."""
    t[_EVENT_FIELD[event]] += n
    if event == "exited":
        key = reason or ""
        t["exits_by_reason"][key] = t["exits_by_reason"].get(key, 0) + n
    if event in ("completed", "converted") and le is not None:
        _hist_add(
            t["time_to_complete" if event == "completed" else "time_to_convert"], le, n, sum_ms
        )


def _hist() -> dict:
    return {"count": 0, "sum_ms": 0, "buckets": {}}


def _hist_add(h: dict, le: float, n: int, sum_ms: int | None) -> None:
    h["count"] += n
    h["sum_ms"] += sum_ms or 0
    h["buckets"][le] = h["buckets"].get(le, 0) + n


def hist_stats(h: dict, qs: Sequence[float] = (0.5, 0.95, 0.99)) -> dict:
    """avg and interpolated quantiles in seconds of a histogram built here."""
    out = {"avg": (h["sum_ms"] / h["count"] / 1000) if h["count"] else None}
    for q in qs:
        out[f"p{round(q * 100)}"] = quantile(q, h["buckets"])
    return out


async def summary(
    conn: asyncpg.Connection,
    tenant: str | None,
    wf: Workflow,
    start: datetime,
    end: datetime,
    granularity: str = "day",
    tz: str = "UTC",
) -> dict:
    """Activity counts, cohort rates, time-to stats and a zero-filled series for one workflow."""
    totals = _activity()
    cohort = _cohort_totals()
    buckets: dict[datetime, asyncpg.Record | None] = dict.fromkeys(
        series_buckets(start, end, granularity, tz)
    )
    rows = await conn.fetch(
        Q["summary"],
        *_args(tenant, [wf], start, end, granularity=granularity, tz=tz),
        granularity,
        tz,
        *plan(start, end).params(),
    )
    for r in rows:
        if r["part"] == "e":
            _add_event(
                totals, r["key"], r["reason"], r["duration_le"], r["n"], r["duration_ms_sum"]
            )
        elif r["part"] == "s":
            buckets[r["bucket"]] = r
        else:
            _add_cohort(cohort, r["key"], r["n"], r["duration_ms_sum"], None)
    enrolled = cohort["enrolled"]
    return {
        **{k: totals[k] for k in SERIES_FIELDS},
        "exits_by_reason": totals["exits_by_reason"],
        "completion_rate": _ratio(cohort["completed"], enrolled),
        "conversion_rate": _ratio(cohort["converted"], enrolled),
        "time_to_complete_seconds": hist_stats(totals["time_to_complete"], (0.5, 0.95)),
        "time_to_convert_seconds": hist_stats(totals["time_to_convert"], (0.5, 0.95)),
        "series": [_series_point(b, r) for b, r in sorted(buckets.items())],
    }


def _series_point(bucket: datetime, r: asyncpg.Record | None) -> dict:
    """One series bucket: its event counts, zeros when no row came for it."""
    if r is None:
        return {"bucket": bucket, **dict.fromkeys(SERIES_FIELDS, 0)}
    return {"bucket": bucket, **{f: r[f] or 0 for f in SERIES_FIELDS}}


# actions ---------------------------------------------------------------------------------


_STATUSES = ("succeeded", "failed", "skipped", "running")


def _perf() -> dict:
    return {
        "executions": 0,
        "succeeded": 0,
        "failed": 0,
        "skipped": 0,
        "running": 0,
        "hist": _hist(),
        "errors": defaultdict(int),
    }


def _perf_out(p: dict) -> dict:
    done = p["succeeded"] + p["failed"]
    errors = sorted(p["errors"].items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_ERRORS]
    return {
        "executions": p["executions"],
        "succeeded": p["succeeded"],
        "failed": p["failed"],
        "skipped": p["skipped"],
        "running": p["running"],
        "success_rate": _ratio(p["succeeded"], done),
        "duration_seconds": hist_stats(p["hist"]),
        "duration_histogram": p["hist"],
        "top_errors": [{"error": e, "count": n} for e, n in errors],
    }


def _merge_perf(into: dict, p: dict) -> None:
    """Add the counts, histogram and errors of `p` to `into`."""
    for k in ("executions", *_STATUSES):
        into[k] += p[k]
    for le, n in p["hist"]["buckets"].items():
        _hist_add(into["hist"], le, n, None)
    into["hist"]["sum_ms"] += p["hist"]["sum_ms"]
    for e, n in p["errors"].items():
        into["errors"][e] += n


async def actions(
    conn: asyncpg.Connection, tenant: str | None, wf: Workflow, start: datetime, end: datetime
) -> dict:
    """Action performance per step and per action type over attempts entered in [start, end)."""
    # Rows are summed once per (step, action type), then each sum into its step and its type.
    pairs: dict[tuple[str, str], dict] = defaultdict(_perf)
    step_action: dict[str, str] = {}
    for r in await conn.fetch(Q["step_runs"], *_args(tenant, [wf], start, end)):
        step_action.setdefault(r["step_id"], r["action_type"])
        p, n, status = pairs[r["step_id"], r["action_type"]], r["runs"], r["status"]
        p["executions"] += n
        if status in _STATUSES:
            p[status] += n
        if r["duration_le"] is not None:
            _hist_add(p["hist"], r["duration_le"], n, r["duration_ms_sum"])
        if r["error"] is not None and status == "failed":
            p["errors"][r["error"]] += n
    per_step: dict[str, dict] = defaultdict(_perf)
    per_type: dict[str, dict] = defaultdict(_perf)
    for (step_id, action_type), p in pairs.items():
        _merge_perf(per_step[step_id], p)
        _merge_perf(per_type[action_type], p)
    ordered = [*wf.steps, *wf.removed_steps]
    known = {s.step_id for s in ordered}
    ordered += [
        Step(sid, None, sid, step_action[sid]) for sid in sorted(step_action) if sid not in known
    ]
    steps = [
        {
            "index": s.index,
            "step_id": s.step_id,
            "name": s.name,
            "action_type": step_action.get(s.step_id, s.action_type),
            **_perf_out(per_step[s.step_id]),
        }
        for s in ordered
        if s.index is not None or s.step_id in per_step
    ]
    types = [{"action_type": t, **_perf_out(p)} for t, p in sorted(per_type.items())]
    return {"actions": steps, "action_types": types}
