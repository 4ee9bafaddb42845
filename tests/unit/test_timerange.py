"""Series buckets: the UTC fast path lays out exactly the buckets of the calendar walk."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from exporter.timerange import series_buckets, zoned_buckets

_UNITS = {"hour": timedelta(hours=1), "day": timedelta(days=1), "week": timedelta(days=7)}


def _ranges(n: int) -> list[tuple[datetime, datetime]]:
    """Random ranges around now and across the year 2000 origin, plus aligned and empty ones."""
    rng = random.Random(7)
    now = datetime.now(UTC)
    out = []
    for base in (now, datetime(1999, 12, 20, tzinfo=UTC), datetime(2000, 1, 3, tzinfo=UTC)):
        for _ in range(n):
            start = base - timedelta(
                seconds=rng.randrange(0, 200 * 86_400), microseconds=rng.randrange(10**6)
            )
            out.append((start, start + timedelta(seconds=rng.randrange(0, 100 * 86_400))))
    day = datetime(2026, 3, 30, tzinfo=UTC)  # a Monday midnight: aligned to every unit
    out += [
        (day, day),
        (day, day + timedelta(microseconds=1)),
        (day - timedelta(microseconds=1), day),
    ]
    out += [(day, day + timedelta(days=91)), (day + timedelta(hours=5), day + timedelta(days=14))]
    return out


@pytest.mark.parametrize("granularity", sorted(_UNITS))
@pytest.mark.parametrize("tz", ["UTC", "Etc/UTC", "GMT"])
def test_utc_buckets_equal_the_calendar_walk(granularity: str, tz: str) -> None:
    for start, end in _ranges(60):
        fast = series_buckets(start, end, granularity, tz)
        assert fast == zoned_buckets(start, end, granularity, ZoneInfo(tz)), (start, end)
        if fast:
            assert fast[0] <= start < fast[0] + _UNITS[granularity] and fast[-1] < end


def test_utc_weeks_start_on_monday() -> None:
    start = datetime(2026, 12, 4, 8, 30, tzinfo=UTC)  # a Friday
    weeks = series_buckets(start, start + timedelta(days=20), "week", "UTC")
    assert [w.isoformat() for w in weeks] == [
        "2026-11-30T00:00:00+00:00",
        "2026-12-07T00:00:00+00:00",
        "2026-12-14T00:00:00+00:00",
        "2026-12-21T00:00:00+00:00",
    ]
