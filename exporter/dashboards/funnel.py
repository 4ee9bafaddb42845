"""The "Funnel and drop-off" dashboard: cohort and activity funnels side by side, per workflow."""

from __future__ import annotations

from exporter.dashboards.panels import (
    MIN_VOLUME_VAR,
    PROM_VAR,
    STEP_VAR,
    STORE_VAR,
    TENANT_VAR,
    WINDOW_VAR,
    WORKFLOW_VAR,
    Json,
    Pos,
    bargauge,
    dashboard,
    high_is_bad,
    override,
    prom,
    row,
    sql,
    steps,
    table,
    timeseries,
)
from exporter.dashboards.promql import WF_STEP, step_names

UID = "wfa-funnel"

_STEPS = """steps AS (
  SELECT step_id, step_index, name, action_type
    FROM wfa.workflow_steps
   WHERE workflow_id IN ($workflow) AND removed_at IS NULL
)"""

COHORT_FUNNEL = f"""WITH {_STEPS}, completed AS (
  SELECT coalesce(sum(executions), 0) AS n
    FROM wfa.cohort_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow) AND status = 'completed'
), active AS (
  SELECT current_step_id AS step_id, sum(executions) AS n
    FROM wfa.cohort_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow) AND status = 'active'
   GROUP BY 1
), reached AS (
  SELECT step_id, sum(reached) AS n
    FROM wfa.cohort_steps_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1
), funnel AS (
  SELECT s.step_index, s.name, s.action_type,
         coalesce(r.n, 0) AS reached,
         coalesce(a.n, 0) AS in_progress,
         coalesce(lead(coalesce(r.n, 0)) OVER (ORDER BY s.step_index),
                  (SELECT n FROM completed)) AS next_reached
    FROM steps s
    LEFT JOIN reached r USING (step_id)
    LEFT JOIN active a USING (step_id)
), ratios AS (
  SELECT *, reached - next_reached - in_progress AS dropped,
         (reached - next_reached - in_progress)::float8 / nullif(reached, 0) AS dropoff_ratio
    FROM funnel
), bottleneck AS (
  SELECT step_index FROM ratios
   WHERE reached >= $min_volume AND dropoff_ratio > 0
   ORDER BY dropoff_ratio DESC, step_index
   LIMIT 1
)
SELECT (step_index + 1) || '. ' || name AS "Step", action_type AS "Action",
       reached AS "Reached", in_progress AS "In progress", dropped AS "Dropped",
       dropoff_ratio AS "Drop-off ratio",
       CASE WHEN step_index = (SELECT step_index FROM bottleneck) THEN 'bottleneck' ELSE ''
       END AS "Bottleneck"
  FROM ratios
 ORDER BY step_index"""

COHORT_REACHED = f"""WITH {_STEPS}, reached AS (
  SELECT step_id, sum(reached) AS n
    FROM wfa.cohort_steps_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1
)
SELECT (s.step_index + 1) || '. ' || s.name AS "Step", coalesce(r.n, 0) AS "Reached"
  FROM steps s LEFT JOIN reached r USING (step_id)
 ORDER BY s.step_index"""

ACTIVITY_FUNNEL = f"""WITH {_STEPS}, runs AS (
  SELECT step_id,
         sum(runs) AS attempts,
         coalesce(sum(runs) FILTER (WHERE status = 'succeeded'), 0) AS succeeded,
         coalesce(sum(runs) FILTER (WHERE status = 'failed'), 0) AS failed,
         coalesce(sum(runs) FILTER (WHERE status = 'skipped'), 0) AS skipped,
         coalesce(sum(runs) FILTER (WHERE status = 'running'), 0) AS running
    FROM wfa.step_runs_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1
)
SELECT (s.step_index + 1) || '. ' || s.name AS "Step", s.action_type AS "Action",
       coalesce(r.attempts, 0) AS "Attempts entered",
       coalesce(r.succeeded, 0) AS "Succeeded", coalesce(r.failed, 0) AS "Failed",
       coalesce(r.skipped, 0) AS "Skipped", coalesce(r.running, 0) AS "Running",
       coalesce(r.attempts, 0)::float8
         / nullif(first_value(coalesce(r.attempts, 0)) OVER (ORDER BY s.step_index), 0)
         AS "Relative to first step"
  FROM steps s LEFT JOIN runs r USING (step_id)
 ORDER BY s.step_index"""

ACTIVITY_ATTEMPTS = f"""WITH {_STEPS}, runs AS (
  SELECT step_id, sum(runs) AS n
    FROM wfa.step_runs_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1
)
SELECT (s.step_index + 1) || '. ' || s.name AS "Step", coalesce(r.n, 0) AS "Attempts entered"
  FROM steps s LEFT JOIN runs r USING (step_id)
 ORDER BY s.step_index"""

