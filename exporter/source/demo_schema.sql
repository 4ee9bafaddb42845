-- Default source tables (the source contract in the README), as written by `wfa simulate`.
-- {workflows} and {executions} are replaced with quoted table names before running.
-- The keyset index on (updated_at, id) is declared as a UNIQUE constraint (id alone is
-- already unique) so that it is created with the table and the script stays idempotent
-- whatever the table names are.

CREATE TABLE IF NOT EXISTS {workflows} (
    id          text PRIMARY KEY,
    tenant_id   text NOT NULL,
    name        text NOT NULL,
    steps       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (updated_at, id)
);

CREATE TABLE IF NOT EXISTS {executions} (
    id               text PRIMARY KEY,
    tenant_id        text NOT NULL,
    workflow_id      text NOT NULL,
    contact_id       text NOT NULL,
    status           text NOT NULL,
    enrolled_at      timestamptz NOT NULL,
    completed_at     timestamptz,
    converted_at     timestamptz,
    exited_at        timestamptz,
    exit_reason      text,
    current_step_id  text,
    step_progress    jsonb NOT NULL DEFAULT '[]',
    updated_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (updated_at, id)
);
