"""The "Funnel and drop-off" dashboard: cohort and activity funnels side by side, per workflow.

Every query computes per workflow: window functions are partitioned by workflow and every join
matches workflow and step, so several selected workflows give one funnel each, never a blend.
The funnel row repeats once per selected workflow.
"""

from __future__ import annotations

from exporter.metrics.snapshot import window_label
from monitoring.panels import (
    ACTIONS_LINK,
    MIN_VOLUME,
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
    min_volume_var,
    override,
    prom,
    row,
    sql,
    steps,
    table,
    timeseries,
    window_var,
)
from monitoring.promql import all_names, wf_step
from monitoring.settings import Settings

UID = "wfa-funnel"

STEPS = """steps AS (
  SELECT s.workflow_id, w.name AS workflow, s.step_id, s.step_index, s.name, s.action_type
    FROM wfa.workflow_steps s
    JOIN wfa.workflows w USING (workflow_id)
   WHERE s.workflow_id IN ($workflow) AND s.removed_at IS NULL
)"""
"""The current steps of the selected workflows, with the workflow's name."""

LABEL = """CASE WHEN (SELECT count(DISTINCT workflow_id) FROM steps) > 1
            THEN {s}.workflow || ' (' || {s}.workflow_id || ') / ' ELSE '' END
       || ({s}.step_index + 1) || '. ' || {s}.name"""
"""A step's label; prefixed with its workflow when several workflows are selected."""

COHORT_FUNNEL = f"""WITH {STEPS}, cohort AS (
  SELECT workflow_id, status, current_step_id, sum(executions)::bigint AS n
    FROM wfa.cohort_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1, 2, 3
), reached AS (
  SELECT workflow_id, step_id, sum(reached)::bigint AS n
    FROM wfa.cohort_steps_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1, 2
), funnel AS (
  SELECT s.workflow_id, s.workflow, s.step_id, s.step_index, s.name, s.action_type,
         coalesce(r.n, 0) AS reached,
         (SELECT coalesce(sum(c.n), 0) FROM cohort c
           WHERE c.workflow_id = s.workflow_id AND c.status = 'active'
             AND c.current_step_id = s.step_id)::bigint AS in_progress,
         coalesce(lead(coalesce(r.n, 0)) OVER by_workflow,
                  (SELECT coalesce(sum(c.n), 0) FROM cohort c
                    WHERE c.workflow_id = s.workflow_id AND c.status = 'completed'))::bigint
           AS next_reached
    FROM steps s
    LEFT JOIN reached r ON r.workflow_id = s.workflow_id AND r.step_id = s.step_id
  WINDOW by_workflow AS (PARTITION BY s.workflow_id ORDER BY s.step_index)
), ratios AS (
  SELECT *, reached - next_reached - in_progress AS dropped,
         (reached - next_reached - in_progress)::float8 / nullif(reached, 0) AS dropoff_ratio
    FROM funnel
), bottleneck AS (
  SELECT DISTINCT ON (workflow_id) workflow_id, step_index
    FROM ratios
   WHERE reached >= {MIN_VOLUME} AND dropoff_ratio > 0
   ORDER BY workflow_id, dropoff_ratio DESC, step_index
)
SELECT r.workflow AS "Workflow", (r.step_index + 1) || '. ' || r.name AS "Step",
       r.action_type AS "Action", r.reached AS "Reached", r.in_progress AS "In progress",
       r.dropped AS "Dropped", r.dropoff_ratio AS "Drop-off ratio",
       CASE WHEN b.step_index IS NULL THEN '' ELSE 'bottleneck' END AS "Bottleneck",
       r.workflow_id, r.step_id
  FROM ratios r
  LEFT JOIN bottleneck b ON b.workflow_id = r.workflow_id AND b.step_index = r.step_index
 ORDER BY r.workflow, r.workflow_id, r.step_index"""

COHORT_REACHED = f"""WITH {STEPS}, reached AS (
  SELECT workflow_id, step_id, sum(reached)::bigint AS n
    FROM wfa.cohort_steps_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1, 2
)
SELECT {LABEL.format(s="s")} AS "Step",
       coalesce(r.n, 0) AS "Reached"
  FROM steps s
  LEFT JOIN reached r ON r.workflow_id = s.workflow_id AND r.step_id = s.step_id
 ORDER BY s.workflow, s.workflow_id, s.step_index"""

