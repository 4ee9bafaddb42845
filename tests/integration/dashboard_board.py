"""A dashboard as Grafana sees it: variables resolved from the store, queries expanded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from monitoring import rendered
from monitoring.settings import Settings
from tests.kit.grafana import (
    ALL,
    Query,
    Templating,
    expand_sql,
    panel_interval,
    pick,
    variable_queries,
)

HOUR = timedelta(hours=1)
STORE_MIN_INTERVAL = "1h"
"""The store data source's timeInterval (provisioning/grafana/datasources/wfa.yaml)."""
MAX_DATA_POINTS = 1000


def dashboards(settings: Settings | None = None) -> dict[str, dict[str, Any]]:
    """Every generated dashboard by file name."""
    return {name: json.loads(text) for name, text in rendered(settings).items()}


@dataclass(frozen=True, slots=True)
class Choice:
    """A selection of the tenant and workflow variables."""

    tenant: str  # "one" or "all"
    workflow: str  # "one", "several" or "all"

    def __str__(self) -> str:
        return f"tenant={self.tenant} workflow={self.workflow}"


CHOICES = [Choice(t, w) for t in ("one", "all") for w in ("one", "several", "all")]


def ceil_hour(t: datetime) -> datetime:
    """The first hour boundary at or after `t`."""
    floor = t.replace(minute=0, second=0, microsecond=0)
    return floor if floor == t else floor + HOUR


def floor_hour(t: datetime) -> datetime:
    """The hour boundary at or before `t`."""
    return t.replace(minute=0, second=0, microsecond=0)


def hours_in(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """[from, to) covered by the hour buckets `$__timeFilter(bucket)` keeps for [start, end]."""
    return ceil_hour(start), floor_hour(end) + HOUR


class Board:
    """One dashboard with its variables set as a user would set them."""

    def __init__(self, conn: asyncpg.Connection, dashboard: dict[str, Any], tsdb: bool):
        self.conn = conn
        self.dashboard = dashboard
        self.templating = Templating(dashboard)
        self.tsdb = tsdb

    def sql(
        self,
        raw: str,
        start: datetime,
        end: datetime,
        *,
        min_interval: str | None = None,
        max_data_points: int = MAX_DATA_POINTS,
        scoped: dict[str, Any] | None = None,
    ) -> str:
        """The SQL Grafana runs for `raw` over [start, end]."""
        interval = self.interval(start, end, min_interval, max_data_points)
        return expand_sql(
            raw,
            self.templating,
            start=start,
            end=end,
            interval=interval,
            timescaledb=self.tsdb,
            scoped=scoped,
        )

    @staticmethod
    def interval(
        start: datetime, end: datetime, min_interval: str | None, max_data_points: int
    ) -> timedelta:
        """$__interval of a store panel: its own minimum interval, else the data source's."""
        return panel_interval(start, end, max_data_points, min_interval or STORE_MIN_INTERVAL)

    async def options(self, name: str, start: datetime, end: datetime) -> list[tuple[str, str]]:
        """Run a SQL query variable and set its options: (text, value) rows."""
        query = next(q for n, k, q in variable_queries(self.dashboard) if n == name)
        rows = await self.conn.fetch(self.sql(query, start, end))
        if rows and "__value" in rows[0]:
            opts = [(r["__text"], r["__value"]) for r in rows]
        else:
            opts = [(r[0], r[0]) for r in rows]
        self.templating[name].options = opts
        return opts

    async def choose(self, choice: Choice, start: datetime, end: datetime) -> list[str]:
        """Set tenant and workflow as `choice` says, the rest to All; the workflows selected."""
        names = [n for n, kind, _ in variable_queries(self.dashboard) if kind == "sql"]
        selected: list[str] = []
        for name in names:
            opts = [v for _, v in await self.options(name, start, end)]
            assert opts, f"variable {name} has no options"
            how = {"tenant": choice.tenant, "workflow": choice.workflow}.get(name, "all")
            value = pick(opts, how)
            self.templating[name].select(value)
            if name == "workflow":
                selected = opts if value == ALL else list(value)
        return selected

    def runs(self, q: Query, selected: list[str]) -> Iterator[dict[str, Any] | None]:
        """Scoped values a panel is run with: once per value of its repeated row, else once."""
        if q.repeat:
            assert q.repeat == "workflow"
            for wf in selected:
                yield {"workflow": wf}
        yield None


def now_minute(minutes_ago: int = 7) -> datetime:
    """A recent whole minute (not a whole hour, so that ranges have ragged edges)."""
    t = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=minutes_ago)
    return t if t.minute else t - timedelta(minutes=1)
