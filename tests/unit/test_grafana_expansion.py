"""The Grafana emulation the dashboard tests rely on, against Grafana 11's documented rules."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.kit.grafana import (
    ALL,
    MacroError,
    Templating,
    expand_macros,
    expand_promql,
    expand_sql,
    format_interval,
    panel_interval,
    pick,
    prometheus_formatter,
    sql_formatter,
)


def _board() -> Templating:
    def var(name: str, **kw: object) -> dict[str, object]:
        return {"name": name, "type": "query", **kw}

    return Templating(
        {
            "templating": {
                "list": [
                    var(
                        "workflow",
                        multi=True,
                        includeAll=True,
                        options=[
                            {"text": "Welcome (a)", "value": "a"},
                            {"text": "O'Brien (b'c)", "value": "b'c"},
                            {"text": "Dots (wf.1)", "value": "wf.1"},
                        ],
                    ),
                    var("instance", multi=True, includeAll=True, allValue=".*"),
                    {"name": "min_volume", "type": "custom", "multi": False},
                    {"name": "window", "type": "custom", "multi": False},
                ]
            }
        }
    )


T = datetime.now(UTC).replace(microsecond=123400)
START, END = T - timedelta(days=7), T


def test_sql_multi_value_quoting_all_and_formats() -> None:
    b = _board()
    b["workflow"].select(["a", "b'c"])
    assert b.replace("IN ($workflow)", sql_formatter) == "IN ('a','b''c')"
    assert b.replace("IN ([[workflow]])", sql_formatter) == "IN ('a','b''c')"
    assert b.replace("${workflow:csv}", sql_formatter) == "a,b'c"
    assert b.replace("${workflow:sqlstring}", sql_formatter) == "'a','b''c'"
    assert b.replace("${workflow:pipe}", sql_formatter) == "a|b'c"
    assert b.replace("${workflow:singlequote}", sql_formatter) == "'a','b\\'c'"
    assert b.replace("${workflow:json}", sql_formatter) == '["a","b\'c"]'
    assert b.replace("${workflow:text}", sql_formatter) == "Welcome (a) + O'Brien (b'c)"
    assert b.replace("${workflow}", sql_formatter) == "'a','b''c'"
    assert b.replace("${workflow:glob}", sql_formatter) == "{a,b'c}"
    b["workflow"].select(["a"])
    assert b.replace("IN ($workflow)", sql_formatter) == "IN ('a')"
    assert b.replace("${workflow:glob}", sql_formatter) == "a"
    b["workflow"].select(ALL)
    assert b.replace("IN ($workflow)", sql_formatter) == "IN ('a','b''c','wf.1')"
    assert b.replace("${workflow:text}", sql_formatter) == "All"
    assert b.replace("${workflow:csv}", sql_formatter) == "a,b'c,wf.1"
    # a repeated row scopes one value, as a plain string: still quoted (multi variable)
    assert b.replace("IN ($workflow)", sql_formatter, {"workflow": "b'c"}) == "IN ('b''c')"
    # unknown variables and macros are left for the data source
    assert b.replace("$nope $__timeFilter(x)", sql_formatter) == "$nope $__timeFilter(x)"


def test_single_value_variables_are_pasted_with_doubled_quotes_unless_formatted() -> None:
    b = _board()
    b["min_volume"].select("1'; DROP TABLE x; --")
    assert b.replace("$min_volume", sql_formatter) == "1''; DROP TABLE x; --"
    assert (
        b.replace("${min_volume:sqlstring}::int", sql_formatter)
        == "'1''; DROP TABLE x; --'::int"
    )


def test_custom_all_value_is_raw_and_prometheus_escaping() -> None:
    b = _board()
    b["instance"].select(ALL)
    assert b.replace('instance=~"$instance"', prometheus_formatter) == 'instance=~".*"'
    assert b.replace("${instance:text}", prometheus_formatter) == "All"
    b["workflow"].select(["wf.1", "a|b\\c"])
    got = b.replace('workflow=~"$workflow"', prometheus_formatter)
    assert got == 'workflow=~"(wf\\\\.1|a\\\\|b\\\\\\\\c)"'
    b["workflow"].select(["wf.1"])
    assert b.replace('workflow=~"$workflow"', prometheus_formatter) == 'workflow=~"wf\\\\.1"'
    b["workflow"].select(ALL)
    assert b.replace("$workflow", prometheus_formatter) == "(a|b'c|wf\\\\.1)"
    b["window"].select("1d")
    assert b.replace('window="$window"', prometheus_formatter) == 'window="1d"'
    b["window"].select("it's")
    assert b.replace("$window", prometheus_formatter) == "it\\\\'s"


def test_promql_builtins() -> None:
    b = _board()
    expr = "rate(x[$__rate_interval]) + increase(x[$__range]) + y[$__interval]"
    got = expand_promql(
        expr,
        b,
        interval=timedelta(seconds=15),
        range_=timedelta(seconds=599.6),
        scrape=timedelta(seconds=15),
    )
    assert got == "rate(x[60s]) + increase(x[600s]) + y[15s]"
    got = expand_promql(
        "rate(x[$__rate_interval])",
        b,
        interval=timedelta(minutes=2),
        range_=timedelta(hours=6),
        scrape=timedelta(seconds=15),
    )
    assert got == "rate(x[135s])"


def test_time_macros_on_both_backends() -> None:
    iso = lambda t: t.strftime("%Y-%m-%dT%H:%M:%S.1234Z")  # noqa: E731
    hour = timedelta(hours=1)
    sql = "SELECT $__timeGroupAlias(bucket, $__interval) WHERE $__timeFilter(bucket)"
    pg = expand_macros(sql, START, END, hour, tsdb=False)
    assert pg == (
        'SELECT floor(extract(epoch from bucket)/3600)*3600 AS "time" '
        f"WHERE bucket BETWEEN '{iso(START)}' AND '{iso(END)}'"
    )
    ts = expand_macros(sql, START, END, timedelta(hours=2), tsdb=True)
    assert ts.startswith("SELECT time_bucket('7200.000s',bucket) AS \"time\" WHERE")
    # $__timeGroup followed by a comma is the old alias form
    assert expand_macros("$__timeGroup(t, '5m'), v", START, END, hour, tsdb=False) == (
        'floor(extract(epoch from t)/300)*300 AS "time", v'
    )
    assert expand_macros("GROUP BY $__timeGroup(t, 5m)", START, END, hour, tsdb=False) == (
        "GROUP BY floor(extract(epoch from t)/300)*300"
    )
    assert expand_macros("$__timeFrom() $__unixEpochTo()", START, END, hour, tsdb=False) == (
        f"'{iso(START)}' {int(END.timestamp())}"
    )
    assert expand_macros("$__interval_ms $__interval", START, END, hour, tsdb=False) == (
        "3600000 1h"
    )
    with pytest.raises(MacroError):
        expand_macros("$__timeBucket(t)", START, END, hour, tsdb=False)
    with pytest.raises(MacroError):
        expand_macros("$__timeGroup(t)", START, END, hour, tsdb=False)


def test_interval_is_grafanas() -> None:
    assert panel_interval(START, END, 1000, "1h") == timedelta(hours=1)
    assert panel_interval(END - timedelta(days=1), END, 10, "1h") == timedelta(hours=2)
    assert panel_interval(END - timedelta(days=2), END, 1000, None) == timedelta(minutes=2)
    assert panel_interval(END - timedelta(days=90), END, 1000, "1h") == timedelta(hours=2)
    assert format_interval(timedelta(minutes=90)) == "1h"
    assert format_interval(timedelta(days=7)) == "7d"
    b = _board()
    b["workflow"].select(["a"])
    sql = expand_sql(
        "SELECT $__timeGroupAlias(bucket, $__interval) FROM t WHERE w IN ($workflow)",
        b,
        start=START,
        end=END,
        interval=timedelta(hours=2),
        timescaledb=False,
    )
    assert sql == (
        'SELECT floor(extract(epoch from bucket)/7200)*7200 AS "time" FROM t WHERE w IN (\'a\')'
    )


def test_pick() -> None:
    opts = ["a", "b", "c", "d", "e"]
    assert pick(opts, "one") == ["a"]
    assert pick(opts, "several") == ["a", "b", "c"]
    assert pick(["a", "b"], "several") == ["a", "b"]
    assert pick(opts, "all") == ALL
