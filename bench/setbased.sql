-- A set-based first import, measured by bench/bench_setbased.py beside the exporter's own.
--
-- A page of source executions is copied into the session's stage table; the rows whose every
-- field has the plain shape the Python path would write unchanged as new executions (known
-- workflow of the same tenant, ids and texts within bounds, times in the plausible window and
-- in order, step_progress an array of well-formed attempts, not yet in the store) are written
-- by the statements below. The others would go to the Python path, which judges, diffs or
-- quarantines them: nothing here rejects a row.
--
-- Shared parameters: $1, $2 of `executions` are the plausible window [earliest, latest].
-- One difference from the exporter: PostgreSQL 15 has no crc32, so an attempt's error
-- digest in its signature is md5's first 8 hex digits; the benchmark compares signatures
-- without that field.

-- name: create
CREATE TEMP TABLE IF NOT EXISTS wfa_stage (
    seq bigint, id text, tenant_id text, workflow_id text, contact_id text, status text,
    enrolled_at timestamptz, completed_at timestamptz, converted_at timestamptz,
    exited_at timestamptz, exit_reason text, failed_at timestamptz, current_step_id text,
    step_progress text, updated_at timestamptz);
CREATE TEMP TABLE IF NOT EXISTS wfa_bulk_a (
    seq bigint, ord bigint, step_id text, status text, entered_at timestamptz,
    finished_at timestamptz, error text, ok boolean, action_type text, duration_ms bigint,
    le_index int, signature text);
CREATE TEMP TABLE IF NOT EXISTS wfa_bulk_x (
    seq bigint, execution_id text, enrolled_at timestamptz, tenant_id text, workflow_id text,
    contact_id text, status text, completed_at timestamptz, converted_at timestamptz,
    converted_in_window boolean, exited_at timestamptz, exit_reason text,
    failed_at timestamptz, current_step_id text, attempts text[],
    source_updated_at timestamptz);
CREATE TEMP TABLE IF NOT EXISTS wfa_bulk_e (
    seq bigint, event text, occurred_at timestamptz, reason text, duration_ms bigint,
    le_index int);

-- A timestamp `t` as timestamptz when it has the shape Python's fromisoformat and PostgreSQL
-- read alike (`shape`: `t` with its digits as 0): YYYY-MM-DD, T or space, hh:mm:ss with hours
-- < 24 and minutes and seconds < 60, then one of `tails`; otherwise NULL. Plain SQL, so the
-- planner inlines it.
CREATE OR REPLACE FUNCTION pg_temp.wfa_iso_time(t text, shape text, tails text[])
RETURNS timestamptz LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN left(shape, 19) IN ('0000-00-00T00:00:00', '0000-00-00 00:00:00')
                 AND substr(shape, 20) = ANY(tails)
                 AND substr(t, 12, 2) < '24' AND substr(t, 15, 2) < '60'
                 AND substr(t, 18, 2) < '60'
                 AND (substr(shape, length(shape) - 5, 1) NOT IN ('+', '-')
                      OR (substr(t, length(t) - 4, 2) < '24' AND right(t, 2) < '60'))
                THEN t::timestamptz END
$$;

-- name: clear
TRUNCATE wfa_stage, wfa_bulk_a, wfa_bulk_x, wfa_bulk_e;

-- name: attempts
-- Every attempt of every staged row; `ok` when each field has the accepted shape. A time is
-- cast only when it has the shape of ISO 8601 that Python's fromisoformat and PostgreSQL
-- read alike: YYYY-MM-DD, T or space, hh:mm:ss with hours < 24 and seconds < 60, then one
-- of the tails $1 (digits as 0) (a date the shape lets through but the calendar has not,
-- such as 02-30, fails the statement, and the page goes to the Python path). $2..$4: the known steps (workflow, step, action type); $5: bucket
-- bounds, ascending, ending in +Inf.
INSERT INTO wfa_bulk_a
WITH p AS MATERIALIZED (
    SELECT seq, workflow_id, step_progress::jsonb AS progress FROM wfa_stage),
