"""The store backend interface: DDL and maintenance differ, relations and reads do not."""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from exporter.store import weekly
from exporter.store.rollups import ROLLUPS, ReadSource, Rollup, range_function, totals_function
from exporter.store.sqlfiles import named, sql, statements

STORAGE = named("storage.sql")

# Raw tables and the time column each is partitioned (or chunked) by.
RAW_TABLES: dict[str, str] = {
    "executions": "enrolled_at",
    "execution_steps": "enrolled_at",
    "workflow_events": "occurred_at",
    "step_runs": "entered_at",
}

# Raw tables of each raw retention dataset (names as in the `retention` config section).
RETENTION_RAW: dict[str, tuple[str, ...]] = {
    "executions": ("executions", "execution_steps"),
    "step_runs": ("step_runs",),
    "workflow_events": ("workflow_events",),
}
_CUTOFF_KEY = "retention_cutoff:"
_PARTITION_BY = re.compile(r"\s+PARTITION BY RANGE \(\w+\)")


def raw_tables_ddl(partitioned: bool) -> list[str]:
    """The raw tables' DDL, written once for both backends (common/001_raw.sql); without
    `partitioned` their PARTITION BY clauses are left out (TimescaleDB chunks them instead)."""
    text = sql("common/001_raw.sql")
    return statements(text if partitioned else _PARTITION_BY.sub("", text))


class RetentionError(ValueError):
    """A retention request names an unknown dataset or would lose data not yet rolled up."""


def dataset_of(raw: str) -> str:
    """The retention dataset holding raw table `raw` (with or without the `wfa.` prefix)."""
    table = raw.removeprefix("wfa.")
    for dataset, tables in RETENTION_RAW.items():
        if table in tables:
            return dataset
    raise RetentionError(f"{raw!r} is not a raw table")


async def recorded_backend(conn: asyncpg.Connection) -> str | None:
    """The backend the schema was created for, if any."""
    if not await conn.fetchval("SELECT to_regclass('wfa.meta') IS NOT NULL"):
        return None
    return await conn.fetchval("SELECT value FROM wfa.meta WHERE key = 'backend'")


async def retention_cutoffs(conn: asyncpg.Connection) -> dict[str, datetime]:
    """Per dataset, the time before which data was dropped; refreshes must not reach below it."""
    rows = await conn.fetch(
        "SELECT substr(key, $2) AS dataset, value::timestamptz AS cutoff FROM wfa.meta "
        "WHERE key LIKE $1 || '%'",
        _CUTOFF_KEY,
        len(_CUTOFF_KEY) + 1,
    )
    return {r["dataset"]: r["cutoff"] for r in rows}


async def record_cutoff(conn: asyncpg.Connection, dataset: str, cutoff: datetime) -> None:
    """Remember that `dataset` was dropped before `cutoff` (never moves back)."""
    await conn.execute(
        "INSERT INTO wfa.meta AS m (key, value) VALUES ($1, $2::timestamptz::text) "
        "ON CONFLICT (key) DO UPDATE SET value = greatest(m.value::timestamptz, "
        "excluded.value::timestamptz)::text",
        _CUTOFF_KEY + dataset,
        cutoff,
    )


@dataclass(slots=True)
class RefreshResult:
    """What a rollup refresh did."""

    buckets: dict[str, int] = field(default_factory=dict)
    watermarks: dict[str, datetime] = field(default_factory=dict)


