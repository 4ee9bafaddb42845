"""The store backend interface: DDL and maintenance differ, relations and reads do not."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

# Raw tables and the time column each is partitioned (or chunked) by.
RAW_TABLES: dict[str, str] = {
    "executions": "enrolled_at",
    "execution_steps": "enrolled_at",
    "workflow_events": "occurred_at",
    "step_runs": "entered_at",
}


@dataclass(slots=True)
class RefreshResult:
    """What a rollup refresh did."""

    buckets: dict[str, int] = field(default_factory=dict)
    watermarks: dict[str, datetime] = field(default_factory=dict)


class Backend(ABC):
    """Backend-specific DDL and maintenance over the shared `wfa` relations."""

    name: str

    @abstractmethod
    def migration(self, version: int) -> list[str]:
        """Backend-specific statements of schema `version`, run after the common ones."""

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
