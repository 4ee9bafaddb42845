"""Failures a person causes and can fix: one line that says what to do, instead of a traceback.

`explain` returns None for anything else (a bug), whose traceback is the report.
"""

from __future__ import annotations

import asyncpg

from exporter.db import describe, is_unreachable, raised_in_asyncpg
from exporter.localdb import DevDBError
from exporter.runtime import ListenError, StartupFailed
from exporter.store.migrate import SchemaError

DSN_KEYS = "source.dsn and store.dsn"
_LOGIN = (asyncpg.InvalidPasswordError, asyncpg.InvalidAuthorizationSpecificationError)


def explain(exc: BaseException) -> str | None:
    """What went wrong and what to do about it, or None when the user cannot fix it."""
    if isinstance(exc, ListenError | StartupFailed | SchemaError | DevDBError):
        return str(exc)
    if isinstance(exc, asyncpg.ClientConfigurationError) or (
        isinstance(exc, ValueError) and raised_in_asyncpg(exc)
    ):
        return f"invalid DSN ({_first_line(exc)}): check {DSN_KEYS} in the config"
    if isinstance(exc, _LOGIN):
        return f"the database refused the login ({_first_line(exc)}): check the user and " \
            f"password of {DSN_KEYS}"
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return f"{_first_line(exc)}: check the database name of {DSN_KEYS}, or create it"
    if isinstance(exc, asyncpg.InsufficientPrivilegeError):
        return f"{_first_line(exc)}: grant the database user the privilege, or use another one"
    if is_unreachable(exc):
        return (
            f"cannot reach the database ({describe(exc)}): check {DSN_KEYS} and that the "
            "server is running"
        )
    return None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
