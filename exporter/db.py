"""Connections and pools with bounded connect retries and a server-side statement timeout."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import asyncpg

log = logging.getLogger(__name__)

CONNECT_ERRORS = (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError)


def _settings(statement_timeout: timedelta, application_name: str) -> dict[str, str]:
    return {
        "statement_timeout": str(int(statement_timeout.total_seconds() * 1000)),
        "application_name": application_name,
        # Reads over rollups are short, but their estimates pass jit_above_cost on big stores,
        # where compiling costs more than the query itself.
        "jit": "off",
    }


async def _retry(factory, retries: int, delay: timedelta, what: str):
    attempt = 0
    while True:
        try:
            return await factory()
        except CONNECT_ERRORS as exc:
            attempt += 1
            if attempt > retries:
                raise
            log.warning("%s unreachable (%s), retry %d/%d", what, exc, attempt, retries)
            await asyncio.sleep(delay.total_seconds())


async def connect(
    dsn: str,
    *,
    statement_timeout: timedelta = timedelta(seconds=30),
    retries: int = 0,
    retry_delay: timedelta = timedelta(seconds=1),
    application_name: str = "wfa",
) -> asyncpg.Connection:
    """One connection, retried `retries` times on connection errors."""
    settings = _settings(statement_timeout, application_name)
    return await _retry(
        lambda: asyncpg.connect(dsn, server_settings=settings), retries, retry_delay, "database"
    )


async def create_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    statement_timeout: timedelta = timedelta(seconds=30),
    retries: int = 0,
    retry_delay: timedelta = timedelta(seconds=1),
    application_name: str = "wfa",
) -> asyncpg.Pool:
    """A pool whose connections carry the statement timeout, retried on connection errors."""
    settings = _settings(statement_timeout, application_name)
    return await _retry(
        lambda: asyncpg.create_pool(
            dsn, min_size=min_size, max_size=max_size, server_settings=settings
        ),
        retries,
        retry_delay,
        "database",
    )