j AS MATERIALIZED (
    SELECT p.seq, p.workflow_id, j.ord, j.v ->> 'step_id' AS step_id,
           j.v ->> 'status' AS status, j.v ->> 'error' AS error,
           j.v ->> 'entered_at' AS entered, j.v ->> 'finished_at' AS finished,
           coalesce(jsonb_typeof(j.v) = 'object'
                    AND jsonb_typeof(j.v -> 'step_id') = 'string'
                    AND jsonb_typeof(j.v -> 'status') = 'string'
                    AND jsonb_typeof(j.v -> 'entered_at') = 'string'
                    AND coalesce(jsonb_typeof(j.v -> 'finished_at'), 'null') IN ('null', 'string')
                    AND coalesce(jsonb_typeof(j.v -> 'error'), 'null') IN ('null', 'string'),
                    false) AS typed
      FROM p
     CROSS JOIN LATERAL jsonb_array_elements(
           CASE WHEN jsonb_typeof(p.progress) = 'array' THEN p.progress END)
           WITH ORDINALITY AS j(v, ord)),
t AS MATERIALIZED (
    SELECT j.seq, j.workflow_id, j.ord, j.step_id, j.status, j.error, j.entered, j.finished,
           j.typed AND octet_length(j.step_id) <= 200
           AND j.status IN ('running', 'succeeded', 'failed', 'skipped')
           AND coalesce(octet_length(j.error), 0) <= 1000 AS typed,
           translate(j.entered, '0123456789', '0000000000') AS es,
           translate(j.finished, '0123456789', '0000000000') AS fs
      FROM j),
c AS MATERIALIZED (
    SELECT t.seq, t.workflow_id, t.ord, t.step_id, t.status, t.error, t.typed,
           pg_temp.wfa_iso_time(t.entered, t.es, $1) AS entered_at,
           t.finished IS NULL AS unfinished,
           pg_temp.wfa_iso_time(t.finished, t.fs, $1) AS finished_at
      FROM t),
u AS MATERIALIZED (
    SELECT c.*, c.typed AND c.entered_at IS NOT NULL
                AND (c.unfinished OR c.finished_at IS NOT NULL) AS ok,
           (extract(epoch FROM c.entered_at) * 1000000)::bigint AS entered_us,
           (extract(epoch FROM c.finished_at) * 1000000)::bigint AS finished_us
      FROM c),
d AS MATERIALIZED (
    SELECT u.*, floor((u.finished_us - u.entered_us) / 1000.0)::bigint AS ms FROM u)
SELECT d.seq, d.ord, d.step_id, d.status, d.entered_at, d.finished_at, d.error, d.ok,
       coalesce(k.action_type, 'unknown'), d.ms,
       CASE WHEN w.i >= 1 AND ($5::float8[])[w.i] = w.sec THEN w.i ELSE w.i + 1 END,
       concat_ws(E'\x1f', d.step_id, d.entered_us, d.status, coalesce(d.finished_us::text, ''),
                 coalesce(left(md5(d.error), 8), ''))
  FROM d
 CROSS JOIN LATERAL (SELECT d.ms::float8 / 1000 AS sec) AS x
 CROSS JOIN LATERAL (SELECT x.sec, width_bucket(x.sec, $5::float8[]) AS i) AS w
  LEFT JOIN unnest($2::text[], $3::text[], $4::text[]) AS k(workflow_id, step_id, action_type)
         ON k.workflow_id = d.workflow_id AND k.step_id = d.step_id;

-- name: executions
-- The staged rows the set-based path writes, with their stored columns. $3..$5: the known
-- workflows (id, tenant, conversion window or NULL for none).
INSERT INTO wfa_bulk_x
WITH a AS (
    SELECT seq,
           bool_and(coalesce(ok AND entered_at BETWEEN $1 AND $2
                             AND (finished_at IS NULL
                                  OR finished_at BETWEEN entered_at AND $2), false)) AS ok,
           count(*) <> count(DISTINCT (step_id, entered_at)) AS dup,
           max(finished_at) FILTER (WHERE status = 'failed') AS failed_end,
           array_agg(signature ORDER BY ord) AS signatures
      FROM wfa_bulk_a GROUP BY seq),
s AS (
    SELECT s.*, count(*) OVER (PARTITION BY s.id) AS copies
      FROM wfa_stage s)
