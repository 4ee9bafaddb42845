"""Every SQL panel and variable, expanded as Grafana does, runs against a real store."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from exporter.config import config_from_dict
from exporter.dashboards import rendered
from exporter.dashboards.grafana import (
    Query,
    expand_sql,
    multi_variables,
    queries,
    variable_queries,
)
from exporter.queries import activity_funnel, cohort_funnel, get_workflow
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.writer import create_source_schema, write

NOW = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=7)
HOUR = NOW.replace(minute=0)
# Whole hours [HOUR - 7d, HOUR): Grafana's BETWEEN on hour buckets, ending 1 s before HOUR.
ALIGNED = (HOUR - timedelta(days=7), HOUR - timedelta(seconds=1))
# What a user gets from "Last 24 hours": unaligned edges, the live hour included.
LAST_DAY = (NOW - timedelta(hours=24), NOW)
DASHBOARDS = {name: json.loads(text) for name, text in rendered().items()}
SQL_QUERIES = [q for name, d in DASHBOARDS.items() for q in queries(name, d) if q.kind == "sql"]
TIME_SERIES_COLUMNS = ["time", "metric", "value"]
EXPECTED_COLUMNS: dict[str, list[str]] = {
    "Completion rate (cohort)": ["Completion rate"],
    "Conversion rate (cohort)": ["Conversion rate"],
    "Workflow events per hour (store)": TIME_SERIES_COLUMNS,
    "Workflows by volume": [
        "workflow_id",
        "Workflow",
        "Tenant",
        "Enrolled",
        "Completed",
        "Converted",
        "In progress",
        "Completion rate",
        "Conversion rate",
    ],
    "Conversion change against the previous period": [
        "workflow_id",
        "Workflow",
        "Enrolled",
        "Enrolled before",
        "Conversion rate",
        "Previous conversion rate",
        "Conversion change",
    ],
    "Cohort funnel: reached per step": ["Step", "Reached"],
    "Activity funnel: attempts entered per step": ["Step", "Attempts entered"],
    "Cohort funnel: drop-off per step": [
        "Step",
        "Action",
        "Reached",
        "In progress",
        "Dropped",
        "Drop-off ratio",
        "Bottleneck",
    ],
    "Activity funnel: attempts per step": [
        "Step",
        "Action",
        "Attempts entered",
        "Succeeded",
        "Failed",
        "Skipped",
        "Running",
        "Relative to first step",
    ],
    "Drop-off ratio per step by enrollment time (store)": TIME_SERIES_COLUMNS,
    "Top error texts": ["Error", "Workflow", "Step", "Action", "Failures", "Last seen (hour)"],
}


async def _fill(dsn: str, backend: str = "auto") -> None:
    """Simulated source data, ingested and rolled up by the exporter."""
    data = generate(executions=3000, days=10, workflows=3, tenants=2, seed=17, now=NOW)
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        await write(conn, data)
    finally:
        await conn.close()
    svc = ExporterService(config_from_dict({"source": {"dsn": dsn}, "store": {"backend": backend}}))
    await svc.open()
    try:
        result = await svc.poll_once()
        assert result is not None and result.written == len(data.executions)
    finally:
        await svc.close()


class Board:
    """Runs a dashboard's queries with its variables resolved from the store like Grafana."""

    def __init__(self, conn: asyncpg.Connection, dashboard: dict[str, Any], tsdb: bool):
        self.conn = conn
        self.dashboard = dashboard
        self.multi = multi_variables(dashboard)
        self.tsdb = tsdb
        self.values: dict[str, Any] = {"min_volume": "20", "window": "1d"}

    def expand(self, raw: str, start: datetime, end: datetime, **override: Any) -> str:
        """The SQL Grafana runs; $__interval follows the panels' 1h minimum interval."""
        return expand_sql(
            raw,
            start=start,
            end=end,
            interval=timedelta(hours=1),
            values={**self.values, **override},
            multi=self.multi,
            timescaledb=self.tsdb,
        )

    async def resolve_variables(self) -> None:
        """Run the SQL variable queries in order, each seeing the ones before it set to All."""
        for name, kind, query in variable_queries(self.dashboard):
            if kind != "sql":
                continue
            rows = await self.conn.fetch(self.expand(query, *LAST_DAY))
            assert rows, f"variable {name} has no values"
            key = "__value" if "__value" in rows[0] else next(iter(rows[0].keys()))
            if "__value" in rows[0]:
                assert all(r["__text"] for r in rows), f"variable {name}: empty labels"
            self.values[name] = [r[key] for r in rows]

    async def run(self, q: Query, start: datetime, end: datetime, **override: Any) -> list:
        """Rows of one panel query."""
        return await self.conn.fetch(self.expand(q.text, start, end, **override))


