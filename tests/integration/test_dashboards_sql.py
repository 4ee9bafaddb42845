"""Every SQL panel and variable of the generated dashboards, expanded as Grafana expands it and
run against a real store, with the tenant variable at one and All and the workflow variable at
one, several and All: no negative count, at most one bottleneck per workflow, and every number
equal to exporter.queries (the API) for the hours the panel covers."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from exporter.config import config_from_dict
from exporter.queries import (
    Workflow,
    actions,
    activity_funnel,
    activity_totals,
    cohort_funnel,
    cohort_funnels,
    get_workflow,
)
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.writer import create_source_schema, write
from tests.integration.dashboard_board import (
    CHOICES,
    HOUR,
    Board,
    Choice,
    dashboards,
    hours_in,
    now_minute,
)
from tests.kit.grafana import ALL, Query, queries, variable_queries

NOW = now_minute()
HOUR0 = NOW.replace(minute=0)
ALIGNED = (HOUR0 - timedelta(days=7), HOUR0 - timedelta(seconds=1))
"""Whole hours [HOUR0 - 7d, HOUR0): Grafana's BETWEEN on hour buckets, ending 1 s before."""
LAST_DAY = (NOW - timedelta(hours=24), NOW)
"""What "Last 24 hours" gives: ragged edges, the live hour included."""
RANGES = (ALIGNED, LAST_DAY)
DASHBOARDS = dashboards()
SQL_QUERIES = [q for name, d in DASHBOARDS.items() for q in queries(name, d) if q.kind == "sql"]
MIN_VOLUME = 20
SIGNED = {"Conversion change"}
"""Numeric columns that may be negative (a difference)."""
TIME_SERIES = ["time", "metric", "value"]
EVENT_FIELDS = {
    "enrolled": "enrollments",
    "completed": "completions",
    "converted": "conversions",
    "exited": "exits",
    "failed": "failures",
}


async def _fill(dsn: str, backend: str) -> None:
    """Simulated source data (5 workflows, 2 tenants), ingested and rolled up by the exporter."""
    data = generate(executions=3000, days=10, workflows=5, tenants=2, seed=17, now=NOW)
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        await write(conn, data)
    finally:
        await conn.close()
    cfg = config_from_dict({"source": {"dsn": dsn}, "store": {"backend": backend}})
    svc = ExporterService(cfg)
    await svc.open()
    try:
        result = await svc.poll_once()
        assert result is not None and result.written == len(data.executions)
    finally:
        await svc.close()


@dataclass
class Ctx:
    """What a checker needs: the store, the workflows the panel shows and the hours it covers."""

    conn: asyncpg.Connection
    board: Board
    q: Query
    start: datetime
    end: datetime
    workflows: list[Workflow]
    where: str
    max_data_points: int = 1000

    @property
    def hours(self) -> tuple[datetime, datetime]:
        """[from, to) of the hour buckets the panel reads."""
        return hours_in(self.start, self.end)

    def label(self, wf: Workflow, step_index: int) -> str:
        """The step label the panel shows (prefixed by its workflow when several are shown)."""
        step = wf.steps[step_index]
        prefix = f"{wf.name} ({wf.workflow_id}) / " if len(self.workflows) > 1 else ""
        return f"{prefix}{step_index + 1}. {step.name}"

    def by_name(self) -> dict[str, Workflow]:
        """Selected workflows by name (names are unique in the simulated data)."""
        out = {w.name: w for w in self.workflows}
        assert len(out) == len(self.workflows)
        return out


Checker = Callable[[Ctx, list[asyncpg.Record]], Awaitable[None]]
CHECKERS: dict[str, Checker] = {}


def checks(title: str) -> Callable[[Checker], Checker]:
    """Register the truth of one panel."""

    def register(fn: Checker) -> Checker:
        CHECKERS[title] = fn
        return fn

    return register


def _approx(x: float | None) -> Any:
    return None if x is None else pytest.approx(x)


