"""The metrics snapshot: every workflow series /metrics serves, read from the store in one go."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any

import asyncpg

from exporter.config import format_duration
from exporter.config.schema import MetricsConfig
from exporter.histogram import BOUNDS, cumulative
from exporter.metrics.labels import EXITS, OTHER, LabelPlan, promote, read_plan
from exporter.queries import Workflow, cohort_funnels, list_workflows
from exporter.store.sqlfiles import named
from exporter.timerange import plan

Q = named("metrics.sql")
COUNTER, GAUGE, HISTOGRAM = "counter", "gauge", "histogram"
ALL_TIME_START = datetime(2000, 1, 3, tzinfo=UTC)
"""Start of the 'all time' range used for active executions (the rollup origin)."""
HISTOGRAM_SERIES = len(BOUNDS) + 2
"""Series of one histogram: a bucket per bound, `_sum` and `_count`."""


@dataclass(frozen=True, slots=True)
class Spec:
    """A metric family served from the snapshot; `labels` follow `workflow` and `tenant`."""

    name: str
    kind: str
    doc: str
    labels: tuple[str, ...] = ()


SPECS: tuple[Spec, ...] = (
    Spec("wfa_workflow_enrollments_total", COUNTER, "Executions enrolled."),
    Spec("wfa_workflow_completions_total", COUNTER, "Executions completed."),
    Spec("wfa_workflow_conversions_total", COUNTER, "Executions converted on the goal."),
    Spec(
        "wfa_workflow_exits_total",
        COUNTER,
        "Executions exited early, by reason (listed or most frequent reasons, then other).",
        ("reason",),
    ),
    Spec("wfa_workflow_failures_total", COUNTER, "Executions failed."),
    Spec("wfa_step_runs_total", COUNTER, "Step attempts entered.", ("step", "action_type")),
    Spec(
        "wfa_step_outcomes_total",
        COUNTER,
        "Step attempts finished, by outcome.",
        ("step", "action_type", "outcome"),
    ),
    Spec(
        "wfa_step_duration_seconds",
        HISTOGRAM,
        "Duration of finished step attempts.",
        ("step", "action_type"),
    ),
    Spec(
        "wfa_workflow_time_to_complete_seconds",
        HISTOGRAM,
        "Time from enrollment to completion.",
    ),
    Spec(
        "wfa_workflow_time_to_convert_seconds",
        HISTOGRAM,
        "Time from enrollment to conversion.",
    ),
    Spec("wfa_workflow_active_executions", GAUGE, "Executions with status active now."),
    Spec(
        "wfa_step_active_executions",
        GAUGE,
        "Active executions whose current step is this step.",
        ("step",),
    ),
    Spec("wfa_funnel_enrolled", GAUGE, "Cohort: executions enrolled in the window.", ("window",)),
    Spec(
        "wfa_funnel_reached",
        GAUGE,
        "Cohort: executions that reached the step.",
        ("step", "window"),
    ),
    Spec(
        "wfa_funnel_in_progress",
        GAUGE,
        "Cohort: executions still active at the step.",
        ("step", "window"),
    ),
    Spec(
        "wfa_funnel_dropped", GAUGE, "Cohort: executions dropped at the step.", ("step", "window")
    ),
    Spec(
        "wfa_funnel_dropoff_ratio",
        GAUGE,
        "Cohort: dropped / reached at the step.",
        ("step", "window"),
    ),
    Spec("wfa_funnel_conversion_ratio", GAUGE, "Cohort: converted / enrolled.", ("window",)),
    Spec("wfa_funnel_completion_ratio", GAUGE, "Cohort: completed / enrolled.", ("window",)),
    Spec("wfa_workflow_info", GAUGE, "Workflow names; always 1.", ("name",)),
    Spec(
        "wfa_step_info",
        GAUGE,
        "Steps of the current definitions (0-based index); always 1.",
        ("step", "index", "name", "action_type"),
    ),
)
BY_NAME = {s.name: s for s in SPECS}
_WORKFLOW_COUNTERS = {
    "enrollments": "wfa_workflow_enrollments_total",
    "completions": "wfa_workflow_completions_total",
    "conversions": "wfa_workflow_conversions_total",
    "failures": "wfa_workflow_failures_total",
}
_TIME_TO = {
    "time_to_complete": "wfa_workflow_time_to_complete_seconds",
    "time_to_convert": "wfa_workflow_time_to_convert_seconds",
}

Labels = tuple[str, ...]
HistogramValue = tuple[list[tuple[float, int]], float]
"""Cumulative ``[(le, count)]`` over every bound, and the sum in seconds."""


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable picture of the workflow metrics at `built_at`."""

    built_at: float
    duration: float
    tenant_label: bool
    samples: Mapping[str, list[tuple[Labels, Any]]]
    rejected: Mapping[str, int]
    series: int
    dropped_series: int
    dropped_workflows: int
    workflows: int
    newest_ingested: datetime | None
    exporter_counters: Mapping[str, Mapping[str, int]] = field(default_factory=dict)
    """Persisted counters of the exporter itself (late commits, reconciled rows), by label."""

    def label_names(self, spec: Spec) -> list[str]:
        """Label names of a workflow family as served."""
        head = ["workflow", "tenant"] if self.tenant_label else ["workflow"]
        return [*head, *spec.labels]


