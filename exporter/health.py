"""Health of the two databases, the store's freshness (`data_as_of`) and readiness.

Freshness: `data_as_of` is the instant the last poll cycle that read the source until it
was caught up started (the exporter's clock). Every source change committed before it, whose
`updated_at` was within `exporter.overlap` of its commit, is in the store. It stays put while
ingestion is stalled (source or store down, exporter stopped), so `now - data_as_of` is the
ingest lag readiness compares with `exporter.ready_max_lag`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from exporter.store.migrate import require_current
from exporter.store.sqlfiles import named

log = logging.getLogger(__name__)
Q = named("health.sql")


@dataclass(slots=True)
class Health:
    """Whether the store and the source answered last time each was used or probed."""

    store_up: bool = False
    source_up: bool = False
    _since: dict[str, float] = field(default_factory=dict)

    def set(self, what: str, up: bool, cause: str = "") -> None:
        """Record the state of `what` ("store" or "source"); log a line on each change only."""
        before = self.store_up if what == "store" else self.source_up
        if what == "store":
            self.store_up = up
        else:
            self.source_up = up
        now = time.monotonic()
        if up and not before and what in self._since:
            log.info("%s reachable again after %.1f s", what, now - self._since.pop(what))
        elif not up and (before or what not in self._since):
            self._since.setdefault(what, now)
            log.warning("%s unreachable%s", what, f": {cause}" if cause else "")


async def mark_caught_up(conn: asyncpg.Connection, started_at: datetime) -> None:
    """Record that a poll cycle started at `started_at` read the source until caught up."""
    await conn.execute(Q["mark_caught_up"], started_at)


async def data_as_of(conn: asyncpg.Connection) -> datetime | None:
    """The store's freshness (see the module doc); None before the first complete poll."""
    return await conn.fetchval(Q["caught_up"])


def iso(t: datetime | None) -> str | None:
    """RFC 3339 UTC text of a time (the form of `data_as_of` and `X-Data-As-Of`)."""
    if t is None:
        return None
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True, slots=True)
class Readiness:
    """The outcome of a readiness check: ready, or the reason it is not."""

    ready: bool
    reason: str | None
    data_as_of: datetime | None
    lag_seconds: float | None

    def to_json(self) -> dict[str, object]:
        """The body fields of /readyz."""
        lag = None if self.lag_seconds is None else round(self.lag_seconds, 3)
        return {"data_as_of": iso(self.data_as_of), "ingest_lag_seconds": lag}


async def check_store(
    conn: asyncpg.Connection, *, max_lag: timedelta, health: Health | None = None
) -> Readiness:
    """Schema current, then (with an exporter in the process) the source up, then the lag.

    Raises SchemaError when the schema is not current; database errors propagate.
    """
    await require_current(conn)
    as_of = await data_as_of(conn)
    lag = None if as_of is None else max(0.0, time.time() - as_of.timestamp())

    def no(reason: str) -> Readiness:
        return Readiness(False, reason, as_of, lag)

    if health is not None and not health.source_up:
        return no("the source database is not reachable")
    if as_of is None or lag is None:
        return no("no poll cycle has completed yet")
    if lag > max_lag.total_seconds():
        return no(
            f"ingestion lags {lag:.0f} s behind, more than exporter.ready_max_lag "
            f"({max_lag.total_seconds():g} s)"
        )
    return Readiness(True, None, as_of, lag)