@checks("Completion rate (cohort)")
async def _completion_rate(ctx: Ctx, rows: list) -> None:
    funnels = await cohort_funnels(ctx.conn, None, ctx.workflows, *ctx.hours)
    enrolled = sum(f["enrolled"] for f in funnels.values())
    completed = sum(f["completed"] for f in funnels.values())
    assert [r["Completion rate"] for r in rows] == [
        _approx(completed / enrolled if enrolled else None)
    ], ctx.where


@checks("Conversion rate (cohort)")
async def _conversion_rate(ctx: Ctx, rows: list) -> None:
    funnels = await cohort_funnels(ctx.conn, None, ctx.workflows, *ctx.hours)
    enrolled = sum(f["enrolled"] for f in funnels.values())
    converted = sum(f["converted"] for f in funnels.values())
    assert [r["Conversion rate"] for r in rows] == [
        _approx(converted / enrolled if enrolled else None)
    ], ctx.where


def _bucket_start(t: Any) -> datetime:
    """A time series row's bucket: timestamptz (TimescaleDB macro) or epoch seconds."""
    if isinstance(t, datetime):
        return t
    return datetime.fromtimestamp(float(t), UTC)


@checks("Workflow events per hour (store)")
async def _events(ctx: Ctx, rows: list) -> None:
    totals = await activity_totals(ctx.conn, None, ctx.workflows, *ctx.hours)
    got: dict[str, float] = defaultdict(float)
    for r in rows:
        got[r["metric"]] += r["value"]
    for event, field in EVENT_FIELDS.items():
        want = sum(t[field] for t in totals.values())
        assert got.get(event, 0) == want, (ctx.where, event)
    # one bucket exactly
    interval = ctx.board.interval(ctx.start, ctx.end, ctx.q.interval, ctx.max_data_points)
    first = max(rows, key=lambda r: r["value"])
    b = _bucket_start(first["time"])
    lo, hi = max(b, ctx.hours[0]), min(b + interval, ctx.hours[1])
    one = await activity_totals(ctx.conn, None, ctx.workflows, lo, hi)
    assert first["value"] == sum(t[EVENT_FIELDS[first["metric"]]] for t in one.values())


async def _per_workflow_rows(ctx: Ctx, rows: list, prev: bool) -> None:
    hours = ctx.hours
    length = ctx.end - ctx.start
    prev_hours = hours_in(ctx.start - length, ctx.start - timedelta(microseconds=1))
    prev_hours = (prev_hours[0], hours[0])
    funnels = await cohort_funnels(ctx.conn, None, ctx.workflows, *hours)
    before = await cohort_funnels(ctx.conn, None, ctx.workflows, *prev_hours)
    shown = {f_id for f_id, f in funnels.items() if f["enrolled"]}
    assert {r["workflow_id"] for r in rows} == shown, ctx.where
    for r in rows:
        want = funnels[r["workflow_id"]]
        assert r["Enrolled"] == want["enrolled"], ctx.where
        assert r["Conversion rate"] == _approx(want["conversion_rate"]), ctx.where
        if prev:
            old = before[r["workflow_id"]]
            assert (r["Enrolled before"] or 0) == old["enrolled"], ctx.where
            assert r["Previous conversion rate"] == _approx(old["conversion_rate"]), ctx.where
        else:
            assert r["Completed"] == want["completed"], ctx.where
            assert r["Converted"] == want["converted"], ctx.where
            assert r["In progress"] == want["in_progress"], ctx.where
            assert r["Completion rate"] == _approx(want["completion_rate"]), ctx.where


@checks("Workflows by volume")
async def _by_volume(ctx: Ctx, rows: list) -> None:
    await _per_workflow_rows(ctx, rows, prev=False)
    enrolled = [r["Enrolled"] for r in rows]
    assert enrolled == sorted(enrolled, reverse=True)


@checks("Conversion change against the previous period")
async def _by_change(ctx: Ctx, rows: list) -> None:
    await _per_workflow_rows(ctx, rows, prev=True)