def _check_rows(q: Query, rows: list, where: str) -> None:
    assert rows, f"{where}: no rows"
    assert list(rows[0].keys()) == EXPECTED_COLUMNS[q.panel], f"{where}: columns"
    assert any(v is not None for r in rows for v in r.values()), f"{where}: only NULLs"
    if q.fmt == "time_series":
        times = [r["time"] for r in rows]
        assert times == sorted(times), f"{where}: time series not sorted by time"
        assert all(isinstance(r["metric"], str) for r in rows)
        values = [r["value"] for r in rows if r["value"] is not None]
        assert values and all(math.isfinite(v) for v in values)


async def _run_all(dsn: str, tsdb: bool) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for name, d in DASHBOARDS.items():
            if not any(q.kind == "sql" for q in queries(name, d)):
                continue
            board = Board(conn, d, tsdb)
            await board.resolve_variables()
            for q in (q for q in SQL_QUERIES if q.dashboard == name):
                for start, end in (ALIGNED, LAST_DAY):
                    where = f"{name}/{q.panel} [{start:%d %H:%M}, {end:%d %H:%M}]"
                    if q.repeat:
                        for wf in board.values[q.repeat]:
                            rows = await board.run(q, start, end, **{q.repeat: [wf]})
                            _check_rows(q, rows, f"{where} {wf}")
                    else:
                        _check_rows(q, await board.run(q, start, end), where)
    finally:
        await conn.close()


def test_every_sql_panel_has_expected_columns() -> None:
    assert {q.panel for q in SQL_QUERIES} == set(EXPECTED_COLUMNS)


async def test_sql_panels_run_on_postgres(db_dsn: str) -> None:
    await _fill(db_dsn, "postgres")
    await _run_all(db_dsn, tsdb=False)


@pytest.mark.timescale
async def test_sql_panels_run_on_timescaledb(timescale_dsn: str) -> None:
    await _fill(timescale_dsn, "timescaledb")
    await _run_all(timescale_dsn, tsdb=True)


async def test_funnel_panels_equal_the_read_queries(db_dsn: str) -> None:
    """The cohort and activity funnel tables give the numbers of exporter.queries."""
    await _fill(db_dsn, "postgres")
    d = DASHBOARDS["funnel.json"]
    by_title = {q.panel: q for q in queries("funnel.json", d)}
    conn = await asyncpg.connect(db_dsn)
    try:
        board = Board(conn, d, tsdb=False)
        await board.resolve_variables()
        start, end = ALIGNED[0], HOUR
        for wf_id in board.values["workflow"]:
            wf = await get_workflow(conn, None, wf_id)
            assert wf is not None
            want = await cohort_funnel(conn, None, wf, start, end, min_volume=20)
            rows = await board.run(
                by_title["Cohort funnel: drop-off per step"], *ALIGNED, workflow=[wf_id]
            )
            assert [r["Reached"] for r in rows] == [s["reached"] for s in want["steps"]]
            assert [r["In progress"] for r in rows] == [s["in_progress"] for s in want["steps"]]
            assert [r["Dropped"] for r in rows] == [s["dropped"] for s in want["steps"]]
            assert [r["Drop-off ratio"] for r in rows] == pytest.approx(
                [s["dropoff_ratio"] for s in want["steps"]]
            )
            assert [r["Bottleneck"] == "bottleneck" for r in rows] == [
                s["bottleneck"] for s in want["steps"]
            ]
            assert sum(r["Reached"] for r in rows) > 0
            activity = await activity_funnel(conn, None, wf, start, end)
            rows = await board.run(
                by_title["Activity funnel: attempts per step"], *ALIGNED, workflow=[wf_id]
            )
            assert [r["Attempts entered"] for r in rows] == [
                s["reached"] for s in activity["steps"]
            ]
            assert [r["Step"] for r in rows] == [
                f"{k + 1}. {s.name}" for k, s in enumerate(wf.steps)
            ]
    finally:
        await conn.close()


async def test_overview_rates_equal_the_read_queries(db_dsn: str) -> None:
    """Cohort completion and conversion rates of the overview match exporter.queries."""
    await _fill(db_dsn, "postgres")
    d = DASHBOARDS["overview.json"]
    by_title = {q.panel: q for q in queries("overview.json", d)}
    conn = await asyncpg.connect(db_dsn)
    try:
        board = Board(conn, d, tsdb=False)
        await board.resolve_variables()
        rows = await board.run(by_title["Workflows by volume"], *ALIGNED)
        assert [r["Enrolled"] for r in rows] == sorted((r["Enrolled"] for r in rows), reverse=True)
        for r in rows:
            wf = await get_workflow(conn, None, r["workflow_id"])
            assert wf is not None
            want = await cohort_funnel(conn, None, wf, ALIGNED[0], HOUR)
            assert r["Enrolled"] == want["enrolled"]
            assert r["Completed"] == want["completed"]
            assert r["Converted"] == want["converted"]
            assert r["In progress"] == want["in_progress"]
            assert r["Conversion rate"] == pytest.approx(want["conversion_rate"])
        change = await board.run(
            by_title["Conversion change against the previous period"], *ALIGNED
        )
        assert {r["workflow_id"] for r in change} == {r["workflow_id"] for r in rows}
        assert any(r["Previous conversion rate"] is not None for r in change)
    finally:
        await conn.close()
