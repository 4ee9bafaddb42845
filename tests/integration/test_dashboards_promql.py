"""Every PromQL the project ships, run by a real Prometheus scraping the real exporter: it
parses, and for every variable choice (tenant one / All, workflow one / several / All) each
panel's numbers equal the truth: gauges equal exporter.queries exactly, ratios and
percentiles equal those of the store's counter changes exactly, counts equal the API within
Prometheus' extrapolation of increase()."""

from __future__ import annotations

import asyncio
import json
import math
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
import yaml

from exporter.config import config_from_dict
from exporter.histogram import quantile
from exporter.metrics import MetricsServer
from exporter.metrics.snapshot import ALL_TIME_START, window_label
from exporter.queries import Workflow, activity_totals, cohort_funnels, list_workflows
from exporter.service import ExporterService
from exporter.simulate.generate import advance, generate
from exporter.simulate.writer import create_source_schema, upsert_executions, write
from monitoring import rendered
from tests.integration.dashboard_board import CHOICES, Board, Choice
from tests.integration.prom_server import RULES_DIR, Prometheus, needs_prometheus
from tests.kit.grafana import (
    ALL,
    Query,
    Templating,
    expand_promql,
    queries,
    variable_queries,
)
from tests.unit.test_dashboards import all_promql, base_metric, documented_metrics, metric_names

DASHBOARDS = {name: json.loads(text) for name, text in rendered().items()}
SCRAPE = timedelta(seconds=1)
WORKFLOW_DASHBOARDS = ("overview.json", "funnel.json", "actions.json")


def _expand(q: Query, t: Templating, window: timedelta) -> str:
    """A panel's PromQL with $__range and $__rate_interval both `window`."""
    expr = expand_promql(
        q.text, t, interval=window - SCRAPE, range_=window, scrape=SCRAPE, scoped=None
    )
    assert "$" not in expr.replace('"$1"', ""), f"unexpanded variable in {expr}"
    return expr


def _variable_selectors() -> list[str]:
    """The series selectors inside the Prometheus variables' label_values()."""
    out = []
    for d in DASHBOARDS.values():
        for _name, kind, query in variable_queries(d):
            if kind == "prometheus":
                m = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
                assert m, query
                out.append(m.group(1))
    return out


def _sample_templating(d: dict[str, Any]) -> Templating:
    t = Templating(d)
    for name, value in (("workflow", ["wf-1", "wf.2"]), ("step", ["s1"]), ("instance", ALL)):
        if name in t.variables:
            t[name].options = [("x", "wf-1"), ("y", "wf.2"), ("z", "s1")]
            t[name].select(value)
    return t


@needs_prometheus
async def test_every_promql_expression_parses() -> None:
    exprs = []
    for name, d in DASHBOARDS.items():
        t = _sample_templating(d)
        for q in queries(name, d):
            if q.kind == "prometheus":
                exprs.append((f"{name}/{q.panel}", _expand(q, t, timedelta(minutes=10))))
    exprs += [(w, e) for w, e in all_promql() if not w.split("/")[0].endswith(".json")]
    exprs += [("variable", s) for s in _variable_selectors()]
    async with Prometheus() as prom:
        status, body = await prom.query("sum(rate(x[5m])")
        assert status == 400 and body["errorType"] == "bad_data", "parse errors must be 400"
        problems = []
        for where, expr in exprs:
            status, body = await prom.query(expr)
            if status != 200:
                problems.append(f"{where}: {body.get('error')}")
        assert not problems, "\n".join(problems)
    assert len(exprs) > 40


def _exposed_names(text: str) -> set[str]:
    """Sample names of a text exposition, and the families declared in it."""
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, family, kind = line.split(" ", 3)
            names.add(family)
            if kind == "counter":
                names.add(family + "_total")
            if kind == "histogram":
                names |= {family + s for s in ("_bucket", "_sum", "_count")}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{ ]", line, maxsplit=1)[0])
    return names


Key = tuple[str, str, str, str, str, str]  # metric, tenant, workflow, step, action, label


async def _counters(conn: asyncpg.Connection) -> dict[Key, int]:
    rows = await conn.fetch(
        "SELECT metric, tenant_id, workflow_id, step_id, action_type, label, value "
        "FROM wfa.counters"
    )
    return {tuple(r.values())[:6]: r["value"] for r in rows}  # type: ignore[misc]


