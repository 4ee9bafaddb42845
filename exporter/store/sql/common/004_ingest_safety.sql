-- Fenced leadership and a cursor that remembers where the source clock stood when it was read.

-- One row per poll lock: the epoch is bumped by every replica that takes the lock, and every
-- write transaction of the poller checks it (FOR SHARE), so a replica that lost the lock
-- commits nothing more and a takeover waits for the batch in flight.
CREATE TABLE IF NOT EXISTS wfa.leadership (
    lock_id  bigint PRIMARY KEY,
    epoch    bigint NOT NULL,
    holder   text NOT NULL,
    taken_at timestamptz NOT NULL DEFAULT now()
);

-- (updated_at, id) stays the keyset head. Rows up to (checked_updated_at, checked_id) were
-- last read by a pass that began when the source clock read `read_at`; rows between the
-- checked key and the head were last read no earlier than `rest_from`.
ALTER TABLE wfa.cursors ADD COLUMN IF NOT EXISTS checked_updated_at timestamptz;
ALTER TABLE wfa.cursors ADD COLUMN IF NOT EXISTS checked_id text;
ALTER TABLE wfa.cursors ADD COLUMN IF NOT EXISTS read_at timestamptz;
ALTER TABLE wfa.cursors ADD COLUMN IF NOT EXISTS rest_from timestamptz;
