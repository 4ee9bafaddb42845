"""The "Workflow overview" dashboard."""

from __future__ import annotations

from exporter.metrics.snapshot import window_label
from monitoring.panels import (
    FUNNEL_LINK,
    PROM_VAR,
    STORE_VAR,
    TENANT_VAR,
    WORKFLOW_VAR,
    Json,
    dashboard,
    low_is_bad,
    override,
    prom,
    row,
    sql,
    stat,
    steps,
    table,
    timeseries,
)
from monitoring.promql import increase, rate, wf, workflow_names
from monitoring.settings import Settings, last

UID = "wfa-overview"

_COUNTERS = (
    ("Enrollments", "wfa_workflow_enrollments_total", "Executions enrolled in the time range."),
    ("Completions", "wfa_workflow_completions_total", "Executions completed in the time range."),
    (
        "Conversions",
        "wfa_workflow_conversions_total",
        "Executions that converted on the workflow goal in the time range.",
    ),
)

COMPLETION_RATE = """SELECT sum(executions) FILTER (WHERE status = 'completed')::float8
       / nullif(sum(executions), 0) AS "Completion rate"
FROM wfa.cohort_1h
WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)"""

CONVERSION_RATE = """SELECT sum(converted_in_window)::float8
       / nullif(sum(executions), 0) AS "Conversion rate"
FROM wfa.cohort_1h
WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)"""

EVENTS_SERIES = """SELECT $__timeGroupAlias(bucket, $__interval), event AS metric,
       sum(events)::float8 AS value
FROM wfa.events_1h
WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
GROUP BY 1, 2
ORDER BY 1, 2"""

_PERIODS = """WITH cur AS (
  SELECT workflow_id,
         sum(executions) AS enrolled,
         coalesce(sum(executions) FILTER (WHERE status = 'completed'), 0) AS completed,
         coalesce(sum(executions) FILTER (WHERE status = 'active'), 0) AS active,
         sum(converted_in_window) AS converted
    FROM wfa.cohort_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1
), prev AS (
  SELECT workflow_id, sum(executions) AS enrolled, sum(converted_in_window) AS converted
    FROM wfa.cohort_1h
   WHERE bucket >= $__timeFrom()::timestamptz
                    - ($__timeTo()::timestamptz - $__timeFrom()::timestamptz)
     AND bucket < $__timeFrom()::timestamptz
     AND workflow_id IN ($workflow)
   GROUP BY 1
), rates AS (
  SELECT w.workflow_id, w.name, w.tenant_id, c.enrolled, c.completed, c.active, c.converted,
         c.completed::float8 / nullif(c.enrolled, 0) AS completion_rate,
         c.converted::float8 / nullif(c.enrolled, 0) AS conversion_rate,
         p.enrolled AS prev_enrolled,
         p.converted::float8 / nullif(p.enrolled, 0) AS prev_conversion_rate
    FROM cur c
    JOIN wfa.workflows w USING (workflow_id)
    LEFT JOIN prev p USING (workflow_id)
)"""

BY_VOLUME = (
    _PERIODS
    + """
SELECT workflow_id, name AS "Workflow", tenant_id AS "Tenant", enrolled AS "Enrolled",
       completed AS "Completed", converted AS "Converted", active AS "In progress",
       completion_rate AS "Completion rate", conversion_rate AS "Conversion rate"
  FROM rates
 ORDER BY enrolled DESC, name"""
)

BY_CHANGE = (
    _PERIODS
    + """
SELECT workflow_id, name AS "Workflow", enrolled AS "Enrolled",
       prev_enrolled AS "Enrolled before",
       conversion_rate AS "Conversion rate", prev_conversion_rate AS "Previous conversion rate",
       conversion_rate - prev_conversion_rate AS "Conversion change"
  FROM rates
 ORDER BY conversion_rate - prev_conversion_rate ASC NULLS LAST, enrolled DESC"""
)

_RATIO = {"unit": "percentunit", "min": 0, "max": 1}
_CHANGE_COLORS = steps(("red", None), ("orange", -0.05), ("green", 0))


def _workflow_link() -> Json:
    return override(
        "Workflow",
        links=[{"title": "Funnel and drop-off for ${__data.fields.Workflow}", "url": FUNNEL_LINK}],
    )


