"""The "Action performance" dashboard: runs, success, failures and durations per step."""

from __future__ import annotations

from monitoring.panels import (
    FUNNEL_LINK,
    PROM_VAR,
    STEP_VAR,
    STORE_VAR,
    TENANT_VAR,
    WORKFLOW_VAR,
    Json,
    Pos,
    bargauge,
    dashboard,
    high_is_bad,
    low_is_bad,
    override,
    prom,
    row,
    sql,
    stat,
    table,
    timeseries,
)
from monitoring.promql import (
    all_names,
    increase,
    quantile,
    rate,
    wf_step,
)
from monitoring.settings import Settings

UID = "wfa-actions"
_RUNS = "wfa_step_runs_total"
_OUTCOMES = "wfa_step_outcomes_total"
_DURATION = "wfa_step_duration_seconds"
_BY_STEP = "workflow, step, action_type"
_SLOW = high_is_bad(60, 600)
ERROR_CHARS = 200
"""Error texts are shown cut to this many characters (they are free text from the source)."""

TOP_ERRORS = f"""SELECT left(r.error, {ERROR_CHARS}) AS "Error", w.name AS "Workflow",
       (s.step_index + 1) || '. ' || s.name AS "Step", r.action_type AS "Action",
       sum(r.runs)::bigint AS "Failures", max(r.bucket) AS "Last seen (hour)",
       r.workflow_id
  FROM wfa.step_runs_1h r
  JOIN wfa.workflows w ON w.workflow_id = r.workflow_id
  LEFT JOIN wfa.workflow_steps s ON s.workflow_id = r.workflow_id AND s.step_id = r.step_id
 WHERE $__timeFilter(r.bucket) AND r.workflow_id IN ($workflow) AND r.step_id IN ($step)
   AND r.status = 'failed' AND r.error IS NOT NULL
 GROUP BY 1, r.workflow_id, 2, 3, 4
 ORDER BY "Failures" DESC, 1, 2, 3
 LIMIT 20"""


class _M:
    """The matchers of this dashboard's queries."""

    def __init__(self, s: Settings):
        self.step = wf_step(s)
        self.ok = self.step + ', outcome="succeeded"'
        self.failed = self.step + ', outcome="failed"'
        self.done = self.step + ', outcome=~"succeeded|failed"'
        ratio = s.monitoring.failure.ratio
        self.success = low_is_bad(round(1 - ratio / 2, 4), round(1 - ratio, 4))
        self.failure = high_is_bad(round(ratio / 2, 4), ratio)


def _ratio(ok: str, done: str, by: str, window: str) -> str:
    """ok / done, absent where nothing finished (no NaN)."""
    fn = increase if window == "$__range" else rate
    agg = f"sum by ({by}) " if by else "sum"
    return f"{agg}({fn(_OUTCOMES, ok, window)})\n/ ({agg}({fn(_OUTCOMES, done, window)}) > 0)"


def _table_queries(s: Settings, m: _M) -> list[Json]:
    by = _BY_STEP
    exprs = [
        ("A", f"sum by ({by}) ({increase(_RUNS, m.step)})"),
        ("B", _ratio(m.ok, m.done, by, "$__range")),
        ("C", f"sum by ({by}) ({increase(_OUTCOMES, m.failed)})"),
        ("D", quantile(0.5, by, _DURATION, m.step, "$__range")),
        ("E", quantile(0.95, by, _DURATION, m.step, "$__range")),
        ("F", quantile(0.99, by, _DURATION, m.step, "$__range")),
    ]
    return [prom(all_names(e, s), "", ref, instant=True) for ref, e in exprs]


_TABLE_COLUMNS = {
    "Value #A": "Runs",
    "Value #B": "Success ratio",
    "Value #C": "Failures",
    "Value #D": "p50",
    "Value #E": "p95",
    "Value #F": "p99",
}


def _table_transformations() -> list[Json]:
    return [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": {"Time": True, "workflow": True, "step": True},
                "indexByName": {
                    "workflow_name": 0,
                    "step_name": 1,
                    "action_type": 2,
                    **{col: i for i, col in enumerate(_TABLE_COLUMNS, start=3)},
                },
                "renameByName": {
                    "workflow_name": "Workflow",
                    "step_name": "Step",
                    "action_type": "Action",
                    **_TABLE_COLUMNS,
                },
            },
        },
    ]


