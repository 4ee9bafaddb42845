"""How Grafana turns a dashboard query into what the data source runs.

Template variables are replaced as the frontend does (SQL data sources quote multi-value
variables, Prometheus regex-escapes them); SQL macros are expanded as Grafana's PostgreSQL
data source does (`$__timeFilter`, `$__timeGroup[Alias]`, `$__timeFrom()`, ...). Used by the
tests to run every panel's query for real against a store and a Prometheus server.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

Json = dict[str, Any]
VarValue = str | list[str]

_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}"
)
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")
_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)$")
_UNITS = {
    "ms": 0.001,
    "s": 1,
    "m": 60,
    "h": 3600,
    "d": 86400,
    "w": 604800,
    "y": 31536000,
}
_PROM_SPECIAL = re.compile(r"[$^*{}\[\]'+?.()|]")


@dataclass(frozen=True, slots=True)
class Query:
    """One query of a dashboard: where it is, its data source kind and its text."""

    dashboard: str
    panel: str
    ref: str
    kind: str  # "prometheus" or "sql"
    text: str
    fmt: str  # "time_series" or "table"
    instant: bool
    repeat: str | None  # variable the enclosing row repeats over


def parse_interval(text: str) -> timedelta:
    """Grafana's gtime.ParseInterval: "30s", "5m", "1h", "1d", "1w", "1y", "500ms"."""
    m = _INTERVAL.match(text.strip().strip("'"))
    if not m:
        raise ValueError(f"bad interval {text!r}")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def format_interval(d: timedelta) -> str:
    """Grafana's gtime.FormatInterval: the largest whole unit, e.g. "1h", "5m", "1d"."""
    ms = int(d.total_seconds() * 1000)
    for unit, seconds in (("y", 31536000), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if ms >= seconds * 1000:
            return f"{ms // (seconds * 1000)}{unit}"
    return f"{ms}ms" if ms >= 1 else "1ms"


def _go_float(x: float) -> str:
    """Go's %v of a float64 for the values intervals take (whole seconds below 1e6)."""
    if x.is_integer() and abs(x) < 1e6:
        return str(int(x))
    return format(x, "g") if x >= 1e6 else repr(x)


def _rfc3339(t: datetime) -> str:
    """Go's time.RFC3339Nano of a UTC time."""
    t = t.astimezone(UTC)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        base += "." + f"{t.microsecond:06d}".rstrip("0")
    return base + "Z"


def _sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _prom_escape(value: str) -> str:
    value = value.replace("\\", "\\\\\\\\")
    return _PROM_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value)


def _replace_variables(
    text: str, values: Mapping[str, VarValue], multi: set[str], formatter: str
) -> str:
    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        fmt = m.group(3) or m.group(6)
        if name not in values:
            return m.group(0)
        value = values[name]
        if fmt == "text":
            return ", ".join(value) if isinstance(value, list) else value
        if formatter == "sql":
            if isinstance(value, list):
                return ",".join(_sql_literal(v) for v in value)
            return _sql_literal(value) if name in multi else value.replace("'", "''")
        if isinstance(value, list):
            escaped = [_prom_escape(v) for v in value]
            return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
        return _prom_escape(value) if name in multi else value

    return _VARIABLE.sub(sub, text)


def expand_sql(
    raw: str,
    *,
    start: datetime,
    end: datetime,
    interval: timedelta,
    values: Mapping[str, VarValue],
    multi: set[str],
    timescaledb: bool,
) -> str:
    """The SQL Grafana's PostgreSQL data source runs for `raw` over [start, end]."""
    sql = _replace_variables(raw, values, multi, "sql")
    sql = sql.replace("$__interval_ms", str(int(interval.total_seconds() * 1000)))
    sql = sql.replace("$__interval", format_interval(interval))
    sql = sql.replace("$__unixEpochFrom()", str(int(start.timestamp())))
    sql = sql.replace("$__unixEpochTo()", str(int(end.timestamp())))

    def macro(m: re.Match[str]) -> str:
        name = m.group(1)
        args = [a.strip() for a in m.group(2).split(",")]
        return _macro(name, args, start, end, timescaledb)

    return _MACRO.sub(macro, sql)