@dataclass(slots=True)
class _Hist:
    buckets: dict[float, int] = field(default_factory=dict)
    sum_ms: int = 0


@dataclass(slots=True)
class _WorkflowData:
    """Everything read about one workflow, before the cardinality guard."""

    workflow_id: str
    tenant_id: str
    definition: Workflow | None = None
    counters: dict[str, int] = field(default_factory=dict)
    exits: dict[str, int] = field(default_factory=dict)
    step_runs: dict[tuple[str, str], int] = field(default_factory=dict)
    outcomes: dict[tuple[str, str, str], int] = field(default_factory=dict)
    step_hist: dict[tuple[str, str], _Hist] = field(default_factory=lambda: defaultdict(_Hist))
    time_to: dict[str, _Hist] = field(default_factory=lambda: defaultdict(_Hist))
    active: dict[str | None, int] = field(default_factory=dict)
    funnels: dict[str, dict] = field(default_factory=dict)


def window_label(window: timedelta) -> str:
    """The `window` label of a trailing window, e.g. 24h -> "1d"."""
    return format_duration(window)


def selected(workflow_id: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether `workflow_id` (or a tenant id) passes the include/exclude glob patterns."""
    if not any(fnmatchcase(workflow_id, p) for p in include):
        return False
    return not any(fnmatchcase(workflow_id, p) for p in exclude)


def _served(cfg: MetricsConfig, workflow_id: str, tenant_id: str) -> bool:
    """Whether the workflow and its tenant pass `metrics.include/exclude` and `metrics.tenants`."""
    return selected(workflow_id, cfg.include, cfg.exclude) and selected(
        tenant_id, cfg.tenants.include, cfg.tenants.exclude
    )


_REJECT_REASON = re.compile(r"[a-z0-9_]{1,40}")


def rejected_reason(label: str) -> str:
    """The `reason` label of a rejection reason: a short code as is, anything else `other`."""
    return label if _REJECT_REASON.fullmatch(label) else OTHER


def _le(label: str) -> float:
    return float(label)


def _read_counters(rows: Iterable[asyncpg.Record], data: dict[str, _WorkflowData]) -> dict:
    rejected: dict[str, int] = {}
    for r in rows:
        metric, value = r["metric"], r["value"]
        if metric == "rejected_rows":
            reason = rejected_reason(r["label"])
            rejected[reason] = rejected.get(reason, 0) + value
            continue
        wd = data.get(r["workflow_id"])
        if wd is None:
            continue
        step = (r["step_id"], r["action_type"])
        if metric in _WORKFLOW_COUNTERS:
            wd.counters[metric] = value
        elif metric == "exits":
            wd.exits[r["label"]] = value
        elif metric == "step_runs":
            wd.step_runs[step] = value
        elif metric == "step_outcomes":
            wd.outcomes[(*step, r["label"])] = value
        elif metric == "step_duration_bucket":
            wd.step_hist[step].buckets[_le(r["label"])] = value
        elif metric == "step_duration_sum_ms":
            wd.step_hist[step].sum_ms = value
        elif metric.endswith("_bucket") and metric[:-7] in _TIME_TO:
            wd.time_to[metric[:-7]].buckets[_le(r["label"])] = value
        elif metric.endswith("_sum_ms") and metric[:-7] in _TIME_TO:
            wd.time_to[metric[:-7]].sum_ms = value
    return rejected


EXPORTER_COUNTERS = ("late_commits", "reconciled_rows")
"""Store counters of the exporter itself, served as wfa_exporter_<metric>_total."""


def _exporter_counters(rows: Iterable[asyncpg.Record]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {m: {} for m in EXPORTER_COUNTERS}
    for r in rows:
        if r["metric"] in out:
            by_label = out[r["metric"]]
            by_label[r["label"]] = by_label.get(r["label"], 0) + r["value"]
    return out


def _hist_value(h: _Hist) -> HistogramValue:
    return cumulative(h.buckets), h.sum_ms / 1000


def _series(
    wd: _WorkflowData, tenant_label: bool, reasons: LabelPlan
) -> list[tuple[str, Labels, Any]]:
    """Every sample of one workflow as (family, label values, value); reasons bounded."""
    head: Labels = (wd.workflow_id, wd.tenant_id) if tenant_label else (wd.workflow_id,)
    out: list[tuple[str, Labels, Any]] = []
    add = out.append
    steps = wd.definition.steps if wd.definition else []
    for metric, name in _WORKFLOW_COUNTERS.items():
        add((name, head, wd.counters.get(metric, 0)))
    for reason, n in sorted(reasons.fold(wd.tenant_id, wd.workflow_id, wd.exits).items()):
        add(("wfa_workflow_exits_total", (*head, reason), n))
    runs = dict(wd.step_runs)
    for s in steps:
        runs.setdefault((s.step_id, s.action_type), 0)
    for (step, action), n in sorted(runs.items()):
        add(("wfa_step_runs_total", (*head, step, action), n))
    for (step, action, outcome), n in sorted(wd.outcomes.items()):
        add(("wfa_step_outcomes_total", (*head, step, action, outcome), n))
    for (step, action), h in sorted(wd.step_hist.items()):
        if h.buckets:
            add(("wfa_step_duration_seconds", (*head, step, action), _hist_value(h)))
    for key, name in _TIME_TO.items():
        h = wd.time_to.get(key)
        if h is not None and h.buckets:
            add((name, head, _hist_value(h)))
    add(("wfa_workflow_active_executions", head, sum(wd.active.values())))
    active = {s.step_id: 0 for s in steps}
    for step, n in wd.active.items():
        if step is not None:
            active[step] = active.get(step, 0) + n
    for step, n in active.items():
        add(("wfa_step_active_executions", (*head, step), n))
    for window, f in wd.funnels.items():
        add(("wfa_funnel_enrolled", (*head, window), f["enrolled"]))
        if f["conversion_rate"] is not None:
            add(("wfa_funnel_conversion_ratio", (*head, window), f["conversion_rate"]))
        if f["completion_rate"] is not None:
            add(("wfa_funnel_completion_ratio", (*head, window), f["completion_rate"]))
        for s in f["steps"]:
            labels = (*head, s["step_id"], window)
            add(("wfa_funnel_reached", labels, s["reached"]))
            add(("wfa_funnel_in_progress", labels, s["in_progress"]))
            add(("wfa_funnel_dropped", labels, s["dropped"]))
            if s["dropoff_ratio"] is not None:
                add(("wfa_funnel_dropoff_ratio", labels, s["dropoff_ratio"]))
    if wd.definition is not None:
        add(("wfa_workflow_info", (*head, wd.definition.name), 1))
        for s in steps:
            add(("wfa_step_info", (*head, s.step_id, str(s.index), s.name, s.action_type), 1))
    return out


def _count(series: list[tuple[str, Labels, Any]]) -> int:
    return sum(HISTOGRAM_SERIES if BY_NAME[name].kind == HISTOGRAM else 1 for name, _, _ in series)


def _volume(wd: _WorkflowData, longest: str | None) -> tuple[int, int]:
    recent = wd.funnels[longest]["enrolled"] if longest in wd.funnels else 0
    return recent, wd.counters.get("enrollments", 0)


async def build_snapshot(
    conn: asyncpg.Connection, cfg: MetricsConfig, now: datetime | None = None
) -> Snapshot:
    """Read the store (one repeatable-read transaction) into a snapshot; funnels end at `now`."""
    started = time.perf_counter()
    built_at = time.time()
    now = now or datetime.fromtimestamp(built_at, UTC)
    await promote(conn, EXITS, EXITS, cfg.exit_reasons, cfg.top_reasons)
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        # Rollup reads are short but their estimates pass jit_above_cost once the raw tables
        # are large; compiling them would cost more than running them.
        await conn.execute("SET LOCAL jit = off")
        wfs = [
            w
            for w in await list_workflows(conn, None)
            if _served(cfg, w.workflow_id, w.tenant_id)
        ]
        data = {w.workflow_id: _WorkflowData(w.workflow_id, w.tenant_id, w) for w in wfs}
        counter_rows = await conn.fetch(Q["counters"])
        for r in counter_rows:
            wid = r["workflow_id"]
            if wid and wid not in data and _served(cfg, wid, r["tenant_id"]):
                data[wid] = _WorkflowData(wid, r["tenant_id"])
        rejected = _read_counters(counter_rows, data)
        reasons = await read_plan(conn, EXITS)
        ids = list(data)
        segments = plan(ALL_TIME_START, now + timedelta(days=1)).params()
        for r in await conn.fetch(Q["active"], ids, *segments):
            data[r["workflow_id"]].active[r["current_step_id"]] = r["executions"]
        for window in cfg.windows:
            label = window_label(window)
            funnels = await cohort_funnels(conn, None, wfs, now - window, now, cfg.min_volume)
            for wid, f in funnels.items():
                data[wid].funnels[label] = f
        newest = await conn.fetchval(Q["newest_ingested"])
    longest = window_label(max(cfg.windows)) if cfg.windows else None
    per_wf = {wid: _series(wd, cfg.tenant_label, reasons) for wid, wd in data.items()}
    counts = {wid: _count(s) for wid, s in per_wf.items()}
    ranked = sorted(
        data.values(), key=lambda wd: (*(-v for v in _volume(wd, longest)), wd.workflow_id)
    )
    kept: set[str] = set()
    used = dropped = dropped_wfs = 0
    for wd in ranked:
        n = counts[wd.workflow_id]
        if not dropped_wfs and used + n <= cfg.max_series:
            kept.add(wd.workflow_id)
            used += n
        else:
            dropped += n
            dropped_wfs += 1
    samples: dict[str, list[tuple[Labels, Any]]] = {s.name: [] for s in SPECS}
    for wid in sorted(kept, key=lambda w: (data[w].tenant_id, w)):
        for name, labels, value in per_wf[wid]:
            samples[name].append((labels, value))
    return Snapshot(
        built_at=built_at,
        duration=time.perf_counter() - started,
        tenant_label=cfg.tenant_label,
        samples=samples,
        rejected=rejected,
        series=used,
        dropped_series=dropped,
        dropped_workflows=dropped_wfs,
        workflows=len(kept),
        newest_ingested=newest,
        exporter_counters=_exporter_counters(counter_rows),
    )
