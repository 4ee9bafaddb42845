-- Export jobs, retention policies and their audit trail, retention runs.
CREATE TABLE IF NOT EXISTS wfa.export_jobs (
    job_id       uuid PRIMARY KEY,
    tenant_id    text NOT NULL,
    workflow_id  text NOT NULL,
    dataset      text NOT NULL,
    format       text NOT NULL,
    params       jsonb NOT NULL,
    requested_by text NOT NULL,
    status       text NOT NULL
        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'expired')),
    owner        bigint,
    attempts     integer NOT NULL DEFAULT 0,
    rows         bigint,
    bytes        bigint,
    error        text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    started_at   timestamptz,
    finished_at  timestamptz,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS export_jobs_tenant_idx ON wfa.export_jobs (tenant_id, status);
CREATE INDEX IF NOT EXISTS export_jobs_expiry_idx ON wfa.export_jobs (expires_at);

-- A stored policy overrides the config value; workflow_id '' is the dataset-wide policy.
CREATE TABLE IF NOT EXISTS wfa.retention_policies (
    dataset     text NOT NULL,
    workflow_id text NOT NULL DEFAULT '',
    period      interval NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL,
    PRIMARY KEY (dataset, workflow_id)
);

CREATE TABLE IF NOT EXISTS wfa.retention_audit (
    id          bigserial PRIMARY KEY,
    changed_at  timestamptz NOT NULL DEFAULT now(),
    actor       text NOT NULL,
    tenant_id   text NOT NULL,
    dataset     text NOT NULL,
    workflow_id text NOT NULL DEFAULT '',
    old_period  interval,
    new_period  interval,
    old_source  text NOT NULL,
    new_source  text NOT NULL
);
CREATE INDEX IF NOT EXISTS retention_audit_tenant_idx ON wfa.retention_audit (tenant_id, id);

CREATE TABLE IF NOT EXISTS wfa.retention_runs (
    id          bigserial PRIMARY KEY,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL,
    trigger     text NOT NULL,
    actor       text NOT NULL,
    dry_run     boolean NOT NULL,
    rows        bigint NOT NULL,
    result      jsonb NOT NULL
);

-- A text cell neutralised against spreadsheet formulas (CSV exports).
CREATE OR REPLACE FUNCTION wfa.csv_safe(v text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$ SELECT CASE WHEN left(v, 1) IN ('=', '+', '-', '@', E'\t', E'\r') THEN '''' || v ELSE v END $$;
