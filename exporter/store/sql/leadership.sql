-- The poll lock and its epoch (see exporter/leadership.py).

-- name: try_lock
SELECT pg_try_advisory_lock($1);

-- name: lock
SELECT pg_advisory_lock($1);

-- name: take
INSERT INTO wfa.leadership AS l (lock_id, epoch, holder, taken_at) VALUES ($1, 1, $2, now())
ON CONFLICT (lock_id) DO UPDATE SET epoch = l.epoch + 1, holder = excluded.holder,
       taken_at = excluded.taken_at
RETURNING epoch;

-- name: fence
SELECT epoch FROM wfa.leadership WHERE lock_id = $1 FOR SHARE;

-- name: holders
-- Sessions of this database holding (granted) or queued for (not granted) the advisory lock $1.
SELECT l.pid, l.granted
  FROM pg_locks l
 WHERE l.locktype = 'advisory' AND l.objsubid = 1
   AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND l.classid = ($1::bigint >> 32)::oid AND l.objid = ($1::bigint & 4294967295)::oid;

-- name: terminate
SELECT pg_terminate_backend($1);
