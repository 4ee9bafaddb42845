-- Export rows and export job bookkeeping. Every row query filters on the tenant.

-- name: executions_csv
-- For COPY ... (FORMAT csv) in a transaction with TimeZone UTC and DateStyle ISO: times
-- become RFC 3339 (2024-05-01T10:00:00.25+00:00), text cells formula-safe. $5 is the
-- workflow id already made safe; status is one of four known words. The rows are sorted
-- as stored and formatted after the sort, so the sort carries no formatted text.
SELECT wfa.csv_safe(execution_id), $5::text, wfa.csv_safe(contact_id), status,
       replace(enrolled_at::text, ' ', 'T') || ':00',
       replace(completed_at::text, ' ', 'T') || ':00',
       replace(converted_at::text, ' ', 'T') || ':00',
       CASE WHEN converted_in_window THEN 'true' ELSE 'false' END,
       replace(exited_at::text, ' ', 'T') || ':00', wfa.csv_safe(exit_reason),
       replace(failed_at::text, ' ', 'T') || ':00', wfa.csv_safe(current_step_id)
  FROM (SELECT execution_id, contact_id, status, enrolled_at, completed_at, converted_at,
               converted_in_window, exited_at, exit_reason, failed_at, current_step_id
          FROM wfa.executions
         WHERE tenant_id = $1 AND workflow_id = $2 AND enrolled_at >= $3 AND enrolled_at < $4
         ORDER BY enrolled_at, execution_id) e;

-- name: executions_json
-- One JSON object per row (times RFC 3339 with TimeZone UTC).
SELECT row_to_json(x)::text
  FROM (SELECT execution_id, workflow_id, contact_id, status, enrolled_at, completed_at,
               converted_at, converted_in_window, exited_at, exit_reason, failed_at,
               current_step_id
          FROM wfa.executions
         WHERE tenant_id = $1 AND workflow_id = $2 AND enrolled_at >= $3 AND enrolled_at < $4
         ORDER BY enrolled_at, execution_id) x;

-- name: job_lock_tenant
SELECT pg_advisory_xact_lock($1, hashtext($2));

-- name: job_active_count
SELECT count(*) FROM wfa.export_jobs WHERE tenant_id = $1 AND status IN ('queued', 'running');

-- name: job_insert
INSERT INTO wfa.export_jobs (job_id, tenant_id, workflow_id, dataset, format, params,
                             requested_by, status, owner, attempts, started_at, expires_at)
VALUES ($1, $2, $3, $4, $5, $6::jsonb, $7, 'running', $8, 1, now(), now() + $9::interval)
RETURNING *;

-- name: job_get
SELECT * FROM wfa.export_jobs WHERE job_id = $1 AND tenant_id = $2;

-- name: job_succeeded
UPDATE wfa.export_jobs
   SET status = 'succeeded', rows = $3, bytes = $4, error = NULL, finished_at = now(),
       expires_at = now() + $5::interval, owner = NULL
 WHERE job_id = $1 AND owner = $2 AND status = 'running'
RETURNING job_id;

-- name: job_failed
UPDATE wfa.export_jobs
   SET status = 'failed', error = $3, finished_at = now(), owner = NULL
 WHERE job_id = $1 AND owner = $2 AND status = 'running';

-- name: job_release
UPDATE wfa.export_jobs
   SET status = 'queued', error = $3, owner = NULL
 WHERE job_id = $1 AND owner = $2 AND status = 'running';

-- name: job_orphans
-- Unfinished jobs of this process ($2) or of one that holds no owner lock any more.
SELECT j.job_id, j.attempts, j.expires_at
  FROM wfa.export_jobs j
 WHERE j.status IN ('queued', 'running')
   AND (j.owner IS NULL OR j.owner = $2 OR NOT EXISTS (
         SELECT 1 FROM pg_locks l
          WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::oid
            AND l.objid = j.owner::oid AND l.objsubid = 2
            AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())))
 ORDER BY j.created_at
   FOR UPDATE OF j SKIP LOCKED;

-- name: job_adopt
UPDATE wfa.export_jobs
   SET status = 'running', owner = $2, attempts = attempts + 1, started_at = now(),
       error = NULL
 WHERE job_id = $1
RETURNING *;

-- name: job_give_up
UPDATE wfa.export_jobs
   SET status = 'failed', error = $2, finished_at = now(), owner = NULL
 WHERE job_id = $1;

-- name: job_expire
UPDATE wfa.export_jobs
   SET status = 'expired'
 WHERE status = 'succeeded' AND expires_at <= now()
RETURNING job_id, format;

-- name: job_purge
DELETE FROM wfa.export_jobs
 WHERE status IN ('failed', 'expired') AND expires_at <= now() - $1::interval;

-- name: job_files
SELECT job_id, status, format FROM wfa.export_jobs WHERE job_id = ANY($1::uuid[]);

-- name: job_page
-- A tenant's export jobs, newest first, after (created_at $2, job_id $3), $4 of them.
SELECT * FROM wfa.export_jobs
 WHERE tenant_id = $1
   AND ($2::timestamptz IS NULL OR (created_at, job_id) < ($2, $3::uuid))
 ORDER BY created_at DESC, job_id DESC
 LIMIT $4;
