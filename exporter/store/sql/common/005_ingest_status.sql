-- Freshness of the store: the start of the last poll cycle that read the source until it was
-- caught up (every change committed in the source before that instant has been ingested,
-- within the cursor overlap). Written by the polling exporter, read by the API and /readyz.
CREATE TABLE IF NOT EXISTS wfa.ingest_status (
    name         text PRIMARY KEY,
    caught_up_at timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
