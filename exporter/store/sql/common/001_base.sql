-- Tables shared by both backends: bookkeeping, workflow mirror, counters, quarantine.
CREATE TABLE IF NOT EXISTS wfa.cursors (
    name        text PRIMARY KEY,
    updated_at  timestamptz NOT NULL,
    id          text NOT NULL,
    advanced_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS wfa.workflows (
    workflow_id       text PRIMARY KEY,
    tenant_id         text NOT NULL,
    name              text NOT NULL,
    source_updated_at timestamptz NOT NULL,
    ingested_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS workflows_tenant_idx ON wfa.workflows (tenant_id, workflow_id);

-- Step order of the current definition; a removed step keeps its row (and history) with removed_at set.
CREATE TABLE IF NOT EXISTS wfa.workflow_steps (
    workflow_id text NOT NULL REFERENCES wfa.workflows ON DELETE CASCADE,
    step_id     text NOT NULL,
    step_index  integer NOT NULL,
    name        text NOT NULL,
    action_type text NOT NULL,
    removed_at  timestamptz,
    PRIMARY KEY (workflow_id, step_id)
);

-- Monotonic counters bumped in the ingest transaction; '' stands for "not applicable".
CREATE TABLE IF NOT EXISTS wfa.counters (
    metric      text NOT NULL,
    tenant_id   text NOT NULL,
    workflow_id text NOT NULL,
    step_id     text NOT NULL DEFAULT '',
    action_type text NOT NULL DEFAULT '',
    label       text NOT NULL DEFAULT '',
    value       bigint NOT NULL,
    PRIMARY KEY (metric, tenant_id, workflow_id, step_id, action_type, label)
);

CREATE TABLE IF NOT EXISTS wfa.rejected_rows (
    source_table      text NOT NULL,
    source_id         text NOT NULL,
    source_updated_at timestamptz NOT NULL,
    reason            text NOT NULL,
    detail            text NOT NULL DEFAULT '',
    raw               jsonb NOT NULL,
    rejected_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (source_table, source_id, source_updated_at)
);
CREATE INDEX IF NOT EXISTS rejected_rows_reason_idx ON wfa.rejected_rows (reason, rejected_at);

-- Hour buckets whose raw rows changed; the refresh recomputes exactly these.
CREATE TABLE IF NOT EXISTS wfa.invalidations (
    rollup text NOT NULL,
    bucket timestamptz NOT NULL,
    PRIMARY KEY (rollup, bucket)
);

CREATE TABLE IF NOT EXISTS wfa.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
