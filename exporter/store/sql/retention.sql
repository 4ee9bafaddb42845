-- Retention: stored policies, their audit trail, runs, and the pieces a run may drop.

-- name: policies
SELECT dataset, workflow_id, period, updated_at, updated_by FROM wfa.retention_policies;

-- name: policy_lock
SELECT pg_advisory_xact_lock($1);

-- name: policy_upsert
INSERT INTO wfa.retention_policies (dataset, workflow_id, period, updated_by)
VALUES ($1, $2, $3, $4)
ON CONFLICT (dataset, workflow_id)
DO UPDATE SET period = excluded.period, updated_at = now(), updated_by = excluded.updated_by;

-- name: policy_delete
DELETE FROM wfa.retention_policies WHERE dataset = $1 AND workflow_id = $2;

-- name: audit_insert
INSERT INTO wfa.retention_audit
       (actor, tenant_id, dataset, workflow_id, old_period, new_period, old_source, new_source)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
RETURNING *;

-- name: audit_all
-- Every change (the operator's view).
SELECT a.* FROM wfa.retention_audit a ORDER BY a.id DESC LIMIT $1;

-- name: audit_tenant
-- Changes of the tenant's own workflow overrides only, whoever made them.
SELECT a.*
  FROM wfa.retention_audit a
 WHERE a.workflow_id <> ''
   AND EXISTS (SELECT 1 FROM wfa.workflows w
                WHERE w.workflow_id = a.workflow_id AND w.tenant_id = $1)
 ORDER BY a.id DESC
 LIMIT $2;

-- name: workflow_tenants
SELECT workflow_id, tenant_id FROM wfa.workflows WHERE workflow_id = ANY($1::text[]);

-- name: tenant_workflows
SELECT workflow_id FROM wfa.workflows WHERE tenant_id = $1;

-- name: run_insert
INSERT INTO wfa.retention_runs
       (started_at, finished_at, trigger, actor, dry_run, rows, result, tenant_id)
VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8)
RETURNING id;

-- name: last_run
-- The latest real run of one scope: '*' the whole store, else one tenant's.
SELECT id, started_at, finished_at, trigger, actor, dry_run, rows
  FROM wfa.retention_runs WHERE NOT dry_run AND tenant_id = $1 ORDER BY id DESC LIMIT 1;

-- name: pg_partitions
SELECT format('%I.%I', n.nspname, c.relname) AS relation, p.relname AS tbl,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                     'FROM \(''([^'']+)''\)'))[1]::timestamptz AS range_start,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                     'TO \(''([^'']+)''\)'))[1]::timestamptz AS range_end,
       c.reltuples::bigint AS estimate, false AS compressed
  FROM pg_inherits i
  JOIN pg_class p ON p.oid = i.inhparent
  JOIN pg_namespace pn ON pn.oid = p.relnamespace
  JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE pn.nspname = 'wfa' AND p.relname = ANY($1::text[]);

-- name: ts_chunks
SELECT format('%I.%I', ch.chunk_schema, ch.chunk_name) AS relation, ch.hypertable_name AS tbl,
       ch.range_start, ch.range_end, c.reltuples::bigint AS estimate, ch.is_compressed AS compressed
  FROM timescaledb_information.chunks ch
  JOIN pg_namespace n ON n.nspname = ch.chunk_schema
  JOIN pg_class c ON c.relname = ch.chunk_name AND c.relnamespace = n.oid
 WHERE ch.hypertable_schema = $1 AND ch.hypertable_name = ANY($2::text[]);

-- name: ts_materializations
SELECT format('%I.%I', view_schema, view_name) AS view,
       materialization_hypertable_schema AS schema, materialization_hypertable_name AS name
  FROM timescaledb_information.continuous_aggregates
 WHERE view_schema = 'wfa';

-- name: pg_watermarks
SELECT rollup, watermark FROM wfa.watermarks;
