"""Time-range arithmetic of partitions, buckets and refresh windows."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)
MAX_WINDOWS = 8


def partition_start(t: datetime, interval: timedelta) -> datetime:
    """Start of the partition holding `t` (aligned like time_bucket, origin 2000-01-03)."""
    steps = (t - ORIGIN) // interval
    return ORIGIN + steps * interval


def partition_ceil(t: datetime, interval: timedelta) -> datetime:
    """The first partition start at or after `t`."""
    f = partition_start(t, interval)
    return f if f == t else f + interval


def partition_starts(lo: datetime, hi: datetime, interval: timedelta) -> list[datetime]:
    """Starts of every partition needed for rows in [lo, hi]."""
    start = partition_start(lo, interval)
    out = []
    while start <= hi:
        out.append(start)
        start += interval
    return out


def partition_name(table: str, start: datetime) -> str:
    """Name of the partition of `table` starting at `start`."""
    return f"{table}_p{start:%Y%m%d%H}"


def hour_floor(t: datetime) -> datetime:
    """The hour bucket holding `t` (UTC)."""
    if t.tzinfo is not UTC:
        t = t.astimezone(UTC)
    return t.replace(minute=0, second=0, microsecond=0)


def day_floor(t: datetime) -> datetime:
    """The UTC day bucket holding `t`."""
    t = t.astimezone(UTC)
    return t.replace(hour=0, minute=0, second=0, microsecond=0)


def merge_windows(
    windows: Iterable[tuple[datetime, datetime]], limit: int = MAX_WINDOWS
) -> list[tuple[datetime, datetime]]:
    """Union of [start, end) windows, then the closest neighbours joined until at most `limit`."""
    merged: list[list[datetime]] = []
    for lo, hi in sorted(w for w in windows if w[0] < w[1]):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    while len(merged) > max(limit, 1):
        i = min(range(len(merged) - 1), key=lambda k: merged[k + 1][0] - merged[k][1])
        merged[i][1] = merged[i + 1][1]
        del merged[i + 1]
    return [(lo, hi) for lo, hi in merged]