def panels(s: Settings) -> list[Json]:
    """Panels of the action performance dashboard."""
    m = _M(s)
    by_type = "action_type"
    return [
        row("In the time range"),
        stat(
            "Step runs",
            "Step attempts entered in the time range (selected workflows and steps).",
            [prom(f"sum({increase(_RUNS, m.step)})", "runs", instant=True)],
            unit="short",
            decimals=0,
        ),
        stat(
            "Success ratio",
            "succeeded / (succeeded + failed) over attempts finished in the time range.",
            [prom(_ratio(m.ok, m.done, "", "$__range"), "success", instant=True)],
            unit="percentunit",
            thresholds=m.success,
        ),
        stat(
            "Failures",
            "Step attempts that failed in the time range.",
            [prom(f"sum({increase(_OUTCOMES, m.failed)})", "failures", instant=True)],
            unit="short",
            decimals=0,
            thresholds=high_is_bad(1, 100),
        ),
        stat(
            "p50 duration",
            "Median duration of step attempts finished in the time range (from the duration "
            "histogram, over every selected step).",
            [prom(quantile(0.5, "", _DURATION, m.step, "$__range"), "p50", instant=True)],
            unit="s",
            thresholds=_SLOW,
        ),
        stat(
            "p95 duration",
            "95th percentile duration of step attempts finished in the time range.",
            [prom(quantile(0.95, "", _DURATION, m.step, "$__range"), "p95", instant=True)],
            unit="s",
            thresholds=_SLOW,
        ),
        stat(
            "p99 duration",
            "99th percentile duration of step attempts finished in the time range.",
            [prom(quantile(0.99, "", _DURATION, m.step, "$__range"), "p99", instant=True)],
            unit="s",
            thresholds=_SLOW,
        ),
        row("By action type"),
        timeseries(
            "Runs per minute by action type",
            "Step attempts entered per minute, per action type.",
            [prom(f"sum by ({by_type}) ({rate(_RUNS, m.step)}) * 60", "{{action_type}}")],
            unit="cpm",
            stack=True,
        ),
        timeseries(
            "Success ratio by action type",
            "succeeded / (succeeded + failed) per action type.",
            [prom(_ratio(m.ok, m.done, by_type, "$__rate_interval"), "{{action_type}}")],
            unit="percentunit",
            thresholds=m.success,
            max_value=1,
        ),
        timeseries(
            "Duration percentiles by action type",
            "p50, p95 and p99 of step attempt durations per action type, interpolated from "
            "the histogram buckets like histogram_quantile.",
            [
                prom(
                    quantile(q, by_type, _DURATION, m.step, "$__rate_interval"),
                    f"p{int(q * 100)} {{{{action_type}}}}",
                    ref,
                )
                for ref, q in (("A", 0.5), ("B", 0.95), ("C", 0.99))
            ],
            unit="s",
            thresholds=_SLOW,
        ),
        timeseries(
            "Failures per minute by step",
            "Failed step attempts per minute, per workflow and step.",
            [
                prom(
                    all_names(f"sum by (workflow, step) ({rate(_OUTCOMES, m.failed)}) * 60", s),
                    "{{workflow_name}} / {{step_name}}",
                )
            ],
            unit="cpm",
            thresholds=m.failure,
        ),
        row("By step"),
        table(
            "Per step and action type",
            "Runs, success ratio, failures and p50/p95/p99 duration of each step of each "
            "workflow in the time range.",
            _table_queries(s, m),
            overrides=[
                override(
                    "Success ratio",
                    unit="percentunit",
                    thresholds=m.success,
                    cell={"type": "color-text"},
                ),
                override("p50", unit="s"),
                override("p95", unit="s", thresholds=_SLOW, cell={"type": "color-text"}),
                override("p99", unit="s"),
            ],
            sort_by=[{"displayName": "Runs", "desc": True}],
            transformations=_table_transformations(),
        ),
        bargauge(
            "Slowest steps (p95)",
            "The ten steps with the highest 95th percentile duration in the time range.",
            [
                prom(
                    "topk(10, "
                    + all_names(quantile(0.95, "workflow, step", _DURATION, m.step, "$__range"), s)
                    + ")",
                    "{{workflow_name}} / {{step_name}}",
                    instant=True,
                )
            ],
            unit="s",
            thresholds=_SLOW,
        ),
        bargauge(
            "Most failing steps",
            "The ten steps with the most failed attempts in the time range.",
            [
                prom(
                    "topk(10, "
                    + all_names(f"sum by (workflow, step) ({increase(_OUTCOMES, m.failed)})", s)
                    + ") > 0",
                    "{{workflow_name}} / {{step_name}}",
                    instant=True,
                )
            ],
            unit="short",
            thresholds=high_is_bad(10, 100),
        ),
        table(
            "Top error texts",
            "The most frequent error texts (first 200 characters) of failed attempts entered "
            "in the whole hours that start in the time range (from the store's hourly "
            "rollups).",
            [sql(TOP_ERRORS)],
            size=Pos(24, 9),
            overrides=[
                override("Failures", thresholds=high_is_bad(10, 100), cell={"type": "color-text"}),
                override("workflow_id", hidden=True),
                override(
                    "Workflow",
                    links=[
                        {"title": "Funnel and drop-off for ${__data.fields.Workflow}",
                         "url": FUNNEL_LINK}
                    ],
                ),
            ],
            sort_by=[{"displayName": "Failures", "desc": True}],
        ),
    ]


def build(s: Settings) -> Json:
    """The action performance dashboard."""
    return dashboard(
        UID,
        "Action performance",
        "Per step and action type: runs, success ratio, failures, duration percentiles and "
        "top errors.",
        panels(s),
        [PROM_VAR, STORE_VAR, TENANT_VAR, WORKFLOW_VAR, STEP_VAR],
        tags=("actions",),
    )
