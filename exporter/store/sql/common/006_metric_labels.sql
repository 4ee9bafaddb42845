-- Bounded label values of free-text metric labels (exit reasons): the values exposed as their
-- own label; every other value is summed into `other`. A value is promoted once and kept.
CREATE TABLE IF NOT EXISTS wfa.metric_labels (
    family      text NOT NULL,
    label       text NOT NULL,
    source      text NOT NULL CHECK (source IN ('allow', 'top')),
    promoted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (family, label)
);

-- Per series, what was already counted in `other` when its label was promoted: the promoted
-- series continues from there, so `other` never goes down.
CREATE TABLE IF NOT EXISTS wfa.metric_label_baselines (
    family      text NOT NULL,
    label       text NOT NULL,
    tenant_id   text NOT NULL,
    workflow_id text NOT NULL,
    value       bigint NOT NULL,
    PRIMARY KEY (family, label, tenant_id, workflow_id),
    FOREIGN KEY (family, label) REFERENCES wfa.metric_labels ON DELETE CASCADE
);

-- Families whose `other` series has been served: later promotions need a baseline.
CREATE TABLE IF NOT EXISTS wfa.metric_label_families (
    family     text PRIMARY KEY,
    served_at  timestamptz NOT NULL DEFAULT now()
);
