-- API tokens kept in the store: only the SHA-256 of each secret.

-- name: insert
INSERT INTO wfa.api_tokens (name, tenant_id, scopes, sha256, expires_at)
VALUES ($1, $2, $3::text[], $4, $5)
ON CONFLICT DO NOTHING
RETURNING name, tenant_id, scopes, created_at, expires_at, revoked_at;

-- name: list
SELECT name, tenant_id, scopes, created_at, expires_at, revoked_at
  FROM wfa.api_tokens
 ORDER BY created_at, name;

-- name: revoke
UPDATE wfa.api_tokens SET revoked_at = coalesce(revoked_at, now())
 WHERE name = $1
RETURNING name, revoked_at;

-- name: active
-- Tokens a request may present now; the API reloads these every second or so.
SELECT name, tenant_id, scopes, sha256, expires_at
  FROM wfa.api_tokens
 WHERE revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now());