async def _cohort(ctx: Ctx) -> dict[str, dict]:
    return await cohort_funnels(ctx.conn, None, ctx.workflows, *ctx.hours, min_volume=MIN_VOLUME)


@checks("Cohort funnel: reached per step")
async def _cohort_reached(ctx: Ctx, rows: list) -> None:
    funnels = await _cohort(ctx)
    want = [
        (ctx.label(wf, k), s["reached"])
        for wf in sorted(ctx.workflows, key=lambda w: (w.name, w.workflow_id))
        for k, s in enumerate(funnels[wf.workflow_id]["steps"])
    ]
    assert [(r["Step"], r["Reached"]) for r in rows] == want, ctx.where


@checks("Activity funnel: attempts entered per step")
async def _activity_attempts(ctx: Ctx, rows: list) -> None:
    want = []
    for wf in sorted(ctx.workflows, key=lambda w: (w.name, w.workflow_id)):
        activity = await activity_funnel(ctx.conn, None, wf, *ctx.hours)
        want += [(ctx.label(wf, k), s["reached"]) for k, s in enumerate(activity["steps"])]
    assert [(r["Step"], r["Attempts entered"]) for r in rows] == want, ctx.where


@checks("Cohort funnel: drop-off per step")
async def _cohort_table(ctx: Ctx, rows: list) -> None:
    funnels = await _cohort(ctx)
    names = ctx.by_name()
    grouped: dict[str, list] = defaultdict(list)
    for r in rows:
        grouped[r["Workflow"]].append(r)
    assert set(grouped) == set(names), ctx.where
    for name, got in grouped.items():
        wf = names[name]
        want = funnels[wf.workflow_id]["steps"]
        assert [r["Step"] for r in got] == [f"{s['index'] + 1}. {s['name']}" for s in want]
        for key, col in (("reached", "Reached"), ("in_progress", "In progress")):
            assert [r[col] for r in got] == [s[key] for s in want], (ctx.where, name, col)
        assert [r["Dropped"] for r in got] == [s["dropped"] for s in want], (ctx.where, name)
        assert [r["Drop-off ratio"] for r in got] == [_approx(s["dropoff_ratio"]) for s in want]
        flags = [r["Bottleneck"] == "bottleneck" for r in got]
        assert sum(flags) <= 1, f"{ctx.where}: several bottlenecks in {name}"
        assert flags == [s["bottleneck"] for s in want], (ctx.where, name)


@checks("Activity funnel: attempts per step")
async def _activity_table(ctx: Ctx, rows: list) -> None:
    names = ctx.by_name()
    grouped: dict[str, list] = defaultdict(list)
    for r in rows:
        grouped[r["Workflow"]].append(r)
    assert set(grouped) == set(names), ctx.where
    for name, got in grouped.items():
        wf = names[name]
        perf = {s["step_id"]: s for s in (await actions(ctx.conn, None, wf, *ctx.hours))["actions"]}
        want = [perf[s.step_id] for s in wf.steps]
        assert [r["Attempts entered"] for r in got] == [p["executions"] for p in want], name
        for col in ("Succeeded", "Failed", "Skipped", "Running"):
            assert [r[col] for r in got] == [p[col.lower()] for p in want], (ctx.where, col)
        first = want[0]["executions"]
        assert [r["Relative to first step"] for r in got] == [
            _approx(p["executions"] / first if first else None) for p in want
        ]


