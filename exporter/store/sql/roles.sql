-- Database roles for Grafana: the read-only reader and per-tenant roles over filtered views.
-- Statements that name roles, schemas or tenants are built here with format(), so every
-- identifier and literal is quoted by the server.

-- name: role
SELECT rolsuper, rolcreaterole, rolcreatedb, rolreplication, rolbypassrls, rolcanlogin
  FROM pg_roles WHERE rolname = $1;

-- name: memberships
SELECT g.rolname FROM pg_auth_members m
  JOIN pg_roles g ON g.oid = m.roleid
  JOIN pg_roles r ON r.oid = m.member
 WHERE r.rolname = $1;

-- name: i_am_superuser
SELECT rolsuper FROM pg_roles WHERE rolname = current_user;

-- name: create_role
SELECT format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION '
              'NOBYPASSRLS', $1::text);

-- name: set_login
-- $2 is a SCRAM-SHA-256 verifier: the password itself never reaches the server's logs.
SELECT format('ALTER ROLE %I WITH LOGIN PASSWORD %L', $1::text, $2::text);

-- name: role_settings
SELECT format('ALTER ROLE %I IN DATABASE %I SET default_transaction_read_only = on',
              $1::text, current_database())
UNION ALL
SELECT format('ALTER ROLE %I IN DATABASE %I SET statement_timeout = %L',
              $1::text, current_database(), $2::text);

-- name: role_search_path
-- The tenant's schema, then TimescaleDB's functions (time_bucket of the $__timeGroup macro).
SELECT format('ALTER ROLE %I IN DATABASE %I SET search_path = %s', $1::text, current_database(),
              concat_ws(', ', quote_ident($2::text),
                        (SELECT quote_ident(n.nspname) FROM pg_extension e
                           JOIN pg_namespace n ON n.oid = e.extnamespace
                          WHERE e.extname = 'timescaledb')));

-- name: grant_membership
SELECT format('GRANT %I TO %I', $1::text, current_user);

-- name: revoke_wfa
-- Everything a role may hold in the wfa schema, taken back before granting exactly the list.
SELECT format('REVOKE ALL ON ALL TABLES IN SCHEMA wfa FROM %I', $1::text)
UNION ALL SELECT format('REVOKE ALL ON ALL SEQUENCES IN SCHEMA wfa FROM %I', $1::text)
UNION ALL SELECT format('REVOKE ALL ON ALL FUNCTIONS IN SCHEMA wfa FROM %I', $1::text)
UNION ALL SELECT format('REVOKE ALL ON SCHEMA wfa FROM %I', $1::text);

-- name: grant_usage
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', $1::text, $2::text);

-- name: grant_select
-- $1 the relation as regclass text (wfa.name), $2 the role.
SELECT format('GRANT SELECT ON %s TO %I', $1::regclass, $2::text);

-- name: columns
SELECT attname FROM pg_attribute
 WHERE attrelid = $1::regclass AND attnum > 0 AND NOT attisdropped;

-- name: drop_schema
SELECT format('DROP SCHEMA IF EXISTS %I CASCADE', $1::text);

-- name: create_schema
SELECT format('CREATE SCHEMA %I AUTHORIZATION %I', $1::text, $2::text);

-- name: tenant_view
-- $1 schema, $2 view name, $3 relation (regclass text), $4 tenant.
SELECT format('CREATE VIEW %I.%I WITH (security_barrier) AS SELECT * FROM %s '
              'WHERE tenant_id = %L', $1::text, $2::text, $3::regclass, $4::text);

-- name: tenant_view_by_workflow
-- For relations without a tenant column: rows of the tenant's workflows.
SELECT format('CREATE VIEW %I.%I WITH (security_barrier) AS SELECT * FROM %s '
              'WHERE workflow_id IN (SELECT workflow_id FROM wfa.workflows WHERE tenant_id = %L)',
              $1::text, $2::text, $3::regclass, $4::text);

-- name: grant_schema_select
SELECT format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', $1::text, $2::text);

-- name: revoke_schema
SELECT format('REVOKE ALL ON SCHEMA %I FROM %I', $1::text, $2::text);

-- name: tenant_schemas
-- Per-tenant schemas other than $1 whose privileges a role might still hold.
SELECT nspname FROM pg_namespace WHERE nspname LIKE 'wfa\_t\_%' AND nspname <> $1;

-- name: become_view_owner
SET LOCAL ROLE wfa_tenant_views;

-- name: reset_role
RESET ROLE;

-- name: tenant_workflow_count
SELECT count(*) FROM wfa.workflows WHERE tenant_id = $1;