SELECT s.seq, s.id, s.enrolled_at, s.tenant_id, s.workflow_id, s.contact_id, s.status,
       s.completed_at, s.converted_at,
       s.converted_at IS NOT NULL AND (w.conv IS NULL OR s.converted_at - s.enrolled_at <= w.conv),
       s.exited_at, s.exit_reason,
       CASE WHEN s.status = 'failed' THEN coalesce(s.failed_at, a.failed_end, s.updated_at) END,
       CASE WHEN s.status = 'active' THEN s.current_step_id END,
       coalesce(a.signatures, '{}'), s.updated_at
  FROM s
  JOIN unnest($3::text[], $4::text[], $5::interval[]) AS w(workflow_id, tenant_id, conv)
    ON w.workflow_id = s.workflow_id AND w.tenant_id = s.tenant_id
  LEFT JOIN a ON a.seq = s.seq
 WHERE s.copies = 1
   AND s.id IS NOT NULL AND s.contact_id IS NOT NULL
   AND s.status IN ('active', 'completed', 'exited', 'failed')
   AND octet_length(s.id) <= 200 AND octet_length(s.contact_id) <= 200
   AND coalesce(octet_length(s.current_step_id), 0) <= 200
   AND coalesce(octet_length(s.exit_reason), 0) <= 1000
   AND s.updated_at BETWEEN $1 AND $2
   AND s.enrolled_at BETWEEN $1 AND $2
   AND (s.completed_at IS NULL OR s.completed_at BETWEEN s.enrolled_at AND $2)
   AND (s.converted_at IS NULL OR s.converted_at BETWEEN s.enrolled_at AND $2)
   AND (s.exited_at IS NULL OR s.exited_at BETWEEN s.enrolled_at AND $2)
   AND (s.failed_at IS NULL OR s.failed_at BETWEEN s.enrolled_at AND $2)
   AND (s.step_progress IS NULL OR jsonb_typeof(s.step_progress::jsonb) = 'array')
   AND coalesce(a.ok AND NOT a.dup, true)
   AND NOT EXISTS (
       SELECT 1 FROM wfa.executions x
        WHERE x.execution_id = s.id AND x.enrolled_at = s.enrolled_at);

-- name: events
-- The events of the written rows. $1: bucket bounds, ascending, ending in +Inf.
INSERT INTO wfa_bulk_e
SELECT x.seq, v.event, v.t, v.reason, m.ms,
       CASE WHEN m.ms IS NULL THEN NULL
            WHEN w.i >= 1 AND ($1::float8[])[w.i] = m.ms::float8 / 1000 THEN w.i ELSE w.i + 1 END
  FROM wfa_bulk_x x
 CROSS JOIN LATERAL (VALUES
       ('enrolled', x.enrolled_at, NULL::text, false),
       ('completed', x.completed_at, NULL, true),
       ('converted', x.converted_at, NULL, true),
       ('exited', x.exited_at, x.exit_reason, false),
       ('failed', x.failed_at, NULL, false)) AS v(event, t, reason, timed)
 CROSS JOIN LATERAL (
       SELECT CASE WHEN v.timed THEN floor((extract(epoch FROM v.t)
                                            - extract(epoch FROM x.enrolled_at)) * 1000)::bigint
              END AS ms) AS m
 CROSS JOIN LATERAL (SELECT width_bucket(m.ms::float8 / 1000, $1::float8[]) AS i) AS w
 WHERE v.t IS NOT NULL;

-- name: write_executions
INSERT INTO wfa.executions
SELECT execution_id, enrolled_at, tenant_id, workflow_id, contact_id, status, completed_at,
       converted_at, converted_in_window, exited_at, exit_reason, failed_at, current_step_id,
       attempts, source_updated_at
  FROM wfa_bulk_x;

-- name: write_execution_steps
INSERT INTO wfa.execution_steps (execution_id, step_id, enrolled_at, tenant_id, workflow_id)
SELECT DISTINCT x.execution_id, a.step_id, x.enrolled_at, x.tenant_id, x.workflow_id
  FROM wfa_bulk_a a JOIN wfa_bulk_x x USING (seq);

-- name: write_events
-- $1: bucket bounds, ascending, ending in +Inf.
INSERT INTO wfa.workflow_events
SELECT x.execution_id, e.event, e.occurred_at, x.tenant_id, x.workflow_id, e.reason,
       e.duration_ms, ($1::float8[])[e.le_index]
  FROM wfa_bulk_e e JOIN wfa_bulk_x x USING (seq);

-- name: write_step_runs
-- $1: bucket bounds, ascending, ending in +Inf.
INSERT INTO wfa.step_runs
SELECT x.execution_id, a.step_id, a.entered_at, x.tenant_id, x.workflow_id, a.action_type,
       a.status, a.finished_at, a.duration_ms, ($1::float8[])[a.le_index], a.error
  FROM wfa_bulk_a a JOIN wfa_bulk_x x USING (seq);

