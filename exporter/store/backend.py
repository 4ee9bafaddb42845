"""The store backend interface: DDL and maintenance differ, relations and reads do not."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from exporter.store.rollups import ReadSource, Rollup, range_function, totals_function

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


class RetentionError(ValueError):
    """A retention request names an unknown dataset or would lose data not yet rolled up."""


def dataset_of(raw: str) -> str:
    """The retention dataset holding raw table `raw` (with or without the `wfa.` prefix)."""
    table = raw.removeprefix("wfa.")
    for dataset, tables in RETENTION_RAW.items():
        if table in tables:
            return dataset
    raise RetentionError(f"{raw!r} is not a raw table")


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
