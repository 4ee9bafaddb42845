"""The coarser levels of every rollup (weeks, four-week blocks): plain tables on both backends.

Only the totals reads use them: a range's whole blocks and weeks below their watermarks are
read as one row per dimension and period instead of one per day. A period is materialized
once the level below holds all of it (below that level's watermark; the daily level's for
weeks) and summed again whenever a period of the level below that it covers is recomputed
or loses rows to retention, in the transaction that changed the days where the backend
allows it, so every level always equals the sum of the daily rows it covers.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import asyncpg

from exporter.store.partitions import merge_windows, partition_ceil, partition_start
from exporter.store.rollups import COARSE, ROLLUPS, Coarse, Rollup, daily_select

LOW = datetime(1900, 1, 1, tzinfo=UTC)
"""The watermark of a level nothing was summed into yet (a Monday, like ORIGIN)."""


def migration(levels: Sequence[Coarse] = COARSE) -> list[str]:
    """The tables of `levels`, their covering read indexes and watermarks (both backends)."""
    out = [
        "CREATE TABLE IF NOT EXISTS wfa.weekly_marks "
        "(rollup text PRIMARY KEY, watermark timestamptz NOT NULL)"
    ]
    for c in levels:
        for r in ROLLUPS:
            out += [
                f"CREATE TABLE IF NOT EXISTS {c.table(r)} ({r.table_columns})",
                f"CREATE INDEX IF NOT EXISTS {r.name}_{c.suffix}_mat_read_idx ON {c.table(r)} "
                f"(workflow_id, bucket) INCLUDE ({r.covered})",
                f"INSERT INTO wfa.weekly_marks VALUES ('{c.key(r)}', '{LOW.isoformat()}') "
                "ON CONFLICT DO NOTHING",
            ]
    return out


def _sum_into(r: Rollup, c: Coarse, below: str, where: str) -> str:
    return f"INSERT INTO {c.table(r)} " + daily_select(r, below, "date_bin", where, c.width)


async def _mark(conn: asyncpg.Connection, r: Rollup, c: Coarse) -> datetime:
    """The watermark of `r` at level `c`, its row locked until the transaction ends."""
    return await conn.fetchval(
        "SELECT watermark FROM wfa.weekly_marks WHERE rollup = $1 FOR UPDATE", c.key(r)
    )


async def advance(
    conn: asyncpg.Connection,
    r: Rollup,
    daily: str,
    settled: datetime,
    changed: Iterable[tuple[datetime, datetime]],
) -> None:
    """Sum the periods of every level whose days all lie below `settled` (materialized in
    `daily`), and sum again the periods already summed that overlap a `changed` window of
    days (a level's re-summed periods are the changed windows of the level above)."""
    below = daily
    for c in COARSE:
        old = await _mark(conn, r, c)
        new = max(old, partition_start(settled, c.period))
        windows = [
            (partition_start(lo, c.period), min(partition_ceil(hi, c.period), old))
            for lo, hi in changed
        ]
        windows.append((old, new))
        changed = merge_windows(windows)
        within = "bucket >= $1 AND bucket < $2"
        for lo, hi in changed:
            await conn.execute(f"DELETE FROM {c.table(r)} WHERE {within}", lo, hi)
            await conn.execute(_sum_into(r, c, below, within), lo, hi)
        if new > old:
            await conn.execute(
                "UPDATE wfa.weekly_marks SET watermark = $2 WHERE rollup = $1", c.key(r), new
            )
        below, settled = c.table(r), new


async def resum_below(
    conn: asyncpg.Connection, r: Rollup, daily: str, before: datetime, scope: str, *args: object
) -> None:
    """After daily rows before `before` were removed (of the rows matching `scope`, whose
    parameters start at $2), sum every summed period reaching below `before` again."""
    below = daily
    for c in COARSE:
        hi = min(partition_ceil(before, c.period), await _mark(conn, r, c))
        where = f"bucket < $1 AND {scope}"
        await conn.execute(f"DELETE FROM {c.table(r)} WHERE {where}", hi, *args)
        await conn.execute(_sum_into(r, c, below, where), hi, *args)
        below = c.table(r)
