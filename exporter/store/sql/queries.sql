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

-- Each read below is one statement: every part of an answer in one round trip. The
-- `wfa.*_totals` (summed over the range) and `wfa.*_range` (by bucket) functions run
-- cached generic plans, so no call plans across partitions.

-- name: cohort
-- Cohort funnel of each workflow: part 'c' the cohort by status and current step of the
-- active, part 's' executions that reached each step.
SELECT 'c' AS part, workflow_id, status, current_step_id AS step_id,
       sum(executions)::bigint AS n, sum(converted_in_window)::bigint AS converted_in_window
  FROM wfa.cohort_totals($1, $2, $3, $4, $5, $6, $7, $8)
 GROUP BY workflow_id, status, current_step_id
UNION ALL
SELECT 's', workflow_id, NULL, step_id, sum(reached)::bigint, NULL
  FROM wfa.cohort_steps_totals($1, $2, $3, $4, $5, $6, $7, $8)
 GROUP BY workflow_id, step_id;

-- name: events
SELECT workflow_id, event, reason, duration_le, sum(events)::bigint AS events,
       sum(duration_ms_sum)::bigint AS duration_ms_sum
  FROM wfa.events_totals($1, $2, $3, $4, $5, $6, $7, $8)
 GROUP BY 1, 2, 3, 4;

-- name: summary
-- Summary of one workflow. Part 'e': events over the range by kind, reason and duration
-- bucket; part 's': event counts per series bucket ($9 granularity, $10 zone), both from
-- segments planned for the series (exact for the totals too); part 'c': the cohort enrolled
-- in the range by status ($11..$16 the segments for totals). Rows are first summed per
-- segment bucket `t` (a day, an hour or a raw time), so the zone's calendar is applied once
-- per distinct `t` rather than once per row.
WITH g AS (
SELECT grouping(t) AS totals, t, event, reason, duration_le,
       sum(events)::bigint AS n, sum(duration_ms_sum)::bigint AS duration_ms_sum,
       sum(events) FILTER (WHERE event = 'enrolled')::bigint AS enrollments,
       sum(events) FILTER (WHERE event = 'completed')::bigint AS completions,
       sum(events) FILTER (WHERE event = 'converted')::bigint AS conversions,
       sum(events) FILTER (WHERE event = 'exited')::bigint AS exits,
       sum(events) FILTER (WHERE event = 'failed')::bigint AS failures
  FROM wfa.events_range($1, $2, $3, $4, $5, $6, $7, $8)
 GROUP BY GROUPING SETS ((event, reason, duration_le), (t)))
SELECT 'e' AS part, NULL::timestamptz AS bucket, event AS key, reason, duration_le, n,
       duration_ms_sum, NULL::bigint AS enrollments, NULL::bigint AS completions,
       NULL::bigint AS conversions, NULL::bigint AS exits, NULL::bigint AS failures
  FROM g WHERE totals = 1
UNION ALL
SELECT 's', date_trunc($9, t, $10), NULL, NULL, NULL, NULL, NULL,
       sum(enrollments)::bigint, sum(completions)::bigint, sum(conversions)::bigint,
       sum(exits)::bigint, sum(failures)::bigint
  FROM g WHERE totals = 0
 GROUP BY date_trunc($9, t, $10)
UNION ALL
SELECT 'c', NULL, status, NULL, NULL, sum(executions)::bigint, sum(converted_in_window)::bigint,
       NULL, NULL, NULL, NULL, NULL
  FROM wfa.cohort_totals($1, $2, $11, $12, $13, $14, $15, $16)
 GROUP BY status;

-- name: activity
-- Activity funnel of one workflow: part 'r' attempts entered per step, part 'e' events by kind.
SELECT 'r' AS part, step_id AS key, sum(runs)::bigint AS n
  FROM wfa.step_runs_totals($1, $2, $3, $4, $5, $6, $7, $8)
 GROUP BY step_id
UNION ALL
SELECT 'e', event, sum(events)::bigint
  FROM wfa.events_totals($1, $2, $3, $4, $5, $6, $7, $8)
 GROUP BY event;

-- name: step_runs
SELECT workflow_id, step_id, action_type, status, duration_le, error,
       sum(runs)::bigint AS runs, sum(duration_ms_sum)::bigint AS duration_ms_sum
  FROM wfa.step_runs_totals($1, $2, $3, $4, $5, $6, $7, $8)
 GROUP BY 1, 2, 3, 4, 5, 6;

-- name: workflows_page
-- A tenant's workflows by id, after the id $2 (NULL: from the first), $3 of them.
SELECT w.workflow_id, w.tenant_id, w.name, w.source_updated_at
  FROM wfa.workflows w
 WHERE w.tenant_id = $1 AND ($2::text IS NULL OR w.workflow_id > $2)
 ORDER BY w.workflow_id
 LIMIT $3;