@dataclass
class Live:
    """The exporter in this process on simulated data, and what changed in one step."""

    conn: asyncpg.Connection
    svc: ExporterService
    ms: MetricsServer
    target: str
    data0: datetime
    data1: datetime
    snap_now: datetime = field(default_factory=lambda: datetime.now(UTC))
    before: dict[Key, int] = field(default_factory=dict)
    after: dict[Key, int] = field(default_factory=dict)

    async def step(self) -> None:
        """The source moves on by an hour; ingest it and publish a new snapshot."""
        self.before = await _counters(self.conn)
        changed = advance(self.data, self.data1, seed=29)
        assert changed
        await upsert_executions(self.conn, changed)
        assert await self.svc.poll_once() is not None
        self.snap_now = datetime.now(UTC)
        assert await self.ms.refresh(self.snap_now) is not None
        self.after = await _counters(self.conn)

    data: Any = None


@pytest.fixture
async def live(store_dsn: tuple[str, str]) -> AsyncIterator[Live]:
    """The real exporter on simulated data (5 workflows, 2 tenants), serving /metrics."""
    backend, db_dsn = store_dsn
    now = datetime.now(UTC).replace(microsecond=0)
    data = generate(
        executions=2500, days=3, workflows=5, tenants=2, seed=23, now=now - timedelta(hours=2)
    )
    conn = await asyncpg.connect(db_dsn)
    await create_source_schema(conn)
    await write(conn, data)
    svc = ExporterService(
        config_from_dict({"source": {"dsn": db_dsn}, "store": {"backend": backend}})
    )
    await svc.open()
    assert await svc.poll_once() is not None
    ms = MetricsServer(svc.cfg.metrics, svc.state, lambda: svc.store)
    svc.listeners.append(ms.on_poll)
    assert await ms.refresh() is not None
    await ms.start("127.0.0.1:0")
    lv = Live(conn, svc, ms, f"127.0.0.1:{ms.port}", data.now, now - timedelta(hours=1))
    lv.data = data
    try:
        yield lv
    finally:
        await ms.stop()
        await svc.close()
        await conn.close()


# the truth ---------------------------------------------------------------------------------


@dataclass
class Truth:
    """Expected values for one variable choice."""

    live: Live
    workflows: list[Workflow]
    funnels: dict[str, dict[str, dict]]  # window label -> workflow -> funnel
    active: dict[str, dict]  # workflow -> all-time cohort (in progress by step)
    events: dict[str, dict]  # workflow -> API activity totals of the step
    window_s: float = 0.0  # $__range and $__rate_interval in seconds

    @property
    def ids(self) -> set[str]:
        return {w.workflow_id for w in self.workflows}

    def delta(self, metric: str, **match: str) -> dict[Key, int]:
        """Counter changes of the step for the selected workflows."""
        out = {}
        for k, v in self.live.after.items():
            if k[0] != metric or k[2] not in self.ids:
                continue
            names = ("tenant", "workflow", "step", "action", "label")
            fields = dict(zip(names, k[1:], strict=True))
            if all(fields[f] == want for f, want in match.items()):
                d = v - self.live.before.get(k, 0)
                if d:
                    out[k] = d
        return out

    def total(self, metric: str, **match: str) -> int:
        return sum(self.delta(metric, **match).values())

    def by(self, metric: str, key: Callable[[Key], Any], **match: str) -> dict[Any, int]:
        out: dict[Any, int] = defaultdict(int)
        for k, v in self.delta(metric, **match).items():
            out[key(k)] += v
        return out

    def hist(self, key: Callable[[Key], Any]) -> dict[Any, dict[float, int]]:
        out: dict[Any, dict[float, int]] = defaultdict(lambda: defaultdict(int))
        for k, v in self.delta("step_duration_bucket").items():
            out[key(k)][float(k[5])] += v
        return out


def _near(got: float, want: float, factor: float, where: str) -> None:
    """increase()/rate() of a counter: at least the change, at most extrapolated by `factor`."""
    assert want <= got * (1 + 1e-9) and got <= want * factor + 1e-9, (where, got, want)


Check = Callable[[Truth, dict[frozenset, float], float, str], Awaitable[None] | None]
CHECKS: dict[tuple[str, str, str], Check] = {}


def check(dashboard: str, panel: str, *refs: str) -> Callable[[Check], Check]:
    """Register the truth of panel queries."""

    def register(fn: Check) -> Check:
        for ref in refs or ("A",):
            CHECKS[(dashboard, panel, ref)] = fn
        return fn

    return register


def _one(got: dict[frozenset, float], where: str) -> float:
    assert len(got) == 1, (where, got)
    return next(iter(got.values()))


