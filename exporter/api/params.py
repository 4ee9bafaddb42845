"""Query and body parsing: pydantic request models and the analytics time filter.

Times are RFC 3339 (an offset-less time is read in `tz`), epoch milliseconds (what
Grafana's `${__from}` gives), or Grafana relative expressions: `now`, followed by
any of `+N<unit>`, `-N<unit>` and `/<unit>` (round), units s m h d w M y. In `from`
a rounding goes down to the start of the unit; in `to` it goes to the start of the
next unit, so `from=now/d&to=now/d` is today as the half-open range [00:00, 24:00).
Calendar units (d w M y) move and round in `tz`; weeks start on Monday. `now` is
taken to the whole second.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any, Literal, TypeVar
from zoneinfo import ZoneInfo, available_timezones

from aiohttp import web
from multidict import MultiMapping
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from exporter.api.app import CONFIG
from exporter.api.errors import ProblemError
from exporter.config.durations import parse_duration
from exporter.timerange import GRANULARITIES

RANGE_PATTERN = r"^([0-9]{1,6}[wdhms])+$"
"""`range=`: the last N up to now, any duration with units (`90m`, `1h`, `12h`, `3d`, `6w`,
`1d12h`)."""
RANGE_EXAMPLES = ("1h", "24h", "7d", "30d", "90d")

MAX_ID_CHARS = 256
"""Longest workflow id accepted in a path."""

MAX_BUCKETS = 5_000
"""Most series buckets one request may ask for."""

MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)

TIME_PATTERN = (
    r"^(now([+-][0-9]{1,6}[smhdwMy]|/[smhdwMy])*"
    r"|[0-9]{1,14}"
    r"|[0-9]{4}-[0-9]{2}-[0-9]{2}"
    r"([Tt ][0-9]{2}:[0-9]{2}(:[0-9]{2}([.,][0-9]{1,6})?)?([Zz]|[+-][0-9]{2}:[0-9]{2})?)?)$"
)
"""What `from` and `to` accept (then checked for real dates and times)."""
_TIME_MSG = "must be an RFC 3339 time, epoch milliseconds or a relative time like now-7d"
_RELATIVE_RE = re.compile(r"now((?:[+-]\d{1,6}[smhdwMy]|/[smhdwMy])*)")
_OP_RE = re.compile(r"([+-])(\d{1,6})([smhdwMy])|/([smhdwMy])")
_EPOCH_MS_RE = re.compile(r"\d{1,14}")
_FIXED = {"s": timedelta(seconds=1), "m": timedelta(minutes=1), "h": timedelta(hours=1)}
_MAX_TEXT = 64

Granularity = Literal["hour", "day", "week", "month"]
Mode = Literal["cohort", "activity"]
assert set(Granularity.__args__) == set(GRANULARITIES)  # type: ignore[attr-defined]


class QueryModel(BaseModel):
    """Base of query-string models: unknown parameters are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class NoQuery(QueryModel):
    """An endpoint that takes no query parameters."""


class TimeQuery(QueryModel):
    """The time filter every analytics endpoint accepts."""

    from_: str | None = Field(None, alias="from", max_length=_MAX_TEXT, pattern=TIME_PATTERN)
    to: str | None = Field(None, max_length=_MAX_TEXT, pattern=TIME_PATTERN)
    range: str | None = Field(None, max_length=_MAX_TEXT, pattern=RANGE_PATTERN)
    granularity: Granularity | None = None
    tz: str = Field("UTC", max_length=_MAX_TEXT)


class FunnelQuery(TimeQuery):
    """Funnel: the time filter and the mode."""

    mode: Mode = "cohort"


