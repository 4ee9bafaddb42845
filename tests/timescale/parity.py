"""Read everything the shared read path offers from one store, to compare two backends."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import asyncpg

from exporter import queries
from exporter.store.rollups import ROLLUPS
from exporter.timerange import plan

ZONES = ("UTC", "Europe/Berlin", "Asia/Kolkata")


def ranges(now: datetime) -> list[tuple[datetime, datetime]]:
    """Whole, day-aligned, ragged and live-hour ranges around `now`."""
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return [
        (now - timedelta(days=40), now + timedelta(hours=2)),
        (day - timedelta(days=9), day - timedelta(days=2)),
        (now - timedelta(days=3, minutes=13), now - timedelta(hours=5, minutes=41)),
        (now - timedelta(minutes=50), now + timedelta(minutes=5)),
    ]


async def relations(conn: asyncpg.Connection) -> dict[str, list[tuple]]:
    """Every row of every `wfa.<rollup>_1h` / `_1d` relation, in a stable order."""
    out = {}
    for r in ROLLUPS:
        for level in ("1h", "1d"):
            rows = await conn.fetch(f"SELECT * FROM {r.relation(level)}")
            out[r.relation(level)] = sorted((tuple(x.values()) for x in rows), key=repr)
    return out


async def range_rows(conn: asyncpg.Connection, now: datetime) -> dict[str, list[tuple]]:
    """Rows of every range function over every range, bucket by bucket."""
    wfs = [r["workflow_id"] for r in await conn.fetch("SELECT workflow_id FROM wfa.workflows")]
    out = {}
    for r in ROLLUPS:
        for start, end in ranges(now):
            for g, tz in ((None, "UTC"), ("hour", "Asia/Kolkata"), ("day", "Europe/Berlin")):
                params = plan(start, end, granularity=g, tz=tz).params()
                rows = await conn.fetch(
                    f"SELECT * FROM wfa.{r.name}_range(NULL, $1, $2, $3, $4, $5, $6, $7)",
                    wfs,
                    *params,
                )
                key = f"{r.name} {start.isoformat()} {end.isoformat()} {g} {tz}"
                out[key] = sorted((tuple(x.values()) for x in rows), key=repr)
    return out


async def answers(conn: asyncpg.Connection, now: datetime) -> dict[str, Any]:
    """Every read query of `exporter.queries` for every workflow and range."""
    wfs = await queries.list_workflows(conn, None)
    out: dict[str, Any] = {"workflows": wfs}
    for start, end in ranges(now):
        at = f"{start.isoformat()}..{end.isoformat()}"
        out[f"cohort_funnels {at}"] = await queries.cohort_funnels(conn, None, wfs, start, end)
        out[f"activity_totals {at}"] = await queries.activity_totals(conn, None, wfs, start, end)
        for wf in wfs:
            key = f"{wf.workflow_id} {at}"
            t = wf.tenant_id
            out[f"activity_funnel {key}"] = await queries.activity_funnel(conn, t, wf, start, end)
            out[f"actions {key}"] = await queries.actions(conn, t, wf, start, end)
            for tz in ZONES:
                for g in ("hour", "day", "week", "month"):
                    out[f"summary {g} {tz} {key}"] = await queries.summary(
                        conn, t, wf, start, end, g, tz
                    )
    return out


async def everything(conn: asyncpg.Connection, now: datetime) -> dict[str, Any]:
    """Relations, range function rows and query answers of one store."""
    return {
        **await relations(conn),
        **await range_rows(conn, now),
        **await answers(conn, now),
    }


def assert_same(pg: dict[str, Any], ts: dict[str, Any]) -> None:
    """Equal key by key, naming the first differing read."""
    assert pg.keys() == ts.keys()
    for key in pg:
        if pg[key] != ts[key]:
            raise AssertionError(f"{key}: postgres and timescaledb differ\n{pg[key]}\n{ts[key]}")
