"""Time-filter parsing without a server: Grafana relative expressions, zones, limits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from multidict import MultiDict

from exporter.api.errors import ProblemError
from exporter.api.params import FunnelQuery, TimeQuery, parse_query, resolve_time

NOW = datetime(2024, 3, 31, 10, 17, 42, 123456, tzinfo=UTC)  # a Sunday; DST starts in the EU


def resolve(**q: str) -> tuple[datetime, datetime, str, bool]:
    """(from, to, granularity, relative) for query parameters at NOW."""
    tr = resolve_time(
        parse_query(MultiDict(q), TimeQuery),
        max_range=timedelta(days=400),
        default_range=timedelta(days=7),
        now=NOW,
    )
    return tr.start, tr.end, tr.granularity, tr.relative


def utc(*a: int) -> datetime:
    """An aware UTC datetime."""
    return datetime(*a, tzinfo=UTC)


@pytest.mark.parametrize(
    ("query", "start", "end"),
    [
        ({}, utc(2024, 3, 24, 10, 17, 42), utc(2024, 3, 31, 10, 17, 42)),
        ({"range": "24h"}, utc(2024, 3, 30, 10, 17, 42), utc(2024, 3, 31, 10, 17, 42)),
        ({"range": "1h"}, utc(2024, 3, 31, 9, 17, 42), utc(2024, 3, 31, 10, 17, 42)),
        ({"range": "90m"}, utc(2024, 3, 31, 8, 47, 42), utc(2024, 3, 31, 10, 17, 42)),
        ({"range": "12h"}, utc(2024, 3, 30, 22, 17, 42), utc(2024, 3, 31, 10, 17, 42)),
        ({"range": "3d"}, utc(2024, 3, 28, 10, 17, 42), utc(2024, 3, 31, 10, 17, 42)),
        ({"range": "6w"}, utc(2024, 2, 18, 10, 17, 42), utc(2024, 3, 31, 10, 17, 42)),
        ({"range": "1d12h"}, utc(2024, 3, 29, 22, 17, 42), utc(2024, 3, 31, 10, 17, 42)),
        ({"from": "now/d", "to": "now/d"}, utc(2024, 3, 31), utc(2024, 4, 1)),
        ({"from": "now-1d/d", "to": "now-1d/d"}, utc(2024, 3, 30), utc(2024, 3, 31)),
        ({"from": "now/w", "to": "now/w"}, utc(2024, 3, 25), utc(2024, 4, 1)),
        ({"from": "now-1M/M", "to": "now-1M/M"}, utc(2024, 2, 1), utc(2024, 3, 1)),
        (
            {"from": "now-1M", "to": "now"},
            utc(2024, 2, 29, 10, 17, 42),
            utc(2024, 3, 31, 10, 17, 42),
        ),
        ({"from": "now-2h/h", "to": "now+1h"}, utc(2024, 3, 31, 8), utc(2024, 3, 31, 11, 17, 42)),
        ({"from": "now-1y/y", "to": "now-1y/y"}, utc(2023, 1, 1), utc(2024, 1, 1)),
        (
            {"from": "now/d", "to": "now/d", "tz": "Europe/Berlin"},
            utc(2024, 3, 30, 23),
            utc(2024, 3, 31, 22),
        ),
        (
            {"from": "now-1d", "to": "now", "tz": "Europe/Berlin"},
            utc(2024, 3, 30, 11, 17, 42),
            utc(2024, 3, 31, 10, 17, 42),
        ),
        ({"from": "1711843200000", "to": "1711929600000"}, utc(2024, 3, 31), utc(2024, 4, 1)),
        (
            {"from": "2024-03-01", "to": "2024-03-02T06:30:00+05:30"},
            utc(2024, 3, 1),
            utc(2024, 3, 2, 1),
        ),
        ({"from": "2024-03-01T00:00:00", "tz": "America/New_York"}, utc(2024, 3, 1, 5), NOW),
    ],
)
def test_resolves_like_grafana(query: dict[str, str], start: datetime, end: datetime) -> None:
    """Relative, epoch and RFC 3339 values give the expected half-open UTC range."""
    got_start, got_end, _, _ = resolve(**query)
    assert (got_start, got_end) == (start, end.replace(microsecond=0))


def test_relative_flag_and_auto_granularity() -> None:
    """Ranges that move with now are relative; the granularity follows the span."""
    assert resolve(range="24h")[2:] == ("hour", True)
    assert resolve(**{"from": "now-30d"})[2:] == ("day", True)
    assert resolve(**{"from": "2023-01-01T00:00:00Z", "to": "2023-12-31T00:00:00Z"})[2:] == (
        "week",
        False,
    )


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"from": "now-"}, "from"),
        ({"from": "now-1q"}, "from"),
        ({"from": " now-1d"}, "from"),
        ({"to": "2024-02-30T00:00:00Z"}, "to"),
        ({"to": "20240101"}, "to"),
        ({"from": "now", "to": "now"}, "from"),
        ({"from": "now-401d"}, "from"),
        ({"range": "90d", "to": "now"}, "range"),
        ({"range": "401d"}, "range"),
        ({"range": "0h"}, "range"),
        ({"range": "12"}, "range"),
        ({"range": "1M"}, "range"),
        ({"range": "-3d"}, "range"),
        ({"range": "3 d"}, "range"),
        ({"range": "1h1h"}, "range"),
        ({"tz": "Europe/Nowhere"}, "tz"),
        ({"tz": "utc"}, "tz"),
        ({"granularity": "hour", "from": "now-300d"}, "granularity"),
        ({"from": "9999-01-01T00:00:00Z", "to": "9999-01-02T00:00:00Z"}, "from"),
        ({"from": "x" * 65}, "from"),
        ({"mode": "cohort"}, "mode"),
    ],
)
def test_rejects_with_the_parameter_named(query: dict[str, Any], param: str) -> None:
    """Every bad value is a 400 naming its parameter."""
    with pytest.raises(ProblemError) as err:
        resolve(**query)
    assert err.value.status == 400
    assert err.value.param == param


def test_a_bad_range_says_what_it_takes() -> None:
    with pytest.raises(ProblemError) as err:
        resolve(range="soon")
    assert err.value.detail == "must be a duration with units, like 90m, 12h, 3d or 6w"


def test_repeated_and_unknown_parameters() -> None:
    """A repeated or unknown parameter is named; mode is only known to the funnel."""
    with pytest.raises(ProblemError) as err:
        parse_query(MultiDict([("tz", "UTC"), ("tz", "UTC")]), TimeQuery)
    assert err.value.param == "tz"
    assert parse_query(MultiDict(mode="activity"), FunnelQuery).mode == "activity"