def _label(labels: frozenset, name: str) -> str:
    return dict(labels)[name]


for _title, _field in (
    ("Enrollments", "enrollments"),
    ("Completions", "completions"),
    ("Conversions", "conversions"),
):

    def _counts(t: Truth, got: dict, factor: float, where: str, field: str = _field) -> None:
        want = sum(e[field] for e in t.events.values())
        _near(_one(got, where), want, factor, where)

    check("overview.json", _title)(_counts)


@check("overview.json", "Active executions")
def _active(t: Truth, got: dict, factor: float, where: str) -> None:
    assert _one(got, where) == sum(a["in_progress"] for a in t.active.values()), where


@check("overview.json", "Workflow events per minute", "A", "B", "C", "E")
def _events_rate(t: Truth, got: dict, factor: float, where: str) -> None:
    field = {"A": "enrollments", "B": "completions", "C": "conversions", "E": "failures"}
    want = sum(e[field[where[-1]]] for e in t.events.values())
    if want:
        _near(_one(got, where) * t.window_s / 60, want, factor, where)
    else:
        assert list(got.values()) in ([], [0.0]), where


@check("overview.json", "Workflow events per minute", "D")
def _exits_rate(t: Truth, got: dict, factor: float, where: str) -> None:
    by_reason = t.by("exits", lambda k: k[5])
    assert sum(by_reason.values()) == sum(e["exits"] for e in t.events.values())
    for labels, v in got.items():
        reason = _label(labels, "reason")
        assert reason in by_reason or v == 0, where
        if v:
            _near(v * t.window_s / 60, by_reason[reason], factor, where)


@check("overview.json", "Active executions by workflow")
def _active_by_wf(t: Truth, got: dict, factor: float, where: str) -> None:
    want = {w.workflow_id: t.active[w.workflow_id]["in_progress"] for w in t.workflows}
    assert {_label(k, "workflow"): v for k, v in got.items()} == want, where
    names = {w.workflow_id: w.name for w in t.workflows}
    assert all(_label(k, "workflow_name") == names[_label(k, "workflow")] for k in got)


@check("overview.json", "Cohort conversion and completion rate (trailing day)", "A", "B")
def _cohort_rates(t: Truth, got: dict, factor: float, where: str) -> None:
    key = "conversion_rate" if where.endswith("A") else "completion_rate"
    want = {
        wid: f[key] for wid, f in t.funnels["1d"].items() if wid in t.ids and f[key] is not None
    }
    assert {_label(k, "workflow"): v for k, v in got.items()} == pytest.approx(want), where


@check("funnel.json", "Drop-off ratio per step (trailing cohort window)")
def _dropoff(t: Truth, got: dict, factor: float, where: str) -> None:
    want = {
        (wid, s["step_id"]): s["dropoff_ratio"]
        for wid, f in t.funnels["1d"].items()
        if wid in t.ids
        for s in f["steps"]
        if s["dropoff_ratio"] is not None
    }
    shown = {(_label(k, "workflow"), _label(k, "step")): v for k, v in got.items()}
    assert shown == pytest.approx(want), where
    assert len({(_label(k, "workflow_name"), _label(k, "step_name")) for k in got}) == len(got)


@check("actions.json", "Step runs")
def _runs(t: Truth, got: dict, factor: float, where: str) -> None:
    _near(_one(got, where), t.total("step_runs"), factor, where)


@check("actions.json", "Failures")
def _failures(t: Truth, got: dict, factor: float, where: str) -> None:
    _near(_one(got, where), t.total("step_outcomes", label="failed"), factor, where)


@check("actions.json", "Success ratio")
def _success(t: Truth, got: dict, factor: float, where: str) -> None:
    ok = t.total("step_outcomes", label="succeeded")
    failed = t.total("step_outcomes", label="failed")
    assert _one(got, where) == pytest.approx(ok / (ok + failed)), where


for _q, _title in ((0.5, "p50 duration"), (0.95, "p95 duration"), (0.99, "p99 duration")):

    def _pct(t: Truth, got: dict, factor: float, where: str, q: float = _q) -> None:
        want = quantile(q, t.hist(lambda k: None)[None])
        assert _one(got, where) == pytest.approx(want), where

    check("actions.json", _title)(_pct)


