"""Split a half-open range into raw edges, hourly and daily parts, and lay out series buckets."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

GRANULARITIES = ("hour", "day", "week", "month")
_UTC_NAMES = frozenset({"UTC", "Etc/UTC", "Etc/GMT", "GMT", "Etc/Universal", "Universal", "Zulu"})
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)


@dataclass(frozen=True, slots=True)
class Segments:
    """[start, h1) and [h2, end) from raw rows, [h1, d1) and [d2, h2) hourly, [d1, d2) daily."""

    start: datetime
    h1: datetime
    d1: datetime
    d2: datetime
    h2: datetime
    end: datetime

    def params(self) -> tuple[datetime, ...]:
        """Positional parameters of the `wfa.*_range` functions after tenant and workflows."""
        return (self.start, self.h1, self.d1, self.d2, self.h2, self.end)


def _ceil(t: datetime, unit: timedelta) -> datetime:
    f = _floor(t, unit)
    return f if f == t else f + unit


def _floor(t: datetime, unit: timedelta) -> datetime:
    t = t.astimezone(UTC)
    epoch = datetime(2000, 1, 3, tzinfo=UTC)
    return epoch + ((t - epoch) // unit) * unit


def whole_hour_zone(tz: str, start: datetime, end: datetime) -> bool:
    """True when the zone's UTC offset is a whole number of hours at both ends of the range."""
    zone = ZoneInfo(tz)
    return all(
        (t.astimezone(zone).utcoffset() or timedelta()) % _HOUR == timedelta() for t in (start, end)
    )


def plan(
    start: datetime, end: datetime, *, granularity: str | None = None, tz: str = "UTC"
) -> Segments:
    """Segments for totals (granularity None) or for a series bucketed in `tz`."""
    use_hourly = granularity is None or whole_hour_zone(tz, start, end)
    use_daily = granularity is None or (granularity != "hour" and tz in _UTC_NAMES)
    if not use_hourly:
        return Segments(start, end, end, end, end, end)
    h1, h2 = _ceil(start, _HOUR), _floor(end, _HOUR)
    if h1 >= h2:
        return Segments(start, end, end, end, end, end)
    d1, d2 = _ceil(h1, _DAY), _floor(h2, _DAY)
    if not use_daily or d1 >= d2:
        d1 = d2 = h1
    return Segments(start, h1, d1, d2, h2, end)


def _local_hour(t: datetime, zone: ZoneInfo) -> datetime:
    return t.astimezone(zone).replace(minute=0, second=0, microsecond=0).astimezone(UTC)


_FIXED_UNITS = {"hour": _HOUR, "day": _DAY, "week": 7 * _DAY}


def series_buckets(start: datetime, end: datetime, granularity: str, tz: str) -> list[datetime]:
    """Every bucket start (UTC) overlapping [start, end) in `tz`, like date_trunc(unit, t, tz)."""
    unit = _FIXED_UNITS.get(granularity)
    if unit is not None and tz in _UTC_NAMES:
        # UTC buckets are equal steps from a Monday midnight (the origin is one).
        first = _floor(start, unit)
        return [first + k * unit for k in range(max(0, -((first - end) // unit)))]
    return zoned_buckets(start, end, granularity, ZoneInfo(tz))


def zoned_buckets(
    start: datetime, end: datetime, granularity: str, zone: ZoneInfo
) -> list[datetime]:
    """`series_buckets` walked through local calendar time, for any zone."""
    local = start.astimezone(zone)
    if granularity == "hour":
        out = []
        cur = _local_hour(start, zone)
        while cur < end:
            out.append(cur)
            cur = _local_hour(cur + _HOUR, zone)
        return out
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    if granularity == "week":
        day -= timedelta(days=day.weekday())
    elif granularity == "month":
        day = day.replace(day=1)
    out = []
    while True:
        b = day.replace(tzinfo=zone).astimezone(UTC)
        if b >= end:
            return out
        out.append(b)
        if granularity == "day":
            day += _DAY
        elif granularity == "week":
            day += 7 * _DAY
        else:
            day = (day.replace(day=28) + 4 * _DAY).replace(day=1)