DROPOFF_BY_ENROLLMENT = f"""WITH {_STEPS}, reached AS (
  SELECT $__timeGroupAlias(bucket, $__interval), step_id, sum(reached) AS n
    FROM wfa.cohort_steps_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1, 2
), cohort AS (
  SELECT $__timeGroupAlias(bucket, $__interval), status, current_step_id, sum(executions) AS n
    FROM wfa.cohort_1h
   WHERE $__timeFilter(bucket) AND workflow_id IN ($workflow)
   GROUP BY 1, 2, 3
), grid AS (
  SELECT t."time", s.step_id, s.step_index, s.name, coalesce(r.n, 0) AS reached,
         coalesce(lead(coalesce(r.n, 0)) OVER (PARTITION BY t."time" ORDER BY s.step_index),
                  (SELECT coalesce(sum(c.n), 0) FROM cohort c
                    WHERE c."time" = t."time" AND c.status = 'completed')) AS next_reached,
         (SELECT coalesce(sum(c.n), 0) FROM cohort c
           WHERE c."time" = t."time" AND c.status = 'active'
             AND c.current_step_id = s.step_id) AS in_progress
    FROM (SELECT DISTINCT "time" FROM reached) t
   CROSS JOIN steps s
    LEFT JOIN reached r ON r."time" = t."time" AND r.step_id = s.step_id
)
SELECT "time", (step_index + 1) || '. ' || name AS metric,
       (reached - next_reached - in_progress)::float8 / nullif(reached, 0) AS value
  FROM grid
 WHERE step_id IN ($step)
 ORDER BY 1, 2"""

_DROPOFF = high_is_bad(0.3, 0.5)
_RATIO = {"unit": "percentunit", "min": 0, "max": 1}
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


def panels() -> list[Json]:
    """One row per selected workflow (repeated), then drop-off over time."""
    half = Pos(12, 9)
    return [
        row("Funnels: ${workflow:text}", repeat="workflow"),
        bargauge(
            "Cohort funnel: reached per step",
            "Cohort funnel: of the executions enrolled in the time range (followed to now), "
            "how many reached each step. Compare with the activity funnel on the right, "
            "which counts attempts whatever the enrollment time.",
            [sql(COHORT_REACHED)],
            unit="short",
            size=half,
        ),
        bargauge(
            "Activity funnel: attempts entered per step",
            "Activity funnel: step attempts whose entry falls in the time range, whenever the "
            "contact enrolled (retries count again). Not a cohort: do not read drop-off here.",
            [sql(ACTIVITY_ATTEMPTS)],
            unit="short",
            size=half,
        ),
        table(
            "Cohort funnel: drop-off per step",
            "Executions enrolled in the time range: reached, still in progress at the step, "
            "dropped (reached minus reached the next step minus in progress) and the drop-off "
            "ratio. The bottleneck is the highest ratio among steps reached by at least "
            "$min_volume executions.",
            [sql(COHORT_FUNNEL)],
            size=half,
            overrides=[
                override(
                    "Drop-off ratio",
                    **_RATIO,
                    thresholds=_DROPOFF,
                    cell={"type": "color-background", "mode": "gradient"},
                ),
                _BOTTLENECK,
            ],
        ),
        table(
            "Activity funnel: attempts per step",
            "Step attempts entered in the time range and their current status; relative to the "
            "attempts of the first step.",
            [sql(ACTIVITY_FUNNEL)],
            size=half,
            overrides=[override("Relative to first step", unit="percentunit", min=0)],
        ),
        row("Drop-off over time"),
        timeseries(
            "Drop-off ratio per step (trailing cohort window)",
            "Per step, dropped / reached among the executions enrolled in the trailing "
            "$window window, as the exporter computes it at each snapshot.",
            [
                prom(
                    step_names(
                        "max by (workflow, step) "
                        f'(wfa_funnel_dropoff_ratio{{{WF_STEP}, window="$window"}})'
                    ),
                    "{{step_name}}",
                )
            ],
            unit="percentunit",
            thresholds=_DROPOFF,
            max_value=1,
            size=Pos(24, 9),
        ),
        timeseries(
            "Drop-off ratio per step by enrollment time (store)",
            "Per step, the drop-off ratio of the executions enrolled in each time bucket "
            "(cohort definition from the store's hourly rollups).",
            [sql(DROPOFF_BY_ENROLLMENT, fmt="time_series")],
            unit="percentunit",
            thresholds=_DROPOFF,
            max_value=1,
            size=Pos(24, 9),
            interval="1h",
        ),
    ]


def build() -> Json:
    """The funnel and drop-off dashboard."""
    return dashboard(
        UID,
        "Funnel and drop-off",
        "Cohort funnel (enrolled in the range, followed to now) and activity funnel (attempts in "
        "the range) side by side per workflow, and drop-off over time per step.",
        panels(),
        [
            PROM_VAR,
            STORE_VAR,
            TENANT_VAR,
            WORKFLOW_VAR,
            STEP_VAR,
            WINDOW_VAR,
            MIN_VOLUME_VAR,
        ],
        tags=("funnel",),
        time_from="now-7d",
    )