ACTIVITY_FUNNEL = f"""WITH {STEPS}, runs AS (
  SELECT workflow_id, step_id,
         sum(runs)::bigint AS attempts,
         coalesce(sum(runs) FILTER (WHERE status = 'succeeded'), 0)::bigint AS succeeded,
         coalesce(sum(runs) FILTER (WHERE status = 'failed'), 0)::bigint AS failed,
         coalesce(sum(runs) FILTER (WHERE status = 'skipped'), 0)::bigint AS skipped,
         coalesce(sum(runs) FILTER (WHERE status = 'running'), 0)::bigint AS running
    FROM wfa.step_runs_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1, 2
)
SELECT s.workflow AS "Workflow", (s.step_index + 1) || '. ' || s.name AS "Step",
       s.action_type AS "Action",
       coalesce(r.attempts, 0) AS "Attempts entered",
       coalesce(r.succeeded, 0) AS "Succeeded", coalesce(r.failed, 0) AS "Failed",
       coalesce(r.skipped, 0) AS "Skipped", coalesce(r.running, 0) AS "Running",
       coalesce(r.attempts, 0)::float8
         / nullif(first_value(coalesce(r.attempts, 0))
                    OVER (PARTITION BY s.workflow_id ORDER BY s.step_index), 0)
         AS "Relative to first step",
       s.workflow_id, s.step_id
  FROM steps s
  LEFT JOIN runs r ON r.workflow_id = s.workflow_id AND r.step_id = s.step_id
 ORDER BY s.workflow, s.workflow_id, s.step_index"""

ACTIVITY_ATTEMPTS = f"""WITH {STEPS}, runs AS (
  SELECT workflow_id, step_id, sum(runs)::bigint AS n
    FROM wfa.step_runs_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1, 2
)
SELECT {LABEL.format(s="s")} AS "Step",
       coalesce(r.n, 0) AS "Attempts entered"
  FROM steps s
  LEFT JOIN runs r ON r.workflow_id = s.workflow_id AND r.step_id = s.step_id
 ORDER BY s.workflow, s.workflow_id, s.step_index"""

DROPOFF_BY_ENROLLMENT = f"""WITH {STEPS}, reached AS (
  SELECT $__timeGroupAlias(bucket, $__interval), workflow_id, step_id, sum(reached) AS n
    FROM wfa.cohort_steps_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1, 2, 3
), cohort AS (
  SELECT $__timeGroupAlias(bucket, $__interval), workflow_id, status, current_step_id,
         sum(executions) AS n
    FROM wfa.cohort_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1, 2, 3, 4
), grid AS (
  SELECT t."time", s.workflow_id, s.workflow, s.step_id, s.step_index, s.name,
         coalesce(r.n, 0) AS reached,
         coalesce(lead(coalesce(r.n, 0))
                    OVER (PARTITION BY t."time", s.workflow_id ORDER BY s.step_index),
                  (SELECT coalesce(sum(c.n), 0) FROM cohort c
                    WHERE c."time" = t."time" AND c.workflow_id = s.workflow_id
                      AND c.status = 'completed')) AS next_reached,
         (SELECT coalesce(sum(c.n), 0) FROM cohort c
           WHERE c."time" = t."time" AND c.workflow_id = s.workflow_id
             AND c.status = 'active' AND c.current_step_id = s.step_id) AS in_progress
    FROM (SELECT DISTINCT "time", workflow_id FROM reached) t
    JOIN steps s ON s.workflow_id = t.workflow_id
    LEFT JOIN reached r
      ON r."time" = t."time" AND r.workflow_id = s.workflow_id AND r.step_id = s.step_id
)
SELECT g."time", {LABEL.format(s="g")} AS metric,
       (g.reached - g.next_reached - g.in_progress)::float8 / nullif(g.reached, 0) AS value
  FROM grid g
 WHERE g.step_id IN ($step)
 ORDER BY 1, 2"""

_BOTTLENECK = override(
    "Bottleneck",
    unit="none",
    mappings=[
        {
            "type": "value",
            "options": {"bottleneck": {"text": "bottleneck", "color": "red", "index": 0}},
        }
    ],
    cell={"type": "color-background", "mode": "basic"},
    thresholds=steps(("transparent", None)),
)


def dropoff_thresholds(s: Settings) -> Json:
    """Orange from 60% of the alert's drop-off ratio, red from the ratio itself."""
    ratio = s.monitoring.dropoff.ratio
    return high_is_bad(round(ratio * 0.6, 4), ratio)


