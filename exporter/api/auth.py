"""Bearer tokens from config: constant-time check, tenant and scopes of the caller."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Iterable
from dataclasses import dataclass

from aiohttp import web

from exporter.api.errors import ProblemError
from exporter.config.schema import ApiToken

TOKEN_PREFIX = "wfa_"

_MAX_TOKEN_CHARS = 256
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="wfa"'}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name, its tenant and scopes."""

    name: str
    tenant: str
    scopes: frozenset[str]


PRINCIPAL = web.RequestKey("principal", Principal)
"""Key of the authenticated principal in the request's mapping."""


def token_digest(token: str) -> str:
    """The hex SHA-256 of a token, as stored in `api.tokens[].sha256`."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def config_entry(name: str, tenant: str, scopes: Iterable[str], token: str) -> str:
    """The YAML list item for `api.tokens` that accepts `token`."""
    scope_list = ", ".join(sorted(set(scopes)))
    return (
        f"- {{name: {json.dumps(name)}, sha256: {token_digest(token)},"
        f" tenant: {json.dumps(tenant)}, scopes: [{scope_list}]}}"
    )


class TokenTable:
    """The configured tokens; lookups compare every digest in constant time."""

    def __init__(self, tokens: Iterable[ApiToken]) -> None:
        self._tokens = [
            (bytes.fromhex(t.sha256), Principal(t.name, t.tenant, frozenset(t.scopes)))
            for t in tokens
        ]

    def lookup(self, token: str) -> Principal | None:
        """The principal whose token this is, or None."""
        digest = hashlib.sha256(token.encode()).digest()
        found: Principal | None = None
        for stored, principal in self._tokens:
            if hmac.compare_digest(stored, digest) and found is None:
                found = principal
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
    principal = table.lookup(token) if token is not None else None
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
