"""Reconcile: find what the keyset cursor missed and re-ingest exactly those days.

The cursor misses a row whose `updated_at` was set back, or whose transaction committed
later than `exporter.overlap` after stamping it. Both sides compute, per (workflow, UTC day
of enrolled_at), the row count and an order-independent hash of (id, updated_at); the rows
of the days that differ are read again and written through the normal transform and batch
path (fenced, validated, quarantined like any batch). Quarantined rows count as seen.

Only rows the cursor has passed (updated until its head) and days the store still keeps
(within every raw retention period, after any retention cutoff) are compared: newer rows are
the poller's, older days were dropped on purpose.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from exporter import retention
from exporter.config import Config
from exporter.config.schema import RAW_DATASETS
from exporter.ingest import Fence, Ingestor
from exporter.source.reader import DayQueries, source_clock
from exporter.store.backend import retention_cutoffs
from exporter.store.sqlfiles import named

Q = named("reconcile.sql")
Day = tuple[str, datetime]
"""(workflow id, UTC day as a naive timestamp)."""
Fingerprint = dict[Day, tuple[int, Any]]
_DAY = timedelta(days=1)
_SHOW_DAYS = 20


@dataclass(slots=True)
class ReconcileResult:
    """What one reconcile compared and healed."""

    days_compared: int = 0
    days_differing: int = 0
    rows_read: int = 0
    healed: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, int] = field(default_factory=dict)
    still_differing: list[Day] = field(default_factory=list)
    horizon: datetime | None = None
    seconds: float = 0.0

    def summary(self) -> str:
        """One log line."""
        return (
            f"{self.days_compared} days compared, {self.days_differing} differed, "
            f"{self.rows_read} rows read, healed {self.healed or 0}, "
            f"rejected {self.rejected or 0}, {len(self.still_differing)} still differ"
        )

    def to_json(self) -> dict[str, Any]:
        """The result as `wfa reconcile` prints it."""
        return {
            "days_compared": self.days_compared,
            "days_differing": self.days_differing,
            "rows_read": self.rows_read,
            "healed": dict(sorted(self.healed.items())),
            "healed_total": sum(self.healed.values()),
            "rejected": dict(sorted(self.rejected.items())),
            "still_differing": len(self.still_differing),
            "still_differing_days": [
                {"workflow_id": w, "day": d.date().isoformat()}
                for w, d in self.still_differing[:_SHOW_DAYS]
            ],
            "horizon": self.horizon.isoformat() if self.horizon else None,
            "seconds": round(self.seconds, 3),
        }


async def _lower_bounds(
    cfg: Config, store: asyncpg.Connection, now: datetime
) -> tuple[datetime, dict[str, datetime]]:
    """The first whole UTC day compared: by default, and per workflow with its own periods."""
    policies = await retention.load(store, cfg)
    cutoffs = await retention_cutoffs(store)
    floor = max([cfg.source.valid_from, *(cutoffs.get(d, cfg.source.valid_from) for d in
                                          RAW_DATASETS)])

    def first_day(workflow_id: str | None) -> datetime:
        period = min(policies.period(d, workflow_id) for d in RAW_DATASETS)
        start = max(now - period, floor)
        return start.replace(hour=0, minute=0, second=0, microsecond=0) + _DAY

    default = first_day(None)
    own = {
        w["workflow_id"]: first_day(w["workflow_id"])
        for w in await store.fetch(Q["workflow_ids"])
    }
    return default, own


def _naive(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None)


def _fingerprint(rows: list[asyncpg.Record]) -> Fingerprint:
    return {(r["workflow_id"], r["day"]): (r["n"], r["h"]) for r in rows}


async def reconcile(
    cfg: Config,
    ingestor: Ingestor,
    source: asyncpg.Connection,
    store: asyncpg.Connection,
    fence: Fence | None = None,
) -> ReconcileResult:
    """Compare source and store day by day and re-ingest the rows of the days that differ."""
    started = time.perf_counter()
    out = ReconcileResult()
    cursor = await store.fetchrow("SELECT updated_at FROM wfa.cursors WHERE name = 'executions'")
    if cursor is None:
        return out
    horizon = out.horizon = cursor["updated_at"]
    now = await source_clock(source)
    default, own = await _lower_bounds(cfg, store, now)
    since = min([default, *own.values()])
    q = DayQueries(cfg.source.executions_table, ingestor.executions.select, _columns(cfg))

    theirs = _fingerprint(await source.fetch(q.fingerprint_sql, since, horizon))
    mine = _fingerprint(await store.fetch(Q["fingerprint"], since, horizon, None, None))

    def kept(day: Day) -> bool:
        return day[1] >= _naive(own.get(day[0], default))

    days = {d for d in theirs.keys() | mine.keys() if kept(d)}
    differing = sorted(d for d in days if theirs.get(d) != mine.get(d))
    out.days_compared, out.days_differing = len(days), len(differing)
    if not differing:
        out.seconds = time.perf_counter() - started
        return out

    wids, dates = [d[0] for d in differing], [d[1] for d in differing]
    batch = cfg.exporter.batch_size

    async def pages() -> AsyncIterator[list[asyncpg.Record]]:
        async with source.transaction(isolation="repeatable_read", readonly=True):
            page: list[asyncpg.Record] = []
            async for r in source.cursor(q.rows_sql, since, horizon, wids, dates, prefetch=batch):
                page.append(r)
                if len(page) >= batch:
                    yield page
                    page = []
            if page:
                yield page

    res = await ingestor.reingest(pages(), store, ingestor.s.plausible(now), fence)
    out.rows_read, out.healed, out.rejected = res.read, res.healed, res.rejected

    theirs = _fingerprint(await source.fetch(q.fingerprint_days_sql, since, horizon, wids, dates))
    mine = _fingerprint(await store.fetch(Q["fingerprint"], since, horizon, wids, dates))
    out.still_differing = [d for d in differing if theirs.get(d) != mine.get(d)]
    out.seconds = time.perf_counter() - started
    return out


def _columns(cfg: Config) -> dict[str, str | None]:
    return cfg.source.columns.model_dump()