_STEP_LINKS = [
    override("workflow_id", hidden=True),
    override("step_id", hidden=True),
    override(
        "Step",
        links=[
            {"title": "Action performance of ${__data.fields.Step}", "url": ACTIONS_LINK}
        ],
    ),
]
"""Hidden ids, and a link from each step to its action performance."""


def panels(s: Settings) -> list[Json]:
    """One row per selected workflow (repeated), then drop-off over time."""
    half = Pos(12, 9)
    dropoff = dropoff_thresholds(s)
    ratio = {"unit": "percentunit", "min": 0, "max": 1}
    return [
        row("Funnels: ${workflow:text}", repeat="workflow"),
        bargauge(
            "Cohort funnel: reached per step",
            "Cohort funnel: of the executions enrolled in the whole hours that start in the "
            "time range (followed to now), how many reached each step. Compare with the "
            "activity funnel on the right, which counts attempts whatever the enrollment time.",
            [sql(COHORT_REACHED)],
            unit="short",
            size=half,
        ),
        bargauge(
            "Activity funnel: attempts entered per step",
            "Activity funnel: step attempts entered in the whole hours that start in the time "
            "range, whenever the contact enrolled (retries count again). Not a cohort: do not "
            "read drop-off here.",
            [sql(ACTIVITY_ATTEMPTS)],
            unit="short",
            size=half,
        ),
        table(
            "Cohort funnel: drop-off per step",
            "Executions enrolled in the whole hours that start in the time range, per "
            "workflow: reached, still in progress at the step, dropped (reached minus reached "
            "the next step minus in progress) and the drop-off ratio. The bottleneck of each "
            "workflow is its highest ratio among steps reached by at least $min_volume "
            "executions. Click a step to open its action performance.",
            [sql(COHORT_FUNNEL)],
            size=half,
            overrides=[
                override(
                    "Drop-off ratio",
                    **ratio,
                    thresholds=dropoff,
                    cell={"type": "color-background", "mode": "gradient"},
                ),
                _BOTTLENECK,
                *_STEP_LINKS,
            ],
        ),
        table(
            "Activity funnel: attempts per step",
            "Step attempts entered in the whole hours that start in the time range and their "
            "current status, per workflow; relative to the attempts of its first step. Click a "
            "step to open its action performance.",
            [sql(ACTIVITY_FUNNEL)],
            size=half,
            overrides=[
                override("Relative to first step", unit="percentunit", min=0),
                *_STEP_LINKS,
            ],
        ),
        row("Drop-off over time"),
        timeseries(
            "Drop-off ratio per step (trailing cohort window)",
            "Per workflow and step, dropped / reached among the executions enrolled in the "
            "trailing $window window, as the exporter computes it at each snapshot.",
            [
                prom(
                    all_names(
                        "max by (workflow, step) "
                        f'(wfa_funnel_dropoff_ratio{{{wf_step(s)}, window="$window"}})',
                        s,
                    ),
                    "{{workflow_name}} / {{step_name}}",
                )
            ],
            unit="percentunit",
            thresholds=dropoff,
            max_value=1,
            size=Pos(24, 9),
        ),
        timeseries(
            "Drop-off ratio per step by enrollment time (store)",
            "Per workflow and step, the drop-off ratio of the executions enrolled in each time "
            "bucket (cohort definition from the store's hourly rollups).",
            [sql(DROPOFF_BY_ENROLLMENT, fmt="time_series")],
            unit="percentunit",
            thresholds=dropoff,
            max_value=1,
            size=Pos(24, 9),
            interval="1h",
        ),
    ]


def build(s: Settings) -> Json:
    """The funnel and drop-off dashboard."""
    windows = [window_label(w) for w in s.metrics.windows]
    default = window_label(s.monitoring.dropoff.window)
    return dashboard(
        UID,
        "Funnel and drop-off",
        "Cohort funnel (enrolled in the range, followed to now) and activity funnel (attempts in "
        "the range) side by side, one per workflow, and drop-off over time per step.",
        panels(s),
        [
            PROM_VAR,
            STORE_VAR,
            TENANT_VAR,
            WORKFLOW_VAR,
            STEP_VAR,
            window_var(windows, default if default in windows else windows[0]),
            min_volume_var(s.min_volume),
        ],
        tags=("funnel",),
        time_from="now-7d",
    )