-- name: counters
-- The counter increments of the written rows, added to the persisted counters. $1: the
-- Prometheus text of each bucket bound, in the order of the bounds.
INSERT INTO wfa.counters AS c (metric, tenant_id, workflow_id, step_id, action_type, label, value)
SELECT v.metric, g.tenant_id, g.workflow_id, g.step_id, g.action_type, v.label, sum(v.n)
  FROM (
       SELECT x.tenant_id, x.workflow_id, ''::text AS step_id, ''::text AS action_type,
              e.event AS kind, coalesce(e.reason, '') AS reason, e.le_index,
              count(*) AS n, sum(e.duration_ms) AS ms
         FROM wfa_bulk_e e JOIN wfa_bulk_x x USING (seq)
        GROUP BY 1, 2, 5, 6, 7
       UNION ALL
       SELECT x.tenant_id, x.workflow_id, a.step_id, a.action_type, 'attempt', a.status,
              a.le_index, count(*), sum(a.duration_ms)
         FROM wfa_bulk_a a JOIN wfa_bulk_x x USING (seq)
        GROUP BY 1, 2, 3, 4, 6, 7) AS g
 CROSS JOIN LATERAL (VALUES
       (CASE g.kind WHEN 'enrolled' THEN 'enrollments'
                    WHEN 'completed' THEN 'completions'
                    WHEN 'converted' THEN 'conversions'
                    WHEN 'exited' THEN 'exits'
                    WHEN 'failed' THEN 'failures'
                    ELSE 'step_runs' END,
        CASE WHEN g.kind = 'exited' THEN g.reason ELSE '' END, g.n),
       (CASE WHEN g.kind = 'attempt' AND g.reason <> 'running' THEN 'step_outcomes' END,
        g.reason, g.n),
       (CASE WHEN g.ms IS NULL THEN NULL
             WHEN g.kind = 'completed' THEN 'time_to_complete_bucket'
             WHEN g.kind = 'converted' THEN 'time_to_convert_bucket'
             WHEN g.kind = 'attempt' THEN 'step_duration_bucket' END,
        ($1::text[])[g.le_index], g.n),
       (CASE WHEN g.ms IS NULL THEN NULL
             WHEN g.kind = 'completed' THEN 'time_to_complete_sum_ms'
             WHEN g.kind = 'converted' THEN 'time_to_convert_sum_ms'
             WHEN g.kind = 'attempt' THEN 'step_duration_sum_ms' END,
        '', g.ms)) AS v(metric, label, n)
 WHERE v.metric IS NOT NULL
 GROUP BY 1, 2, 3, 4, 5, 6
 ORDER BY 1, 2, 3, 4, 5, 6  -- one lock order for writers running side by side
ON CONFLICT (metric, tenant_id, workflow_id, step_id, action_type, label)
DO UPDATE SET value = c.value + excluded.value;

-- name: invalidate
-- The hourly buckets the written rows fall in, for the rollup refresh.
INSERT INTO wfa.invalidations (rollup, bucket)
SELECT DISTINCT r.rollup, date_trunc('hour', r.t AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
  FROM (SELECT 'cohort' AS rollup, enrolled_at AS t FROM wfa_bulk_x
        UNION ALL SELECT 'cohort_steps', enrolled_at FROM wfa_bulk_x
        UNION ALL SELECT 'events', occurred_at FROM wfa_bulk_e
        UNION ALL SELECT 'step_runs', a.entered_at
                    FROM wfa_bulk_a a JOIN wfa_bulk_x x USING (seq)) AS r
 ORDER BY 1, 2
ON CONFLICT DO NOTHING;

-- name: page
-- The staged page: its size, its last key, and the cursor position after it (the last row
-- before the first one stamped after $1, the latest plausible time).
SELECT (SELECT count(*) FROM wfa_stage) AS n, l.updated_at AS last_updated_at, l.id AS last_id,
       p.updated_at AS pos_updated_at, p.id AS pos_id
  FROM (SELECT 1) AS one
  LEFT JOIN LATERAL (SELECT updated_at, id FROM wfa_stage ORDER BY seq DESC LIMIT 1) AS l
         ON true
  LEFT JOIN LATERAL (
       SELECT updated_at, id FROM wfa_stage
        WHERE seq < coalesce((SELECT min(seq) FROM wfa_stage
                               WHERE updated_at IS NULL OR updated_at > $1),
                             9223372036854775807)
        ORDER BY seq DESC LIMIT 1) AS p ON true;
