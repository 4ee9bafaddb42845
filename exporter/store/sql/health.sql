-- Freshness and readiness of the store.

-- name: mark_caught_up
INSERT INTO wfa.ingest_status AS s (name, caught_up_at, recorded_at) VALUES ('poll', $1, now())
ON CONFLICT (name) DO UPDATE SET caught_up_at = greatest(s.caught_up_at, excluded.caught_up_at),
       recorded_at = now();

-- name: caught_up
SELECT caught_up_at FROM wfa.ingest_status WHERE name = 'poll';
