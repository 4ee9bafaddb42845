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
