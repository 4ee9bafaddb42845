-- Where each backend keeps rows: partitions, chunks, materializations, watermarks.

-- name: pg_partitions
SELECT format('%I.%I', n.nspname, c.relname) AS relation, p.relname AS tbl,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                     'FROM \(''([^'']+)''\)'))[1]::timestamptz AS range_start,
       (regexp_match(pg_get_expr(c.relpartbound, c.oid),
                     'TO \(''([^'']+)''\)'))[1]::timestamptz AS range_end,
       c.reltuples::bigint AS estimate, false AS compressed
  FROM pg_inherits i
  JOIN pg_class p ON p.oid = i.inhparent
  JOIN pg_namespace pn ON pn.oid = p.relnamespace
  JOIN pg_class c ON c.oid = i.inhrelid
  JOIN pg_namespace n ON n.oid = c.relnamespace
 WHERE pn.nspname = 'wfa' AND p.relname = ANY($1::text[]);

-- name: ts_chunks
SELECT format('%I.%I', ch.chunk_schema, ch.chunk_name) AS relation, ch.hypertable_name AS tbl,
       ch.range_start, ch.range_end, c.reltuples::bigint AS estimate, ch.is_compressed AS compressed
  FROM timescaledb_information.chunks ch
  JOIN pg_namespace n ON n.nspname = ch.chunk_schema
  JOIN pg_class c ON c.relname = ch.chunk_name AND c.relnamespace = n.oid
 WHERE ch.hypertable_schema = $1 AND ch.hypertable_name = ANY($2::text[]);

-- name: ts_materializations
SELECT format('%I.%I', view_schema, view_name) AS view,
       materialization_hypertable_schema AS schema, materialization_hypertable_name AS name
  FROM timescaledb_information.continuous_aggregates
 WHERE view_schema = 'wfa';

-- name: pg_watermarks
SELECT rollup, watermark FROM wfa.watermarks;

-- name: timescaledb_status
-- Whether the timescaledb extension is created here, installable, and preloaded by the server
-- (preloaded is NULL when this user may not read shared_preload_libraries).
SELECT
    EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'timescaledb') AS installed,
    EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') AS available,
    'timescaledb' = ANY (string_to_array(replace(
        (SELECT setting FROM pg_settings WHERE name = 'shared_preload_libraries'), ' ', ''),
        ',')) AS preloaded;
