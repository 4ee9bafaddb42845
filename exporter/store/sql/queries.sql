-- Read queries shared by the API, the metrics snapshot and the exports.
-- $1 tenant (NULL = every tenant), $2 workflow ids, $3..$8 the range segments.

-- name: workflows
SELECT w.workflow_id, w.tenant_id, w.name, w.source_updated_at
  FROM wfa.workflows w
 WHERE ($1::text IS NULL OR w.tenant_id = $1)
 ORDER BY w.tenant_id, w.workflow_id;

-- name: workflow
SELECT w.workflow_id, w.tenant_id, w.name, w.source_updated_at
  FROM wfa.workflows w
 WHERE w.workflow_id = $2 AND ($1::text IS NULL OR w.tenant_id = $1);

-- name: steps
SELECT s.workflow_id, s.step_id, s.step_index, s.name, s.action_type, s.removed_at
  FROM wfa.workflow_steps s JOIN wfa.workflows w USING (workflow_id)
 WHERE s.workflow_id = ANY($2::text[]) AND ($1::text IS NULL OR w.tenant_id = $1)
 ORDER BY s.workflow_id, s.removed_at IS NOT NULL, s.step_index;

-- name: cohort
SELECT workflow_id, status, current_step_id, sum(executions)::bigint AS executions,
       sum(converted)::bigint AS converted, sum(converted_in_window)::bigint AS converted_in_window
  FROM wfa.cohort_range($1, $2, $3, $4, $5, $6, $7, $8)
 GROUP BY 1, 2, 3;

-- name: cohort_steps
SELECT workflow_id, step_id, sum(reached)::bigint AS reached
  FROM wfa.cohort_steps_range($1, $2, $3, $4, $5, $6, $7, $8)
 GROUP BY 1, 2;

-- name: events
SELECT workflow_id, event, reason, duration_le, sum(events)::bigint AS events,
       sum(duration_ms_sum)::bigint AS duration_ms_sum
  FROM wfa.events_range($1, $2, $3, $4, $5, $6, $7, $8)
 GROUP BY 1, 2, 3, 4;

-- name: events_series
SELECT date_trunc($9, t, $10) AS bucket, event, sum(events)::bigint AS events
  FROM wfa.events_range($1, $2, $3, $4, $5, $6, $7, $8)
 GROUP BY 1, 2
 ORDER BY 1;

-- name: step_runs
SELECT workflow_id, step_id, action_type, status, duration_le, error,
       sum(runs)::bigint AS runs, sum(duration_ms_sum)::bigint AS duration_ms_sum
  FROM wfa.step_runs_range($1, $2, $3, $4, $5, $6, $7, $8)
 GROUP BY 1, 2, 3, 4, 5, 6;