class Backend(ABC):
    """Backend-specific DDL and maintenance over the shared `wfa` relations."""

    name: str
    read_source: ReadSource
    reason: str = "store.backend names it"
    """Why this backend was chosen (see `choose_backend`)."""

    @abstractmethod
    def migration(self, version: int) -> list[str]:
        """Backend-specific statements of schema `version`, run after the common ones."""

    def read_functions(self, r: Rollup) -> list[str]:
        """DDL of the `wfa.<rollup>_range` and `_totals` read functions over this backend."""
        return [range_function(r, self.read_source), totals_function(r, self.read_source)]

    def reset(self) -> None:  # noqa: B027 (most backends cache nothing)
        """Forget what was cached of the store (another writer may have changed it)."""

    @abstractmethod
    async def prepare_write(
        self, conn: asyncpg.Connection, spans: dict[str, tuple[datetime, datetime]]
    ) -> None:
        """Make sure rows of each raw table within [min, max] can be written (partitions)."""

    @abstractmethod
    async def refresh(self, conn: asyncpg.Connection, now: datetime | None = None) -> RefreshResult:
        """Bring the rollups up to date with the raw tables and the invalidation log."""

    @abstractmethod
    async def maintain(self, conn: asyncpg.Connection, now: datetime) -> None:
        """Periodic upkeep: create partitions ahead of time."""

    @abstractmethod
    async def drop_before(
        self, conn: asyncpg.Connection, dataset: str, older_than: datetime
    ) -> list[str]:
        """Drop whole partitions or chunks of `dataset` ending by `older_than`; their names."""

    # storage, as retention sees it --------------------------------------------------------

    @abstractmethod
    async def watermarks(self, conn: asyncpg.Connection) -> dict[str, datetime | None]:
        """How far each rollup relation (`wfa.<rollup>_1h`, `_1d`) is materialized."""

    async def rolled_up_until(self, conn: asyncpg.Connection, dataset: str) -> datetime | None:
        """Rows of `dataset` before this time are materialized one level up (None: nothing
        is yet); the daily rollups are the top level."""
        if dataset == "rollups_1d":
            return datetime.max.replace(tzinfo=UTC)
        level = "1d" if dataset == "rollups_1h" else "1h"
        rollups = [r for r in ROLLUPS if level == "1d" or dataset_of(r.raw) == dataset]
        marks = await self.watermarks(conn)
        values = [marks.get(r.relation(level)) for r in rollups]
        if not values or any(v is None for v in values):
            return None
        return min(v for v in values if v is not None)

    def daily(self, r: Rollup) -> str:
        """The relation the reads take rollup `r`'s days from, and its weeks are summed from."""
        return self.read_source.daily.format(name=r.name)

    async def resum_weeks(
        self, conn: asyncpg.Connection, before: datetime, scope: str, *args: object
    ) -> None:
        """After daily rollup rows before `before` were removed from the rows matching `scope`
        (its parameters from $2), sum the weeks reaching below `before` again from the days."""
        for r in ROLLUPS:
            await weekly.resum_below(conn, r, self.daily(r), before, scope, *args)

    async def row_tables(self, conn: asyncpg.Connection, dataset: str) -> list[tuple[str, str]]:
        """(table, time column) of every table holding rows of a retention dataset."""
        if dataset in RETENTION_RAW:
            return [(f"wfa.{t}", RAW_TABLES[t]) for t in RETENTION_RAW[dataset]]
        return await self._rollup_tables(conn, dataset.removeprefix("rollups_"))

    @abstractmethod
    async def _rollup_tables(self, conn: asyncpg.Connection, level: str) -> list[tuple[str, str]]:
        """(table, "bucket") of every materialized rollup table of `level`."""

    @abstractmethod
    async def pieces(self, conn: asyncpg.Connection, dataset: str) -> list[dict[str, Any]]:
        """The partitions or chunks holding a dataset: relation, tbl, range_start, range_end,
        estimate (rows, from the catalog), compressed."""

    @property
    def policy_reach(self) -> timedelta | None:
        """How far back a refresh the database schedules itself reads (None: the exporter
        drives every refresh); retention must keep at least that much raw data."""
        return None

    def drop_deletes_rows(self, dataset: str) -> bool:
        """Whether `drop_before` deletes rows of `dataset` one by one (else it drops pieces)."""
        return False

    async def retention_settings(self, conn: asyncpg.Connection) -> None:  # noqa: B027
        """Inside a retention transaction: what the backend needs set (nothing by default)."""
