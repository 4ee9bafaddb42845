"""Bearer tokens from the config and the store: constant-time check, tenant and scopes."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable

from aiohttp import web

from exporter.api.errors import ProblemError
from exporter.api.tokenstore import Principal, StoredTokens, TokenStoreUnavailable
from exporter.config.schema import ApiToken
from exporter.tokens import TOKEN_PREFIX, new_token, token_digest

__all__ = [
    "PRINCIPAL",
    "TOKENS",
    "TOKEN_PREFIX",
    "Principal",
    "TokenTable",
    "authenticate",
    "check_scope",
    "config_entry",
    "new_token",
    "require_scope",
    "token_digest",
]

_MAX_TOKEN_CHARS = 256
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="wfa"'}


PRINCIPAL = web.RequestKey("principal", Principal)
"""Key of the authenticated principal in the request's mapping."""


def config_entry(name: str, tenant: str, scopes: Iterable[str], token: str) -> str:
    """The YAML list item for `api.tokens` that accepts `token`."""
    scope_list = ", ".join(sorted(set(scopes)))
    return (
        f"- {{name: {json.dumps(name)}, sha256: {token_digest(token)},"
        f" tenant: {json.dumps(tenant)}, scopes: [{scope_list}]}}"
    )


class TokenTable:
    """The configured tokens (compared in constant time), then the stored ones."""

    def __init__(self, tokens: Iterable[ApiToken], stored: StoredTokens | None = None) -> None:
        self._tokens = [
            (bytes.fromhex(t.sha256), Principal(t.name, t.tenant, frozenset(t.scopes)))
            for t in tokens
        ]
        self.stored = stored

    @property
    def config_names(self) -> frozenset[str]:
        """Names of the config tokens."""
        return frozenset(p.name for _, p in self._tokens)

    @property
    def config_digests(self) -> frozenset[bytes]:
        """Digests of the config tokens."""
        return frozenset(d for d, _ in self._tokens)

    def lookup(self, token: str) -> Principal | None:
        """The principal whose token this is, or None; TokenStoreUnavailable if unsure."""
        digest = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for stored, principal in self._tokens:
            if hmac.compare_digest(stored, digest) and found is None:
                found = principal
        if found is None and self.stored is not None:
            found = self.stored.lookup(digest)
        return found


def _bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization")
    if header is None:
        return None
    scheme, _, value = header.strip().partition(" ")
    value = value.strip()
    if scheme.lower() != "bearer" or not value or len(value) > _MAX_TOKEN_CHARS:
        return None
    return value


def authenticate(request: web.Request, table: TokenTable) -> Principal:
    """The caller's principal; 401 when the token is missing or unknown."""
    cached = request.get(PRINCIPAL)
    if cached is not None:
        return cached
    token = _bearer(request)
    try:
        principal = table.lookup(token) if token is not None else None
    except TokenStoreUnavailable:
        raise ProblemError(
            503,
            "Service Unavailable",
            "the token store cannot be read now; try again later",
            headers={"Retry-After": "5"},
        ) from None
    if principal is None:
        raise ProblemError(
            401,
            "Unauthorized",
            "a valid bearer token is required" if token is None else "the token is not valid",
            param="Authorization",
            headers=_CHALLENGE,
        )
    request[PRINCIPAL] = principal
    return principal


def check_scope(principal: Principal, scope: str) -> None:
    """403 unless the principal holds `scope`."""
    if scope not in principal.scopes:
        raise ProblemError(
            403, "Forbidden", f"the token lacks the {scope!r} scope", param="Authorization"
        )


TOKENS = web.AppKey("wfa_tokens", TokenTable)
"""App key of the token table."""


def require_scope(request: web.Request, scope: str) -> Principal:
    """Authenticate the request and demand `scope` (401 / 403 as problem+json)."""
    principal = authenticate(request, request.app[TOKENS])
    check_scope(principal, scope)
    return principal
