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

-- name: label_lock
SELECT pg_advisory_xact_lock($1);

-- name: label_promotions
SELECT label, source FROM wfa.metric_labels WHERE family = $1;

-- name: label_served
SELECT EXISTS (SELECT 1 FROM wfa.metric_label_families WHERE family = $1);

-- name: label_totals
-- Volume of each label value of counter `metric` over every series.
SELECT label, sum(value)::bigint AS total
  FROM wfa.counters
 WHERE metric = $1
 GROUP BY label;

-- name: promote_labels
INSERT INTO wfa.metric_labels (family, label, source)
SELECT $1, label, source FROM unnest($2::text[], $3::text[]) AS t(label, source)
ON CONFLICT DO NOTHING;

-- name: label_baselines_now
-- Baselines of newly promoted values: what each series had counted so far (in `other`).
INSERT INTO wfa.metric_label_baselines (family, label, tenant_id, workflow_id, value)
SELECT $1, label, tenant_id, workflow_id, sum(value)::bigint
  FROM wfa.counters
 WHERE metric = $2 AND label = ANY($3::text[])
 GROUP BY label, tenant_id, workflow_id
ON CONFLICT DO NOTHING;

-- name: label_mark_served
INSERT INTO wfa.metric_label_families (family) VALUES ($1) ON CONFLICT DO NOTHING;

-- name: label_plan
SELECT l.label, b.tenant_id, b.workflow_id, b.value
  FROM wfa.metric_labels l
  LEFT JOIN wfa.metric_label_baselines b ON b.family = l.family AND b.label = l.label
 WHERE l.family = $1;
