-- Store side of reconcile: the same per-(workflow, UTC day) fingerprint the source side
-- computes (exporter/source/reader.py DayQueries), over the rows the store has seen.
-- A row counts at its latest version seen, stored or quarantined, so rejected rows do not
-- differ forever. $1: enrolled since, $2: updated until; with $3/$4 (workflow ids, days), only
-- those days.

-- name: fingerprint
WITH rej AS (
    SELECT DISTINCT ON (raw->>'id') raw->>'id' AS id, raw->>'workflow_id' AS workflow_id,
           (raw->>'enrolled_at')::timestamptz AS enrolled_at, source_updated_at AS u
      FROM wfa.rejected_rows
     WHERE source_table = 'executions' AND raw->>'id' IS NOT NULL
       AND raw->>'workflow_id' IS NOT NULL AND raw->>'enrolled_at' IS NOT NULL
     ORDER BY raw->>'id', source_updated_at DESC
), seen AS (
    SELECT x.execution_id AS id, x.workflow_id, x.enrolled_at, x.source_updated_at AS u
      FROM wfa.executions x
     WHERE x.enrolled_at >= $1
       AND NOT EXISTS (SELECT 1 FROM rej
                        WHERE rej.id = x.execution_id AND rej.u > x.source_updated_at)
    UNION ALL
    SELECT rej.id, rej.workflow_id, rej.enrolled_at, rej.u
      FROM rej
     WHERE rej.enrolled_at >= $1
       AND NOT EXISTS (SELECT 1 FROM wfa.executions x
                        WHERE x.execution_id = rej.id AND x.source_updated_at >= rej.u)
)
SELECT workflow_id, date_trunc('day', enrolled_at AT TIME ZONE 'UTC') AS day, count(*) AS n,
       sum(hashtextextended(id || '/' || to_char(u AT TIME ZONE 'UTC',
                                                 'YYYY-MM-DD HH24:MI:SS.US'), 0)) AS h
  FROM seen
 WHERE u <= $2
   AND ($3::text[] IS NULL
        OR (workflow_id, date_trunc('day', enrolled_at AT TIME ZONE 'UTC'))
           IN (SELECT * FROM unnest($3::text[], $4::timestamp[])))
 GROUP BY 1, 2;

-- name: workflow_ids
SELECT workflow_id FROM wfa.workflows;
