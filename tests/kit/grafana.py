"""How Grafana 11 turns a dashboard query into what the data source runs.

Template variables are replaced as the frontend's template service does (`$var`, `[[var]]`,
`${var}`, `${var:format}`, "All" with and without a custom all value, repeated rows' scoped
values); each data source formats values its own way unless a format is given (PostgreSQL
quotes multi-value variables as literals, Prometheus regex-escapes them); then Grafana's
PostgreSQL data source expands its macros (`$__timeFilter`, `$__timeGroup[Alias]`,
`$__timeFrom()`, ...). Used by the tests to run every panel and variable query for real against
a store and a Prometheus server.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

Json = dict[str, Any]
Value = str | list[str]
ALL = "$__all"
"""The current value of a variable set to "All"."""
ALL_TEXT = "All"

# Grafana's variableRegex: $var | [[var:fmt]] | ${var.fieldPath:fmt}
_VARIABLE = re.compile(
    r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^}]+))?(?::([^}]+))?\}"
)
# the PostgreSQL macro engine's sExpr: $name(args)
_MACRO = re.compile(r"\$([_a-zA-Z0-9]+)\(([^)]*)\)")
_INTERVAL = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
# @grafana/data rangeutil.roundInterval: (upper bound ms, rounded ms)
_ROUND = (
    (10, 1),
    (15, 10),
    (35, 20),
    (75, 50),
    (150, 100),
    (350, 200),
    (750, 500),
    (1500, 1000),
    (3500, 2000),
    (7500, 5000),
    (12500, 10000),
    (17500, 15000),
    (25000, 20000),
    (45000, 30000),
    (90000, 60000),
    (210000, 120000),
    (450000, 300000),
    (750000, 600000),
    (1050000, 900000),
    (1500000, 1200000),
    (2700000, 1800000),
    (5400000, 3600000),
    (9000000, 7200000),
    (16200000, 10800000),
    (32400000, 21600000),
    (86400000, 43200000),
    (604800000, 86400000),
    (1814400000, 604800000),
    (3628800000, 2592000000),
)
_YEAR_MS = 31536000000
_PROM_REGEX_SPECIAL = re.compile(r"[$^*{}\[\]+?.()|]")
_REGEX_SPECIAL = re.compile(r"[\\^$*+?.()|{}\[\]/]")


class MacroError(ValueError):
    """A macro Grafana's PostgreSQL data source would refuse (the panel shows an error)."""


# intervals ---------------------------------------------------------------------------------


def parse_interval(text: str) -> timedelta:
    """Grafana's gtime.ParseInterval: "30s", "5m", "1h", "1d", "1w", "1y", "500ms"."""
    m = _INTERVAL.match(text.strip().strip("'"))
    if not m:
        raise MacroError(f"error parsing interval {text}")
    return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])