@check("actions.json", "Runs per minute by action type")
def _runs_by_type(t: Truth, got: dict, factor: float, where: str) -> None:
    want = t.by("step_runs", lambda k: k[4])
    shown = {_label(k, "action_type"): v * t.window_s / 60 for k, v in got.items() if v}
    assert set(shown) == set(want), where
    for a, v in shown.items():
        _near(v, want[a], factor, where)


@check("actions.json", "Success ratio by action type")
def _success_by_type(t: Truth, got: dict, factor: float, where: str) -> None:
    ok = t.by("step_outcomes", lambda k: k[4], label="succeeded")
    bad = t.by("step_outcomes", lambda k: k[4], label="failed")
    want = {a: ok[a] / (ok[a] + bad[a]) for a in set(ok) | set(bad)}
    assert {_label(k, "action_type"): v for k, v in got.items()} == pytest.approx(want), where


@check("actions.json", "Duration percentiles by action type", "A", "B", "C")
def _pct_by_type(t: Truth, got: dict, factor: float, where: str) -> None:
    q = {"A": 0.5, "B": 0.95, "C": 0.99}[where[-1]]
    want = {a: quantile(q, h) for a, h in t.hist(lambda k: k[4]).items()}
    assert {_label(k, "action_type"): v for k, v in got.items()} == pytest.approx(want), where


@check("actions.json", "Failures per minute by step")
def _failures_by_step(t: Truth, got: dict, factor: float, where: str) -> None:
    want = t.by("step_outcomes", lambda k: (k[2], k[3]), label="failed")
    shown = {(_label(k, "workflow"), _label(k, "step")): v for k, v in got.items()}
    assert {k for k, v in shown.items() if v} == set(want), where
    for k, v in want.items():
        _near(shown[k] * t.window_s / 60, v, factor, where)


def _per_step(t: Truth, got: dict, factor: float, where: str) -> None:
    ref = where[-1]
    shown = {
        (_label(k, "workflow"), _label(k, "step"), _label(k, "action_type")): v
        for k, v in got.items()
    }
    key = lambda k: (k[2], k[3], k[4])  # noqa: E731
    if ref == "A":
        want = t.by("step_runs", key)
        assert {k for k, v in shown.items() if v} == set(want), where
        for k, v in want.items():
            _near(shown[k], v, factor, where)
    elif ref == "B":
        ok = t.by("step_outcomes", key, label="succeeded")
        bad = t.by("step_outcomes", key, label="failed")
        want_r = {k: ok[k] / (ok[k] + bad[k]) for k in set(ok) | set(bad)}
        assert shown == pytest.approx(want_r), where
    elif ref == "C":
        want = t.by("step_outcomes", key, label="failed")
        assert {k for k, v in shown.items() if v} == set(want), where
        for k, v in want.items():
            _near(shown[k], v, factor, where)
    else:
        q = {"D": 0.5, "E": 0.95, "F": 0.99}[ref]
        want_q = {k: quantile(q, h) for k, h in t.hist(key).items()}
        assert shown == pytest.approx(want_q), where
    names = {w.workflow_id: w.name for w in t.workflows}
    assert all(_label(k, "workflow_name") == names[_label(k, "workflow")] for k in got)


check("actions.json", "Per step and action type", *"ABCDEF")(_per_step)


@check("actions.json", "Slowest steps (p95)")
def _slowest(t: Truth, got: dict, factor: float, where: str) -> None:
    p95 = {k: quantile(0.95, h) for k, h in t.hist(lambda k: (k[2], k[3])).items()}
    top = sorted(p95.values(), reverse=True)[:10]
    shown = {(_label(k, "workflow"), _label(k, "step")): v for k, v in got.items()}
    assert sorted(shown.values(), reverse=True) == pytest.approx(top), where
    assert all(shown[k] == pytest.approx(p95[k]) for k in shown), where


@check("actions.json", "Most failing steps")
def _most_failing(t: Truth, got: dict, factor: float, where: str) -> None:
    want = t.by("step_outcomes", lambda k: (k[2], k[3]), label="failed")
    shown = {(_label(k, "workflow"), _label(k, "step")): v for k, v in got.items()}
    assert len(shown) == min(10, len(want)), where
    for k, v in shown.items():
        _near(v, want[k], factor, where)


async def _truth(live: Live, ids: list[str]) -> Truth:
    wfs = [w for w in await list_workflows(live.conn, None) if w.workflow_id in set(ids)]
    now = live.snap_now
    funnels = {
        window_label(w): await cohort_funnels(live.conn, None, wfs, now - w, now)
        for w in live.svc.cfg.metrics.windows
    }
    active = await cohort_funnels(live.conn, None, wfs, ALL_TIME_START, now + timedelta(days=1))
    ms = timedelta(milliseconds=1)
    events = await activity_totals(live.conn, None, wfs, live.data0 + ms, live.data1 + ms)
    return Truth(live, wfs, funnels, active, events)


