"""The weekly level of every rollup: plain tables summed from the daily level, on both backends.

Only the totals reads use it: a range's whole weeks below the weekly watermark are read as
one row per dimension and week instead of seven daily rows. A week is materialized once
all its days are (below the daily watermark) and summed again whenever one of its days is
recomputed or loses rows to retention, in the transaction that changed the days where the
backend allows it, so the weekly rows always equal the sum of the daily rows they cover.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import asyncpg

from exporter.store.partitions import merge_windows, partition_ceil, partition_start
from exporter.store.rollups import ROLLUPS, WEEKLY, Rollup, daily_select

WEEK = timedelta(days=7)
LOW = datetime(1900, 1, 1, tzinfo=UTC)
"""The watermark of a weekly table nothing was summed into yet (a Monday, like ORIGIN)."""


def table(r: Rollup) -> str:
    """The weekly table of rollup `r`."""
    return WEEKLY.format(name=r.name)


def week_floor(t: datetime) -> datetime:
    """Start of the week holding `t` (Monday 00:00 UTC, aligned with the other buckets)."""
    return partition_start(t, WEEK)


def week_ceil(t: datetime) -> datetime:
    """The first week start at or after `t`."""
    return partition_ceil(t, WEEK)


def migration() -> list[str]:
    """The weekly tables, their covering read indexes and watermarks (both backends)."""
    out = [
        "CREATE TABLE IF NOT EXISTS wfa.weekly_marks "
        "(rollup text PRIMARY KEY, watermark timestamptz NOT NULL)"
    ]
    for r in ROLLUPS:
        out += [
            f"CREATE TABLE IF NOT EXISTS {table(r)} ({r.table_columns})",
            f"CREATE INDEX IF NOT EXISTS {r.name}_1w_mat_read_idx ON {table(r)} "
            f"(workflow_id, bucket) INCLUDE ({r.covered})",
            f"INSERT INTO wfa.weekly_marks VALUES ('{r.name}', '{LOW.isoformat()}') "
            "ON CONFLICT DO NOTHING",
        ]
    return out


def _sum_into(r: Rollup, daily: str, where: str) -> str:
    return f"INSERT INTO {table(r)} " + daily_select(r, daily, "date_bin", where, "7 days")


async def _mark(conn: asyncpg.Connection, r: Rollup) -> datetime:
    """The weekly watermark of `r`, its row locked until the transaction ends."""
    return await conn.fetchval(
        "SELECT watermark FROM wfa.weekly_marks WHERE rollup = $1 FOR UPDATE", r.name
    )


async def advance(
    conn: asyncpg.Connection,
    r: Rollup,
    daily: str,
    settled: datetime,
    changed: Iterable[tuple[datetime, datetime]],
) -> None:
    """Sum the weeks whose days all lie below `settled` (materialized in `daily`) and sum again
    the weeks already summed that overlap a `changed` window of days."""
    old = await _mark(conn, r)
    new = max(old, week_floor(settled))
    windows = [(week_floor(lo), min(week_ceil(hi), old)) for lo, hi in changed]
    windows.append((old, new))
    for lo, hi in merge_windows(windows):
        await conn.execute(f"DELETE FROM {table(r)} WHERE bucket >= $1 AND bucket < $2", lo, hi)
        await conn.execute(_sum_into(r, daily, "bucket >= $1 AND bucket < $2"), lo, hi)
    if new > old:
        await conn.execute(
            "UPDATE wfa.weekly_marks SET watermark = $2 WHERE rollup = $1", r.name, new
        )


async def resum_below(
    conn: asyncpg.Connection, r: Rollup, daily: str, before: datetime, scope: str, *args: object
) -> None:
    """After daily rows before `before` were removed (of the rows matching `scope`, whose
    parameters start at $2), sum every summed week reaching below `before` again."""
    hi = min(week_ceil(before), await _mark(conn, r))
    where = f"bucket < $1 AND {scope}"
    await conn.execute(f"DELETE FROM {table(r)} WHERE {where}", hi, *args)
    await conn.execute(_sum_into(r, daily, where), hi, *args)
