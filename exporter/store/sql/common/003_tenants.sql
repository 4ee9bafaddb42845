-- API tokens managed with `wfa token` (config tokens stay in the config), and the tenant a
-- retention run was scoped to ('*': the whole store).
CREATE TABLE IF NOT EXISTS wfa.api_tokens (
    name       text PRIMARY KEY CHECK (length(name) BETWEEN 1 AND 200),
    tenant_id  text NOT NULL CHECK (length(tenant_id) BETWEEN 1 AND 200),
    scopes     text[] NOT NULL CHECK (cardinality(scopes) > 0
                                      AND scopes <@ ARRAY['read', 'export', 'admin']),
    sha256     text NOT NULL UNIQUE CHECK (sha256 ~ '^[0-9a-f]{64}$'),
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz,
    revoked_at timestamptz,
    CHECK (tenant_id <> '*' OR scopes = ARRAY['admin'])
);

ALTER TABLE wfa.retention_runs ADD COLUMN IF NOT EXISTS tenant_id text NOT NULL DEFAULT '*';
CREATE INDEX IF NOT EXISTS retention_runs_tenant_idx ON wfa.retention_runs (tenant_id, id);