# the test ----------------------------------------------------------------------------------


@needs_prometheus
async def test_panels_equal_the_truth_for_every_choice(live: Live) -> None:
    exposition = live.ms.exposition().decode()
    exposed = _exposed_names(exposition)
    documented = documented_metrics()
    for where, expr in all_promql():
        for name in metric_names(expr):
            if name.startswith("wfa_"):
                assert name in exposed or base_metric(name, documented) in exposed, (
                    f"{where}: {name} is not in the exporter's exposition"
                )
    async with Prometheus([live.target], rules=True) as prom:
        job = prom.settings.job
        await prom.wait_for(f"count_over_time(up{{{job}}}[1m]) >= 4")
        stepped_at = datetime.now(UTC)
        await live.step()
        # every workflow series lost `instance` (scrape relabelling), self-metrics kept it
        assert not await prom.series('{__name__=~"wfa_(workflow|step|funnel)_.+", instance!=""}')
        await asyncio.sleep(6)
        at = datetime.now(UTC)
        window = timedelta(seconds=math.ceil((at - stepped_at).total_seconds()) + 3)
        factor = window / (window - 3 * SCRAPE)
        runs = 0
        for name in WORKFLOW_DASHBOARDS:
            d = DASHBOARDS[name]
            for choice in CHOICES:
                board = Board(live.conn, d, tsdb=live.svc.cfg.store.backend == "timescaledb")
                ids = await board.choose(choice, at - timedelta(days=7), at)
                truth = await _truth(live, ids)
                truth.window_s = window.total_seconds()
                if choice == Choice("all", "all"):  # the counters changed as the API says
                    changed = truth.by("enrollments", lambda k: k[2])
                    for w in truth.workflows:
                        want = truth.events[w.workflow_id]["enrollments"]
                        assert changed.get(w.workflow_id, 0) == want, w.workflow_id
                for q in (q for q in queries(name, d) if q.kind == "prometheus"):
                    expr = _expand(q, board.templating, window)
                    got = await prom.values(expr, at)
                    where = f"{name}/{q.panel} {choice} {q.ref}"
                    for labels, v in got.items():
                        assert v >= 0, (where, dict(labels), v)
                    outcome = CHECKS[(name, q.panel, q.ref)](truth, got, factor, where)
                    if outcome is not None:
                        await outcome
                    runs += 1
        per_choice = [
            q
            for n in WORKFLOW_DASHBOARDS
            for q in queries(n, DASHBOARDS[n])
            if q.kind == "prometheus"
        ]
        assert runs == len(CHOICES) * len(per_choice)
        # exporter health: instance All, then this one instance
        health = DASHBOARDS["exporter.json"]
        t = Templating(health)
        t["instance"].options = [(live.target, live.target)]
        for sel in (ALL, [live.target]):
            t["instance"].select(sel)
            for q in (q for q in queries("exporter.json", health) if q.kind == "prometheus"):
                got = await prom.values(_expand(q, t, window), at)
                where = f"exporter.json/{q.panel} {q.ref} {sel}"
                assert all(v >= 0 for v in got.values()), where
                if q.panel == "Polling replicas":
                    assert _one(got, where) == 1
                if q.panel == "Store reachable":
                    assert _one(got, where) == 1
                if q.panel.startswith("Series dropped (cardinality"):
                    assert _one(got, where) == 0
                if q.panel not in ("Rejected rows per minute",):
                    assert got, f"{where}: no series"
        for selector in _variable_selectors():
            assert await prom.series(selector), selector
        recorded = [
            r["record"]
            for path in sorted(RULES_DIR.glob("*.yml"))
            for g in yaml.safe_load(path.read_text())["groups"]
            for r in g["rules"]
            if "record" in r
        ]
        for record in recorded:
            await prom.wait_for(record, timeout=20)
        for g in await prom.rules():
            for r in g["rules"]:
                assert r["health"] == "ok", (r["name"], r.get("lastError"))


def test_every_promql_panel_has_a_truth() -> None:
    wanted = {
        (n, q.panel, q.ref)
        for n in WORKFLOW_DASHBOARDS
        for q in queries(n, DASHBOARDS[n])
        if q.kind == "prometheus"
    }
    assert wanted == set(CHECKS)