class RefreshBody(BaseModel):
    """Optional JSON body of POST .../refresh."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    rollups: bool = True


@dataclass(frozen=True, slots=True)
class TimeRange:
    """A resolved half-open range with the series granularity and time zone."""

    start: datetime
    end: datetime
    granularity: str
    tz: str
    relative: bool = False

    def to_json(self) -> dict[str, str]:
        """The resolved range as it appears in responses."""
        return {
            "from": _iso(self.start),
            "to": _iso(self.end),
            "granularity": self.granularity,
            "tz": self.tz,
        }


def _iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


M = TypeVar("M", bound=BaseModel)


def _bad(param: str, detail: str) -> ProblemError:
    return ProblemError(400, "Invalid parameter", detail, param=param)


def _message(err: Mapping[str, Any]) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown parameter"
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str((err.get("ctx") or {}).get("expected", "")))
        return f"must be one of {', '.join(choices)}"
    if kind == "string_too_long":
        return f"must be at most {err['ctx']['max_length']} characters"
    if kind == "missing":
        return "is required"
    if kind == "string_pattern_mismatch":
        if err["loc"] and err["loc"][-1] == "range":
            return "must be a duration with units, like 90m, 12h, 3d or 6w"
        return _TIME_MSG
    return str(err["msg"]).removeprefix("Value error, ")


def _model_error(exc: ValidationError, prefix: str = "") -> ProblemError:
    err = exc.errors(include_url=False)[0]
    loc = ".".join(str(p) for p in err["loc"])
    return _bad(prefix + loc if loc else prefix.rstrip(".") or "body", _message(err))


def parse_query(query: MultiMapping[str], model: type[M]) -> M:
    """Validate a query string against `model`; 400 naming the parameter on any problem."""
    values: dict[str, str] = {}
    for key, value in query.items():
        if key in values:
            raise _bad(key, "given more than once")
        if "\x00" in value:
            raise _bad(key, "must not contain a NUL character")
        values[key] = value
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise _model_error(exc) from None


async def read_body(request: web.Request) -> bytes:
    """The request body, which must arrive within `api.header_timeout` (else 408)."""
    timeout = request.app[CONFIG].api.header_timeout.total_seconds()
    try:
        async with asyncio.timeout(timeout):
            return await request.read()
    except TimeoutError:
        raise ProblemError(
            408,
            "Request Timeout",
            f"the request body did not arrive within {timeout:g} s",
            param="body",
            headers={"Connection": "close"},
        ) from None


def json_object(raw: bytes) -> dict[str, Any]:
    """A JSON object body; 400 naming `body` (or the field holding a NUL) otherwise."""
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _bad("body", "is not valid JSON") from None
    if not isinstance(data, dict):
        raise _bad("body", "must be a JSON object")
    for key, value in data.items():
        if "\x00" in key or (isinstance(value, str) and "\x00" in value):
            raise _bad(f"body.{key}", "must not contain a NUL character")
    return data


async def parse_body(request: web.Request, model: type[M]) -> M:
    """An optional JSON object body validated against `model` (empty body: `{}`)."""
    raw = await read_body(request)
    data = json_object(raw) if raw.strip() else {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _model_error(exc, "body.") from None


@lru_cache(maxsize=1)
def time_zones() -> frozenset[str]:
    """The IANA zone names `tz` accepts."""
    return frozenset(available_timezones() | {"UTC"})


def parse_tz(name: str) -> ZoneInfo:
    """An IANA zone by name; 400 on `tz` otherwise."""
    if name not in time_zones():
        raise _bad("tz", f"unknown time zone {name!r}: use an IANA name such as Europe/Paris")
    return ZoneInfo(name)


def _floor_unit(t: datetime, unit: str, zone: ZoneInfo) -> datetime:
    if unit in _FIXED and unit != "h":
        step = _FIXED[unit]
        return MIN_TIME + ((t - MIN_TIME) // step) * step
    local = t.astimezone(zone)
    if unit == "h":
        return local.replace(minute=0, second=0, microsecond=0).astimezone(UTC)
    day = local.replace(hour=0, minute=0, second=0, microsecond=0, tzinfo=None)
    if unit == "w":
        day -= timedelta(days=day.weekday())
    elif unit == "M":
        day = day.replace(day=1)
    elif unit == "y":
        day = day.replace(month=1, day=1)
    return day.replace(tzinfo=zone).astimezone(UTC)


def _add(t: datetime, n: int, unit: str, zone: ZoneInfo) -> datetime:
    if unit in _FIXED:
        return t + n * _FIXED[unit]
    local = t.astimezone(zone).replace(tzinfo=None)
    if unit == "d":
        local += timedelta(days=n)
    elif unit == "w":
        local += timedelta(weeks=n)
    else:
        months = local.year * 12 + local.month - 1 + (n if unit == "M" else 12 * n)
        year, month = divmod(months, 12)
        first_next = datetime(year + (month + 1) // 12, (month + 1) % 12 + 1, 1)
        last_day = (first_next - timedelta(days=1)).day
        local = local.replace(year=year, month=month + 1, day=min(local.day, last_day))
    return local.replace(tzinfo=zone).astimezone(UTC)


def parse_time(text: str, param: str, now: datetime, zone: ZoneInfo, round_up: bool) -> datetime:
    """One `from`/`to` value: RFC 3339, epoch milliseconds or a Grafana relative expression."""
    try:
        m = _RELATIVE_RE.fullmatch(text)
        if m:
            t = now
            for sign, num, unit, rnd in _OP_RE.findall(m.group(1)):
                if rnd:
                    floored = _floor_unit(t, rnd, zone)
                    t = _add(floored, 1, rnd, zone) if round_up else floored
                else:
                    t = _add(t, int(num) * (-1 if sign == "-" else 1), unit, zone)
        elif _EPOCH_MS_RE.fullmatch(text):
            t = MIN_TIME + timedelta(milliseconds=int(text))
        else:
            t = datetime.fromisoformat(text)
            t = (t.replace(tzinfo=zone) if t.tzinfo is None else t).astimezone(UTC)
    except (ValueError, OverflowError):
        raise _bad(param, _TIME_MSG) from None
    if not MIN_TIME <= t < MAX_TIME:
        raise _bad(param, "is outside the supported years 1970 to 8999")
    return t


def auto_granularity(span: timedelta) -> str:
    """The series granularity when none is asked: hour up to 3 days, day up to 92, then week."""
    if span <= timedelta(days=3):
        return "hour"
    if span <= timedelta(days=92):
        return "day"
    return "week"


def range_length(text: str) -> timedelta:
    """The length of a `range=` value (already matched by RANGE_PATTERN); 400 when zero."""
    try:
        length = parse_duration(text)
    except ValueError as exc:
        raise _bad("range", str(exc)) from None
    if length <= timedelta(0):
        raise _bad("range", "must be longer than zero")
    return length


def resolve_time(
    q: TimeQuery,
    *,
    max_range: timedelta,
    default_range: timedelta,
    now: datetime | None = None,
) -> TimeRange:
    """Turn a validated time filter into a half-open UTC range; 400 on any inconsistency."""
    zone = parse_tz(q.tz)
    now = (now or datetime.now(UTC)).astimezone(UTC).replace(microsecond=0)
    if q.range is not None:
        if q.from_ is not None or q.to is not None:
            raise _bad("range", "cannot be combined with from or to")
        end = now
        start = end - range_length(q.range)
    else:
        given = parse_time(q.from_, "from", now, zone, False) if q.from_ is not None else None
        end = parse_time(q.to, "to", now, zone, True) if q.to is not None else now
        if given is not None:
            start = given
        else:
            start = end - default_range
            if start < MIN_TIME:
                raise _bad("to", "is too early for the default range")
    if start >= end:
        raise _bad("from", "must be before to")
    if end - start > max_range:
        days = max_range.total_seconds() / 86400
        raise _bad(
            "range" if q.range is not None else "from",
            f"the range is longer than the maximum of {days:g} days",
        )
    granularity = q.granularity or auto_granularity(end - start)
    approx = {"hour": 3600, "day": 86400, "week": 7 * 86400, "month": 28 * 86400}[granularity]
    if (end - start).total_seconds() / approx > MAX_BUCKETS:
        raise _bad("granularity", f"would give more than {MAX_BUCKETS} buckets")
    relative = (
        q.range is not None
        or q.to is None
        or any(t is not None and t.startswith("now") for t in (q.from_, q.to))
    )
    return TimeRange(start, end, granularity, q.tz, relative)
