-- Reads of the metrics snapshot job (the scrape itself never queries).

-- name: counters
SELECT metric, tenant_id, workflow_id, step_id, action_type, label, value
  FROM wfa.counters
 ORDER BY workflow_id, metric, step_id, label;

-- name: active
-- Active executions now, per workflow and current step, from the cohort rollups over all time.
-- $1 workflow ids, $2..$7 the range segments.
SELECT workflow_id, current_step_id, sum(executions)::bigint AS executions
  FROM wfa.cohort_range(NULL::text, $1, $2, $3, $4, $5, $6, $7)
 WHERE status = 'active'
 GROUP BY 1, 2;

-- name: newest_ingested
SELECT updated_at
  FROM wfa.cursors
 WHERE name = 'executions';