@checks("Drop-off ratio per step by enrollment time (store)")
async def _dropoff_series(ctx: Ctx, rows: list) -> None:
    interval = ctx.board.interval(ctx.start, ctx.end, ctx.q.interval, ctx.max_data_points)
    labels = {ctx.label(wf, k): (wf, k) for wf in ctx.workflows for k in range(len(wf.steps))}
    assert {r["metric"] for r in rows} <= set(labels), ctx.where
    # every series of the first, a middle and the last bucket
    buckets = sorted({r["time"] for r in rows})
    for t in {buckets[0], buckets[len(buckets) // 2], buckets[-1]}:
        b = _bucket_start(t)
        lo, hi = max(b, ctx.hours[0]), min(b + interval, ctx.hours[1])
        funnels = await cohort_funnels(ctx.conn, None, ctx.workflows, lo, hi)
        for r in (r for r in rows if r["time"] == t):
            wf, k = labels[r["metric"]]
            want = funnels[wf.workflow_id]["steps"][k]["dropoff_ratio"]
            assert r["value"] == _approx(want), (ctx.where, r["metric"], b)


@checks("Top error texts")
async def _top_errors(ctx: Ctx, rows: list) -> None:
    names = ctx.by_name()
    counts: dict[tuple[str, str, str], int] = {}
    for wf in ctx.workflows:
        for s in (await actions(ctx.conn, None, wf, *ctx.hours))["actions"]:
            label = f"{s['index'] + 1}. {s['name']}"
            for e in s["top_errors"]:
                counts[(wf.name, label, e["error"])] = e["count"]
    assert len(rows) == min(20, len(counts)), ctx.where
    for r in rows:
        assert r["Workflow"] in names
        assert r["Failures"] == counts[(r["Workflow"], r["Step"], r["Error"])], ctx.where
    failures = [r["Failures"] for r in rows]
    assert failures == sorted(failures, reverse=True)
    shown = {(r["Workflow"], r["Step"], r["Error"]) for r in rows}
    assert failures[-1] >= max([n for k, n in counts.items() if k not in shown], default=0)


def _no_negative(q: Query, rows: list, where: str) -> None:
    for r in rows:
        for col, v in r.items():
            if isinstance(v, int | float) and not isinstance(v, bool) and col not in SIGNED:
                assert v >= 0 or (isinstance(v, float) and math.isnan(v)), (where, col, v)


def _check_shape(q: Query, rows: list, where: str) -> None:
    assert rows, f"{where}: no rows"
    if q.fmt == "time_series":
        assert list(rows[0].keys()) == TIME_SERIES, where
        times = [r["time"] for r in rows]
        assert times == sorted(times), f"{where}: time series not sorted by time"
        keys = [(r["time"], r["metric"]) for r in rows]
        assert len(keys) == len(set(keys)), f"{where}: two series with one name"
        values = [r["value"] for r in rows if r["value"] is not None]
        assert values and all(math.isfinite(v) for v in values), where


async def _selected(conn: asyncpg.Connection, ids: list[str]) -> list[Workflow]:
    out = []
    for wf_id in ids:
        wf = await get_workflow(conn, None, wf_id)
        assert wf is not None
        out.append(wf)
    return out


async def _run_all(dsn: str, tsdb: bool) -> int:
    """Run and check every SQL panel for every choice and range; the number of runs."""
    conn = await asyncpg.connect(dsn)
    runs = 0
    try:
        for name, d in DASHBOARDS.items():
            sql = [q for q in SQL_QUERIES if q.dashboard == name]
            if not sql:
                continue
            for choice in CHOICES:
                for start, end in RANGES:
                    board = Board(conn, d, tsdb)
                    selected = await board.choose(choice, start, end)
                    assert len(selected) >= {"one": 1, "several": 2, "all": 1}[choice.workflow]
                    for q in sql:
                        for scoped in board.runs(q, selected):
                            shown = selected if scoped is None else [scoped["workflow"]]
                            points = (1000, 10) if q.fmt == "time_series" else (1000,)
                            for mdp in points:
                                where = (
                                    f"{name}/{q.panel} {choice} {scoped or ''} "
                                    f"[{start:%d %H:%M}, {end:%d %H:%M}] points={mdp}"
                                )
                                text = board.sql(
                                    q.text,
                                    start,
                                    end,
                                    min_interval=q.interval,
                                    max_data_points=mdp,
                                    scoped=scoped,
                                )
                                rows = await conn.fetch(text)
                                _check_shape(q, rows, where)
                                _no_negative(q, rows, where)
                                ctx = Ctx(
                                    conn,
                                    board,
                                    q,
                                    start,
                                    end,
                                    await _selected(conn, shown),
                                    where,
                                    mdp,
                                )
                                await CHECKERS[q.panel](ctx, rows)
                                runs += 1
    finally:
        await conn.close()
    return runs


def test_every_sql_panel_has_a_truth() -> None:
    assert {q.panel for q in SQL_QUERIES} == set(CHECKERS)


async def test_sql_panels_equal_the_api_on_postgres(db_dsn: str) -> None:
    await _fill(db_dsn, "postgres")
    runs = await _run_all(db_dsn, tsdb=False)
    assert runs > 200


@pytest.mark.timescale
async def test_sql_panels_equal_the_api_on_timescaledb(timescale_dsn: str) -> None:
    await _fill(timescale_dsn, "timescaledb")
    runs = await _run_all(timescale_dsn, tsdb=True)
    assert runs > 200


async def test_a_typed_variable_never_reaches_sql_as_code(db_dsn: str) -> None:
    """min_volume (and a forged workflow value) from the URL: an error or no row, never code."""
    await _fill(db_dsn, "postgres")
    d = DASHBOARDS["funnel.json"]
    funnel = next(
        q for q in queries("funnel.json", d) if q.panel == "Cohort funnel: drop-off per step"
    )
    conn = await asyncpg.connect(db_dsn)
    try:
        board = Board(conn, d, tsdb=False)
        await board.choose(Choice("all", "all"), *ALIGNED)
        before = await conn.fetchval("SELECT count(*) FROM wfa.workflows")
        for hostile in (
            "1; DROP TABLE wfa.workflows; --",
            "1'; DROP TABLE wfa.workflows; --",
            "0 OR true",
            "1)::int; DROP TABLE wfa.workflows; --",
        ):
            board.templating["min_volume"].select(hostile)
            text = board.sql(funnel.text, *ALIGNED)
            assert "'" + hostile.replace("'", "''") + "'::int" in text
            with pytest.raises(asyncpg.InvalidTextRepresentationError):
                await conn.execute(text)
        board.templating["min_volume"].select("5")
        rows = await conn.fetch(board.sql(funnel.text, *ALIGNED))
        assert rows and any(r["Bottleneck"] for r in rows)
        forged = ["wf-01') OR true OR ('", "x'; DROP TABLE wfa.workflows"]
        board.templating["workflow"].select(forged)
        rows = await conn.fetch(board.sql(funnel.text, *ALIGNED))
        assert rows == [], "a forged workflow value is a quoted literal that matches nothing"
        assert await conn.fetchval("SELECT count(*) FROM wfa.workflows") == before
    finally:
        await conn.close()


async def test_cohort_funnel_in_a_repeated_row_equals_the_api(db_dsn: str) -> None:
    """The row repeated per workflow shows that workflow's funnel, whatever else is selected."""
    await _fill(db_dsn, "postgres")
    d = DASHBOARDS["funnel.json"]
    q = next(q for q in queries("funnel.json", d) if q.panel == "Cohort funnel: drop-off per step")
    assert q.repeat == "workflow"
    conn = await asyncpg.connect(db_dsn)
    try:
        board = Board(conn, d, tsdb=False)
        selected = await board.choose(Choice("all", "all"), *ALIGNED)
        assert len(selected) == 5
        start, end = hours_in(*ALIGNED)
        assert (start, end) == (ALIGNED[0], HOUR0)
        for wf_id in selected:
            wf = await get_workflow(conn, None, wf_id)
            assert wf is not None
            want = await cohort_funnel(conn, None, wf, start, end, min_volume=MIN_VOLUME)
            rows = await conn.fetch(board.sql(q.text, *ALIGNED, scoped={"workflow": wf_id}))
            assert {r["Workflow"] for r in rows} == {wf.name}
            assert [r["Dropped"] for r in rows] == [s["dropped"] for s in want["steps"]]
            assert sum(r["Reached"] for r in rows) > 0
            assert sum(r["Bottleneck"] == "bottleneck" for r in rows) == 1
    finally:
        await conn.close()


def test_hour_range_of_a_grafana_range() -> None:
    t = NOW.replace(minute=37)
    hour = t.replace(minute=0)
    assert hours_in(t - timedelta(days=1), t) == (hour - timedelta(hours=23), hour + HOUR)
    aligned = hour
    assert hours_in(aligned - HOUR, aligned - timedelta(seconds=1)) == (aligned - HOUR, aligned)


_LINK = re.compile(r"^/d/(?P<uid>[\w-]+)/(?P<slug>[\w-]+)\?(?P<query>.+)$")
_FIELD = re.compile(r"\$\{__data\.fields\.([^}]+)\}")
TIME_RANGE = "${__url_time_range}"


def _data_links(d: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(panel title, column, link) of every data link set on a column of a panel."""
    out = []
    for panel in d["panels"]:
        for ov in panel.get("fieldConfig", {}).get("overrides", []):
            for prop in ov["properties"]:
                if prop["id"] == "links":
                    column = ov["matcher"]["options"]
                    out += [(panel["title"], column, link) for link in prop["value"]]
    return out


async def test_data_links_open_the_same_workflow_and_step(db_dsn: str) -> None:
    """Each data link, filled from the rows its panel returns, opens an existing dashboard in
    the same time range with its variables set to values that dashboard offers."""
    await _fill(db_dsn, "postgres")
    by_uid = {d["uid"]: d for d in DASHBOARDS.values()}
    slug = {u: re.sub(r"[^a-z0-9]+", "-", d["title"].lower()).strip("-") for u, d in by_uid.items()}
    conn = await asyncpg.connect(db_dsn)
    followed: dict[str, int] = defaultdict(int)
    try:
        for name, d in DASHBOARDS.items():
            links = _data_links(d)
            if not links:
                continue
            board = Board(conn, d, tsdb=False)
            selected = await board.choose(Choice("all", "all"), *ALIGNED)
            by_panel = {q.panel: q for q in queries(name, d) if q.kind == "sql"}
            for title, column, link in links:
                q = by_panel[title]
                scoped = next(board.runs(q, selected))
                rows = await conn.fetch(board.sql(q.text, *ALIGNED, scoped=scoped))
                assert rows, (name, title)
                assert link["url"].endswith("&" + TIME_RANGE), link
                for row in rows:
                    assert column in row, (name, title, column)
                    url = _FIELD.sub(lambda m, r=row: str(r[m.group(1)]), link["url"])
                    got = _LINK.match(url.removesuffix("&" + TIME_RANGE))
                    assert got and got["uid"] in by_uid, url
                    assert got["slug"] == slug[got["uid"]], url
                    params = dict(
                        p.removeprefix("var-").split("=", 1) for p in got["query"].split("&")
                    )
                    target = Board(conn, by_uid[got["uid"]], tsdb=False)
                    for var, kind, _ in variable_queries(target.dashboard):
                        if kind != "sql":
                            continue
                        values = [v for _, v in await target.options(var, *ALIGNED)]
                        if var in params:
                            assert params[var] in values, (url, var, values)
                            target.templating[var].select([params[var]])
                        else:
                            target.templating[var].select(ALL)
                    assert set(params) <= {v for v, _, _ in variable_queries(target.dashboard)}
                    followed[f"{name}:{title}"] += 1
    finally:
        await conn.close()
    assert set(followed) >= {
        "funnel.json:Cohort funnel: drop-off per step",
        "funnel.json:Activity funnel: attempts per step",
        "overview.json:Workflows by volume",
        "actions.json:Top error texts",
    }, followed
