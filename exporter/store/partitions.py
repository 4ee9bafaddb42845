"""Time-range partition arithmetic for the plain PostgreSQL backend."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

ORIGIN = datetime(2000, 1, 3, tzinfo=UTC)


def partition_start(t: datetime, interval: timedelta) -> datetime:
    """Start of the partition holding `t` (aligned like time_bucket, origin 2000-01-03)."""
    steps = (t - ORIGIN) // interval
    return ORIGIN + steps * interval


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
