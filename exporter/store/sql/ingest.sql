-- Statements of one ingest batch. Arrays are bound as parameters, never interpolated.
-- The raw-row upserts are generated from the row types (exporter/store/rows.py).

-- name: old_executions
-- LATERAL with LIMIT keeps this a nested loop of primary-key probes, each pruned to one
-- partition or chunk at run time, instead of a scan of the whole mirror.
SELECT e.*
  FROM unnest($1::text[], $2::timestamptz[]) AS k(execution_id, enrolled_at)
 CROSS JOIN LATERAL (
       SELECT x.execution_id, x.enrolled_at, x.source_updated_at, x.completed_at,
              x.converted_at, x.exited_at, x.failed_at, x.exit_reason, x.attempts
         FROM wfa.executions x
        WHERE x.execution_id = k.execution_id AND x.enrolled_at = k.enrolled_at
        LIMIT 1) AS e;

-- name: delete_events
DELETE FROM wfa.workflow_events WHERE execution_id = $1 AND event = $2 AND occurred_at = $3;

-- name: delete_step_runs
DELETE FROM wfa.step_runs WHERE execution_id = $1 AND step_id = $2 AND entered_at = $3;

-- name: delete_execution_steps
DELETE FROM wfa.execution_steps WHERE execution_id = $1 AND step_id = $2 AND enrolled_at = $3;

-- name: invalidate
INSERT INTO wfa.invalidations (rollup, bucket)
SELECT * FROM unnest($1::text[], $2::timestamptz[])
ON CONFLICT DO NOTHING;

-- name: bump_counters
INSERT INTO wfa.counters AS c (metric, tenant_id, workflow_id, step_id, action_type, label, value)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                     $7::bigint[])
ON CONFLICT (metric, tenant_id, workflow_id, step_id, action_type, label)
DO UPDATE SET value = c.value + excluded.value;

-- name: reject
INSERT INTO wfa.rejected_rows (source_table, source_id, source_updated_at, reason, detail, raw)
SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[], $4::text[], $5::text[],
                     $6::jsonb[])
ON CONFLICT DO NOTHING
RETURNING reason;

-- name: save_cursor
-- One writer (the fenced leader) saves the state it computed; advanced_at is when the head moved.
INSERT INTO wfa.cursors AS c (name, updated_at, id, advanced_at, checked_updated_at, checked_id,
       read_at, rest_from)
VALUES ($1, $2, $3, now(), $4, $5, $6, $7)
ON CONFLICT (name) DO UPDATE SET updated_at = excluded.updated_at, id = excluded.id,
       advanced_at = CASE WHEN (c.updated_at, c.id) = (excluded.updated_at, excluded.id)
                          THEN c.advanced_at ELSE now() END,
       checked_updated_at = excluded.checked_updated_at, checked_id = excluded.checked_id,
       read_at = excluded.read_at, rest_from = excluded.rest_from;

-- name: load_cursors
SELECT name, updated_at, id, checked_updated_at, checked_id, read_at, rest_from
  FROM wfa.cursors WHERE name = ANY($1::text[]);

-- name: get_cursor
SELECT updated_at, id FROM wfa.cursors WHERE name = $1;

-- name: load_workflows
SELECT w.workflow_id, w.tenant_id, w.source_updated_at, s.step_id, s.action_type
  FROM wfa.workflows w LEFT JOIN wfa.workflow_steps s USING (workflow_id);

-- name: upsert_workflow
INSERT INTO wfa.workflows (workflow_id, tenant_id, name, source_updated_at)
VALUES ($1, $2, $3, $4)
ON CONFLICT (workflow_id) DO UPDATE SET tenant_id = excluded.tenant_id, name = excluded.name,
       source_updated_at = excluded.source_updated_at, ingested_at = now();

-- name: upsert_steps
INSERT INTO wfa.workflow_steps (workflow_id, step_id, step_index, name, action_type, removed_at)
SELECT $1, * , NULL FROM unnest($2::text[], $3::int[], $4::text[], $5::text[])
ON CONFLICT (workflow_id, step_id) DO UPDATE SET step_index = excluded.step_index,
       name = excluded.name, action_type = excluded.action_type, removed_at = NULL;

-- name: remove_steps
UPDATE wfa.workflow_steps SET removed_at = now()
 WHERE workflow_id = $1 AND removed_at IS NULL AND NOT (step_id = ANY($2::text[]));