def panels(s: Settings) -> list[Json]:
    """Panels of the overview dashboard, top to bottom."""
    m = wf(s)
    window = window_label(s.monitoring.conversion_drop.window)
    trailing = last(s.monitoring.conversion_drop.window)
    out: list[Json] = [row("Activity in the time range")]
    for title, metric, description in _COUNTERS:
        out.append(
            stat(
                title,
                description + " Counted by the exporter's persisted counters (Prometheus).",
                [prom(f"sum({increase(metric, m)})", title, instant=True)],
                unit="short",
                decimals=0,
            )
        )
    out.append(
        stat(
            "Active executions",
            "Executions with status active right now, over the selected workflows.",
            [prom(f"sum(wfa_workflow_active_executions{{{m}}})", "active")],
            unit="short",
            decimals=0,
        )
    )
    out.append(
        stat(
            "Completion rate (cohort)",
            "Of the executions enrolled in the whole hours that start in the time range, the "
            "share completed so far, over the selected workflows (cohort definition, from the "
            "store).",
            [sql(COMPLETION_RATE)],
            unit="percentunit",
            thresholds=low_is_bad(0.5, 0.25),
            graph=False,
        )
    )
    out.append(
        stat(
            "Conversion rate (cohort)",
            "Of the executions enrolled in the whole hours that start in the time range, the "
            "share that converted within the "
            "workflow's conversion window (cohort definition; from the store).",
            [sql(CONVERSION_RATE)],
            unit="percentunit",
            thresholds=low_is_bad(0.1, 0.05),
            graph=False,
        )
    )
    out += [
        timeseries(
            "Workflow events per minute",
            "Enrollments, completions, conversions, exits and failures per minute "
            "(rate of the exporter counters).",
            [
                prom(f"sum({rate('wfa_workflow_enrollments_total', m)}) * 60", "enrolled", "A"),
                prom(f"sum({rate('wfa_workflow_completions_total', m)}) * 60", "completed", "B"),
                prom(f"sum({rate('wfa_workflow_conversions_total', m)}) * 60", "converted", "C"),
                prom(
                    f"sum by (reason) ({rate('wfa_workflow_exits_total', m)}) * 60",
                    "exited: {{reason}}",
                    "D",
                ),
                prom(f"sum({rate('wfa_workflow_failures_total', m)}) * 60", "failed", "E"),
            ],
            unit="cpm",
        ),
        timeseries(
            "Active executions by workflow",
            "Executions currently active, per workflow.",
            [
                prom(
                    workflow_names(f"sum by (workflow) (wfa_workflow_active_executions{{{m}}})", s),
                    "{{workflow_name}}",
                )
            ],
            unit="short",
            stack=True,
        ),
        timeseries(
            f"Cohort conversion and completion rate (trailing {trailing})",
            f"Of the executions enrolled in the trailing {trailing}, the share converted and "
            f"completed, per workflow (exporter funnel gauges, window {window}).",
            [
                prom(
                    workflow_names(
                        "max by (workflow) "
                        f'(wfa_funnel_conversion_ratio{{{m}, window="{window}"}})',
                        s,
                    ),
                    "converted: {{workflow_name}}",
                    "A",
                ),
                prom(
                    workflow_names(
                        "max by (workflow) "
                        f'(wfa_funnel_completion_ratio{{{m}, window="{window}"}})',
                        s,
                    ),
                    "completed: {{workflow_name}}",
                    "B",
                ),
            ],
            unit="percentunit",
            max_value=1,
        ),
        timeseries(
            "Workflow events per hour (store)",
            "Enrollments, completions, conversions, exits and failures per time bucket from "
            "the store's hourly rollups; matches the exports and the API.",
            [sql(EVENTS_SERIES, fmt="time_series")],
            unit="short",
            interval="1h",
        ),
        row("Workflows"),
        table(
            "Workflows by volume",
            "Per workflow, the executions enrolled in the whole hours that start in the time "
            "range and what became of them "
            "(cohort definition). Click a workflow to open its funnel.",
            [sql(BY_VOLUME)],
            overrides=[
                override("workflow_id", hidden=True),
                _workflow_link(),
                override("Completion rate", **_RATIO),
                override("Conversion rate", **_RATIO),
            ],
            sort_by=[{"displayName": "Enrolled", "desc": True}],
        ),
        table(
            "Conversion change against the previous period",
            "Cohort conversion rate in the time range against the period of the same length "
            "just before it; the largest drops first.",
            [sql(BY_CHANGE)],
            overrides=[
                override("workflow_id", hidden=True),
                _workflow_link(),
                override("Conversion rate", **_RATIO),
                override("Previous conversion rate", **_RATIO),
                override(
                    "Conversion change",
                    unit="percentunit",
                    thresholds=_CHANGE_COLORS,
                    cell={"type": "color-text"},
                ),
            ],
        ),
    ]
    return out


def build(s: Settings) -> Json:
    """The overview dashboard."""
    return dashboard(
        UID,
        "Workflow overview",
        "Enrollments, completions, conversions and active executions across workflows.",
        panels(s),
        [PROM_VAR, STORE_VAR, TENANT_VAR, WORKFLOW_VAR],
        tags=("overview",),
    )
