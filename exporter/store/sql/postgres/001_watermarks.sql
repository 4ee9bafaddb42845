-- How far each rollup table is materialized (plain PostgreSQL; caggs keep their own).
CREATE TABLE IF NOT EXISTS wfa.watermarks (
    rollup    text PRIMARY KEY,
    watermark timestamptz NOT NULL
);