def format_interval(d: timedelta) -> str:
    """Grafana's gtime.FormatInterval: the largest whole unit, e.g. "1h", "5m", "1d"."""
    ms = int(d.total_seconds() * 1000)
    for unit, seconds in (("y", 31536000), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if ms >= seconds * 1000:
            return f"{ms // (seconds * 1000)}{unit}"
    return f"{ms}ms" if ms >= 1 else "1ms"


def round_interval(ms: float) -> int:
    """@grafana/data rangeutil.roundInterval (milliseconds)."""
    for upper, rounded in _ROUND:
        if ms < upper:
            return rounded
    return _YEAR_MS


def panel_interval(
    start: datetime, end: datetime, max_data_points: int, min_interval: str | None
) -> timedelta:
    """rangeutil.calculateInterval: range / max data points, rounded, at least `min_interval`."""
    low = parse_interval(min_interval).total_seconds() * 1000 if min_interval else 1
    ms = round_interval((end - start).total_seconds() * 1000 / max_data_points)
    return timedelta(milliseconds=max(ms, low))


def rate_interval(interval: timedelta, scrape: timedelta) -> timedelta:
    """Grafana's $__rate_interval: max($__interval + scrape interval, 4 * scrape interval)."""
    return max(interval + scrape, 4 * scrape)


# variables ---------------------------------------------------------------------------------


@dataclass(slots=True)
class Variable:
    """One template variable: its settings, options and current value."""

    name: str
    type: str
    multi: bool = False
    include_all: bool = False
    all_value: str | None = None
    options: list[tuple[str, str]] = field(default_factory=list)  # (text, value)
    value: Value = ""
    text: Value = ""

    @classmethod
    def of(cls, v: Json) -> Variable:
        """A variable from dashboard JSON, with its saved options and current value."""
        options = [(o["text"], o["value"]) for o in v.get("options", []) if o["value"] != ALL]
        current = v.get("current") or {}
        return cls(
            v["name"],
            v["type"],
            bool(v.get("multi")),
            bool(v.get("includeAll")),
            v.get("allValue") or None,
            options,
            current.get("value", ""),
            current.get("text", ""),
        )

    @property
    def is_all(self) -> bool:
        """Whether the current value is "All"."""
        return self.value == ALL or (isinstance(self.value, list) and self.value[:1] == [ALL])

    def select(self, value: Value) -> None:
        """Set the current value (a value, a list for multi, or ALL); text follows the options."""
        if value == ALL or value == [ALL]:
            self.value, self.text = ([ALL], [ALL_TEXT]) if self.multi else (ALL, ALL_TEXT)
            return
        texts = dict((v, t) for t, v in self.options)
        if isinstance(value, list):
            self.value, self.text = list(value), [texts.get(v, v) for v in value]
        else:
            self.value, self.text = value, texts.get(value, value)

    def all_values(self) -> Value:
        """templateSrv.getAllValue: the custom all value, else every option's value."""
        if self.all_value:
            return self.all_value
        return [v for _, v in self.options]


Formatter = Callable[[Value, Variable | None], str]


def sql_formatter(value: Value, variable: Variable | None) -> str:
    """SqlDatasource.interpolateVariable: quote multi / All values; else double quotes."""
    multi = variable is not None and (variable.multi or variable.include_all)
    if isinstance(value, list):
        return ",".join(_quote_literal(v) for v in value)
    if multi:
        return _quote_literal(value)
    return str(value).replace("'", "''")


def _quote_literal(value: str) -> str:
    return "'" + str(value).replace("'", "''") + "'"


def prometheus_formatter(value: Value, variable: Variable | None) -> str:
    """Prometheus interpolateQueryExpr (Grafana 11, classic escaping)."""
    if variable is None or not (variable.multi or variable.include_all):
        if isinstance(value, list):
            value = ",".join(value)
        return str(value).replace("\\", "\\\\").replace("'", "\\\\'")
    if isinstance(value, str):
        return _prom_regex_escape(value)
    escaped = [_prom_regex_escape(v) for v in value]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def _prom_regex_escape(value: str) -> str:
    value = value.replace("\\", "\\\\\\\\")
    return _PROM_REGEX_SPECIAL.sub(lambda m: "\\\\" + m.group(0), value)


def _regex_escape(value: str) -> str:
    return _REGEX_SPECIAL.sub(lambda m: "\\" + m.group(0), value)


def _format(value: Value, fmt: str, variable: Variable | None, text: Value) -> str:
    """formatRegistry: the named formats of ${var:format}."""
    name = fmt.partition(":")[0]
    many = isinstance(value, list)
    if name == "csv":
        return ",".join(value) if many else value
    if name == "pipe":
        return "|".join(value) if many else value
    if name == "raw":
        return ",".join(value) if many else value
    if name == "sqlstring":
        return ",".join(_quote_literal(v) for v in value) if many else _quote_literal(value)
    if name == "singlequote":
        q = [v.replace("'", "\\'") for v in (value if many else [value])]
        return ",".join(f"'{v}'" for v in q)
    if name == "doublequote":
        q = [v.replace('"', '\\"') for v in (value if many else [value])]
        return ",".join(f'"{v}"' for v in q)
    if name == "regex":
        if not many:
            return _regex_escape(value)
        escaped = [_regex_escape(v) for v in value]
        return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"
    if name == "json":
        return json.dumps(value, separators=(",", ":"))
    if name == "percentencode":
        joined = "{" + ",".join(value) + "}" if many else value
        return quote(joined, safe="-_.~")
    if name == "text":
        if isinstance(text, str):
            return ALL_TEXT if value == ALL else text
        return " + ".join(text)
    if name == "queryparam":
        assert variable is not None
        values = value if many else [value]
        return "&".join(f"var-{variable.name}={quote(v, safe='-_.~')}" for v in values)
    # glob, also Grafana's fallback for an unknown format
    if many and len(value) > 1:
        return "{" + ",".join(value) + "}"
    return value[0] if many else value


class Templating:
    """The variables of a dashboard and how a data source's query text is interpolated."""

    def __init__(self, dashboard: Json):
        self.variables = {v["name"]: Variable.of(v) for v in dashboard["templating"]["list"]}

    def __getitem__(self, name: str) -> Variable:
        return self.variables[name]

    def replace(
        self,
        text: str,
        formatter: Formatter,
        scoped: Mapping[str, Value] | None = None,
    ) -> str:
        """templateSrv.replace(text, scopedVars, formatter)."""
        scoped = scoped or {}

        def sub(m: re.Match[str]) -> str:
            name = m.group(1) or m.group(2) or m.group(4)
            fmt = m.group(3) or m.group(6)
            variable = self.variables.get(name)
            if name in scoped:
                value = scoped[name]
                return self._formatted(value, fmt, variable, value, formatter)
            if variable is None:
                return m.group(0)
            value, shown = variable.value, variable.text
            if variable.is_all:
                value, shown = variable.all_values(), ALL_TEXT
                if variable.all_value and fmt not in ("text", "percentencode"):
                    return self.replace(str(value), formatter)
            return self._formatted(value, fmt, variable, shown, formatter)

        return _VARIABLE.sub(sub, text)

    @staticmethod
    def _formatted(
        value: Value, fmt: str | None, variable: Variable | None, text: Value, formatter: Formatter
    ) -> str:
        if fmt:
            return _format(value, fmt, variable, text)
        return formatter(value, variable)


# SQL ---------------------------------------------------------------------------------------


def _rfc3339(t: datetime) -> str:
    """Go's time.RFC3339Nano of a UTC time."""
    t = t.astimezone(UTC)
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    if t.microsecond:
        base += "." + f"{t.microsecond:06d}".rstrip("0")
    return base + "Z"


def _go_float(x: float) -> str:
    """Go's %v of a float64 for the values intervals take."""
    if x.is_integer() and abs(x) < 1e21:
        return str(int(x))
    return repr(x)


def expand_macros(sql: str, start: datetime, end: datetime, interval: timedelta, tsdb: bool) -> str:
    """sqleng.Interpolate, then the PostgreSQL macro engine (MacroError when Grafana refuses)."""
    sql = sql.replace("$__interval_ms", str(int(interval.total_seconds() * 1000)))
    sql = sql.replace("$__interval", format_interval(interval))
    sql = sql.replace("$__unixEpochFrom()", str(int(start.timestamp())))
    sql = sql.replace("$__unixEpochTo()", str(int(end.timestamp())))
    original = sql

    def macro(m: re.Match[str]) -> str:
        name = m.group(1)
        if name == "__timeGroup":
            at = original.find(m.group(0))
            if at >= 0 and original[at + len(m.group(0)) : at + len(m.group(0)) + 1] == ",":
                name = "__timeGroupAlias"
        args = [a.strip() for a in m.group(2).split(",")]
        return _macro(name, args, start, end, tsdb)

    return _MACRO.sub(macro, sql)


def _macro(name: str, args: list[str], start: datetime, end: datetime, tsdb: bool) -> str:
    if name in ("__time", "__timeEpoch", "__timeFilter", "__unixEpochFilter") and not args[0]:
        raise MacroError(f"missing time column argument for macro {name}")
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
            raise MacroError(f"macro {name} needs time column and interval and optional fill value")
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
    raise MacroError(f"unknown macro {name!r}")


def expand_sql(
    raw: str,
    templating: Templating,
    *,
    start: datetime,
    end: datetime,
    interval: timedelta,
    timescaledb: bool,
    scoped: Mapping[str, Value] | None = None,
) -> str:
    """The SQL Grafana's PostgreSQL data source runs for `raw` over [start, end]."""
    builtins = {"__interval": format_interval(interval)}
    builtins["__interval_ms"] = str(int(interval.total_seconds() * 1000))
    sql = templating.replace(raw, sql_formatter, {**builtins, **(scoped or {})})
    return expand_macros(sql, start, end, interval, timescaledb)


# PromQL ------------------------------------------------------------------------------------


def expand_promql(
    expr: str,
    templating: Templating,
    *,
    interval: timedelta,
    range_: timedelta,
    scrape: timedelta,
    scoped: Mapping[str, Value] | None = None,
) -> str:
    """The PromQL Grafana's Prometheus data source sends for `expr`."""
    seconds = round(range_.total_seconds())
    builtins: dict[str, Value] = {
        "__rate_interval": f"{int(rate_interval(interval, scrape).total_seconds())}s",
        "__interval": format_interval(interval),
        "__interval_ms": str(int(interval.total_seconds() * 1000)),
        "__range": f"{seconds}s",
        "__range_s": str(seconds),
        "__range_ms": str(int(range_.total_seconds() * 1000)),
    }
    return templating.replace(expr, prometheus_formatter, {**builtins, **(scoped or {})})


# the dashboard's queries -------------------------------------------------------------------


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
    interval: str | None = None  # the panel's minimum interval


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
        prom = ds.get("type") == "prometheus"
        out.append(
            Query(
                name,
                panel["title"],
                target["refId"],
                "prometheus" if prom else "sql",
                target["expr"] if prom else target["rawSql"],
                target.get("format", "time_series"),
                bool(target.get("instant")) if prom else False,
                repeat,
                panel.get("interval"),
            )
        )
    return out


def variable_queries(dashboard: Json) -> list[tuple[str, str, str]]:
    """(name, kind, query) of every query variable, in order: kind "sql" or "prometheus"."""
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


def pick(options: Sequence[str], how: str) -> Value:
    """A selection of a multi-value variable: "one", "several" (two or more) or "all"."""
    if how == "all":
        return ALL
    if not options:
        raise ValueError("no options to pick from")
    if how == "one":
        return list(options[:1])
    return list(options[: max(2, math.ceil(len(options) / 2))])
