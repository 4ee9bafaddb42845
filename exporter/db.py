"""Connections and pools: connect retries with capped backoff, a server-side statement timeout,
lazy pools that open while the database is down, and a classification of database failures."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import TypeVar

import asyncpg

log = logging.getLogger(__name__)

CONNECT_ERRORS = (OSError, asyncpg.CannotConnectNowError, asyncpg.PostgresConnectionError)
"""What connecting to an unreachable (or starting, or full) server raises."""

LOST_ERRORS = (
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.TooManyConnectionsError,
)
"""asyncpg's own errors for a server that went away, is restarting or takes no connections."""

CONNECT_TIMEOUT_S = 10.0
"""Longest wait for one connection attempt (asyncpg's default is a minute)."""

T = TypeVar("T")


class DatabaseUnavailable(Exception):
    """A database could not be reached (or went away); `what` names which one."""

    def __init__(self, what: str, cause: BaseException) -> None:
        super().__init__(f"the {what} is not reachable: {describe(cause)}")
        self.what = what


class StoreUnavailable(DatabaseUnavailable):
    """The analytics store could not be reached or went away mid-request."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__("store", cause)


def describe(exc: BaseException) -> str:
    """A one-line description of an error (type and first line), for logs and problems."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__


def raised_in_asyncpg(exc: BaseException) -> bool:
    """Whether `exc` was raised inside asyncpg (connecting, parsing a DSN)."""
    tb: TracebackType | None = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_globals.get("__name__", "").startswith("asyncpg"):
            return True
        tb = tb.tb_next
    return False


def is_unreachable(exc: BaseException) -> bool:
    """Whether `exc` says a database connection failed (not a query, not a local file).

    asyncpg's own connection errors always qualify; a plain OSError only when it was raised
    inside asyncpg (connecting), so a full disk or a client that hung up is never taken for a
    database outage.
    """
    if isinstance(exc, (DatabaseUnavailable, *LOST_ERRORS)):
        return True
    if isinstance(exc, asyncpg.InterfaceError) and "closed" in str(exc):
        return True
    if isinstance(exc, OSError | TimeoutError):
        return raised_in_asyncpg(exc)
    return False


@dataclass(slots=True)
class Backoff:
    """Capped exponential delays between attempts; `level_changed` says when to log again."""

    first: float = 1.0
    cap: float = 30.0
    attempt: int = 0
    level_changed: bool = True
    """Whether the last delay differs from the one before (a new attempt level)."""
    _last_delay: float = 0.0

    def next_delay(self) -> float:
        """The delay before the next attempt (first, twice that, and so on up to cap)."""
        delay = min(self.cap, max(self.first, 0.05) * 2 ** min(self.attempt, 30))
        self.attempt += 1
        self.level_changed = delay != self._last_delay
        self._last_delay = delay
        return delay

    def reset(self) -> None:
        """Start again from the first delay."""
        self.attempt = 0
        self._last_delay = 0.0


async def retry_unreachable(
    factory: Callable[[], Awaitable[T]],
    what: str,
    *,
    retries: int | None,
    backoff: Backoff,
) -> T:
    """`await factory()` until it does not fail as unreachable; `retries` None: forever.

    Logs one line per backoff level (never a traceback) and one when it succeeds after
    failures. Raises the last error after `retries` failed retries; other errors at once.
    """
    failures = 0
    while True:
        try:
            result = await factory()
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            failures += 1
            if retries is not None and failures > retries:
                raise
            delay = backoff.next_delay()
            if backoff.level_changed:
                limit = "" if retries is None else f" (at most {retries} retries)"
                log.warning(
                    "%s unreachable (%s); retrying every %.3g s%s",
                    what,
                    describe(exc),
                    delay,
                    limit,
                )
            await asyncio.sleep(delay)
            continue
        if failures:
            log.info("%s reachable after %d failed attempts", what, failures)
        backoff.reset()
        return result


def _settings(statement_timeout: timedelta, application_name: str) -> dict[str, str]:
    return {
        "statement_timeout": str(int(statement_timeout.total_seconds() * 1000)),
        "application_name": application_name,
        # Reads over rollups are short, but their estimates pass jit_above_cost on big stores,
        # where compiling costs more than the query itself.
        "jit": "off",
    }


async def connect(
    dsn: str,
    *,
    statement_timeout: timedelta = timedelta(seconds=30),
    retries: int = 0,
    retry_delay: timedelta = timedelta(seconds=1),
    application_name: str = "wfa",
) -> asyncpg.Connection:
    """One connection, retried `retries` times (with backoff) on connection errors."""
    settings = _settings(statement_timeout, application_name)
    return await retry_unreachable(
        lambda: asyncpg.connect(dsn, server_settings=settings, timeout=CONNECT_TIMEOUT_S),
        "database",
        retries=retries,
        backoff=Backoff(retry_delay.total_seconds()),
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
    return await retry_unreachable(
        lambda: asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            server_settings=settings,
            timeout=CONNECT_TIMEOUT_S,
        ),
        "database",
        retries=retries,
        backoff=Backoff(retry_delay.total_seconds()),
    )


async def lazy_pool(
    dsn: str,
    *,
    max_size: int = 10,
    statement_timeout: timedelta = timedelta(seconds=30),
    application_name: str = "wfa",
) -> asyncpg.Pool:
    """A pool that connects on first use: creating it never fails because the server is down.

    Connections are opened by `acquire()` (which raises while the server is unreachable) and
    closed after five idle minutes; `warm_up` opens a few ahead of use.
    """
    return await asyncpg.create_pool(
        dsn,
        min_size=0,
        max_size=max_size,
        server_settings=_settings(statement_timeout, application_name),
        timeout=CONNECT_TIMEOUT_S,
    )


async def warm_up(pool: asyncpg.Pool, n: int) -> None:
    """Open up to `n` connections of `pool` now (best effort)."""
    n = min(n, pool.get_max_size())
    conns: list[asyncpg.Connection] = []
    try:
        for _ in range(n):
            conns.append(await pool.acquire(timeout=CONNECT_TIMEOUT_S))
    except Exception as exc:
        log.debug("pool warm-up stopped: %s", describe(exc))
    finally:
        for c in conns:
            await pool.release(c)


async def probe(pool: asyncpg.Pool, timeout: float = 5.0) -> bool | None:
    """Whether `pool`'s server answers `SELECT 1`: True, False, or None when it cannot tell.

    A stale connection (the server restarted) is retried once on a fresh one. None means the
    pool was too busy to lend a connection in time, which says nothing about the server.
    """
    for attempt in range(2):
        saturated = pool.get_size() >= pool.get_max_size() and pool.get_idle_size() == 0
        try:
            conn = await pool.acquire(timeout=timeout)
        except TimeoutError:
            # Busy connections say nothing; a new connection that does not come is an outage.
            return None if saturated else False
        except Exception as exc:
            if is_unreachable(exc):
                return False
            raise
        try:
            async with asyncio.timeout(timeout):
                await conn.fetchval("SELECT 1")
            return True
        except Exception as exc:
            if not is_unreachable(exc) or attempt:
                return False
        finally:
            await pool.release(conn)
    return False


async def close_pools(pools: Sequence[asyncpg.Pool | None], grace: float | None = None) -> None:
    """Close `pools`; with `grace`, terminate every connection still busy after that long."""
    open_pools = [p for p in pools if p is not None]
    try:
        async with asyncio.timeout(grace):
            for pool in open_pools:
                await pool.close()
    except TimeoutError:
        log.warning("in-flight database work outlasted %.0f s; terminating connections", grace)
        for pool in open_pools:
            pool.terminate()