def _macro(name: str, args: list[str], start: datetime, end: datetime, tsdb: bool) -> str:
    if name == "__time":
        return f'{args[0]} AS "time"'
    if name == "__timeEpoch":
        return f'extract(epoch from {args[0]}) as "time"'
    if name == "__timeFilter":
        return f"{args[0]} BETWEEN '{_rfc3339(start)}' AND '{_rfc3339(end)}'"
    if name == "__timeFrom":
        return f"'{_rfc3339(start)}'"
    if name == "__timeTo":
        return f"'{_rfc3339(end)}'"
    if name in ("__timeGroup", "__timeGroupAlias"):
        if len(args) < 2:
            raise ValueError(f"macro {name} needs a column and an interval")
        seconds = parse_interval(args[1]).total_seconds()
        if tsdb:
            group = f"time_bucket('{seconds:.3f}s',{args[0]})"
        else:
            s = _go_float(seconds)
            group = f"floor(extract(epoch from {args[0]})/{s})*{s}"
        return group + (' AS "time"' if name == "__timeGroupAlias" else "")
    if name == "__unixEpochFilter":
        lo, hi = int(start.timestamp()), int(end.timestamp())
        return f"{args[0]} >= {lo} AND {args[0]} <= {hi}"
    raise ValueError(f"unknown macro {name!r}")


def rate_interval(interval: timedelta, scrape: timedelta) -> timedelta:
    """Grafana's $__rate_interval: max($__interval + scrape interval, 4 * scrape interval)."""
    return max(interval + scrape, 4 * scrape)


def expand_promql(
    expr: str,
    *,
    values: Mapping[str, VarValue],
    multi: set[str],
    interval: timedelta,
    range_: timedelta,
    scrape: timedelta,
) -> str:
    """The PromQL Grafana's Prometheus data source sends for `expr`."""
    builtins = {
        "__rate_interval": f"{int(rate_interval(interval, scrape).total_seconds())}s",
        "__interval": format_interval(interval),
        "__range": f"{math.floor(range_.total_seconds())}s",
    }
    text = _replace_variables(expr, {**builtins, **values}, multi, "prometheus")
    return text


def _targets(dashboard: Json) -> Iterator[tuple[Json, Json, str | None]]:
    repeat: str | None = None
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            repeat = panel.get("repeat")
            continue
        for target in panel.get("targets", []):
            yield panel, target, repeat


def queries(name: str, dashboard: Json) -> list[Query]:
    """Every panel query of a dashboard."""
    out = []
    for panel, target, repeat in _targets(dashboard):
        ds = target.get("datasource") or panel.get("datasource") or {}
        if ds.get("type") == "prometheus":
            out.append(
                Query(
                    name,
                    panel["title"],
                    target["refId"],
                    "prometheus",
                    target["expr"],
                    target.get("format", "time_series"),
                    bool(target.get("instant")),
                    repeat,
                )
            )
        else:
            out.append(
                Query(
                    name,
                    panel["title"],
                    target["refId"],
                    "sql",
                    target["rawSql"],
                    target.get("format", "time_series"),
                    False,
                    repeat,
                )
            )
    return out


def variable_queries(dashboard: Json) -> list[tuple[str, str, str]]:
    """(name, kind, query) of every query variable: kind "sql" or "prometheus"."""
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] != "query":
            continue
        q = var["query"]
        kind = "prometheus" if var["datasource"]["type"] == "prometheus" else "sql"
        out.append((var["name"], kind, q["query"] if isinstance(q, dict) else q))
    return out


def multi_variables(dashboard: Json) -> set[str]:
    """Names of the variables that take several values or "All"."""
    return {
        v["name"] for v in dashboard["templating"]["list"] if v.get("multi") or v.get("includeAll")
    }
