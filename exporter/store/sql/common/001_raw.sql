-- Raw mirror tables, the same columns and keys on both backends. Every unique key includes
-- the time column the table is partitioned by. PostgreSQL: range partitions, created ahead by
-- the exporter. TimescaleDB: the PARTITION BY clauses are left out and each table becomes a
-- hypertable chunked by that column (exporter/store/timescale.py).
CREATE TABLE IF NOT EXISTS wfa.executions (
    execution_id        text NOT NULL,
    enrolled_at         timestamptz NOT NULL,
    tenant_id           text NOT NULL,
    workflow_id         text NOT NULL,
    contact_id          text NOT NULL,
    status              text NOT NULL,
    completed_at        timestamptz,
    converted_at        timestamptz,
    converted_in_window boolean NOT NULL DEFAULT false,
    exited_at           timestamptz,
    exit_reason         text,
    failed_at           timestamptz,
    current_step_id     text,
    attempts            text[] NOT NULL DEFAULT '{}',
    source_updated_at   timestamptz NOT NULL,
    PRIMARY KEY (execution_id, enrolled_at)
) PARTITION BY RANGE (enrolled_at);
CREATE INDEX IF NOT EXISTS executions_workflow_idx ON wfa.executions (workflow_id, enrolled_at);

CREATE TABLE IF NOT EXISTS wfa.execution_steps (
    execution_id text NOT NULL,
    step_id      text NOT NULL,
    enrolled_at  timestamptz NOT NULL,
    tenant_id    text NOT NULL,
    workflow_id  text NOT NULL,
    PRIMARY KEY (execution_id, step_id, enrolled_at)
) PARTITION BY RANGE (enrolled_at);
CREATE INDEX IF NOT EXISTS execution_steps_workflow_idx ON wfa.execution_steps (workflow_id, enrolled_at);

CREATE TABLE IF NOT EXISTS wfa.workflow_events (
    execution_id text NOT NULL,
    event        text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    tenant_id    text NOT NULL,
    workflow_id  text NOT NULL,
    reason       text,
    duration_ms  bigint,
    duration_le  double precision,
    PRIMARY KEY (execution_id, event, occurred_at)
) PARTITION BY RANGE (occurred_at);
CREATE INDEX IF NOT EXISTS workflow_events_workflow_idx ON wfa.workflow_events (workflow_id, occurred_at);

CREATE TABLE IF NOT EXISTS wfa.step_runs (
    execution_id text NOT NULL,
    step_id      text NOT NULL,
    entered_at   timestamptz NOT NULL,
    tenant_id    text NOT NULL,
    workflow_id  text NOT NULL,
    action_type  text NOT NULL,
    status       text NOT NULL,
    finished_at  timestamptz,
    duration_ms  bigint,
    duration_le  double precision,
    error        text,
    PRIMARY KEY (execution_id, step_id, entered_at)
) PARTITION BY RANGE (entered_at);
CREATE INDEX IF NOT EXISTS step_runs_workflow_idx ON wfa.step_runs (workflow_id, entered_at);
