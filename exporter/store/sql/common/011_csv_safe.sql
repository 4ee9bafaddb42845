-- The formula guard of the CSV export, cheaper per cell: one ascii() call and integer
-- comparisons instead of a substring and six text comparisons (same cells guarded: those
-- starting with = + - @ TAB CR). Inlined by the planner like the version it replaces.
CREATE OR REPLACE FUNCTION wfa.csv_safe(v text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
  SELECT CASE ascii(v) WHEN 61 THEN '''' || v WHEN 43 THEN '''' || v WHEN 45 THEN '''' || v
                       WHEN 64 THEN '''' || v WHEN 9 THEN '''' || v WHEN 13 THEN '''' || v
                       ELSE v END
$$;
