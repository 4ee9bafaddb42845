"""Label and exposition hygiene: bounded exit reasons, OpenMetrics by negotiation, process
metrics, one meaning per name, leader-only workflow series, the runbook, quiet logs."""

from __future__ import annotations

import copy
import gzip
import logging
import re
from collections import Counter, defaultdict
from datetime import timedelta

import aiohttp
import asyncpg
import pytest
from prometheus_client import generate_latest
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter.commands.common import setup_logging
from exporter.config.schema import MetricsConfig
from exporter.ingest import PollResult
from exporter.metrics import MetricsServer
from exporter.metrics.activity import ActivityLog
from exporter.metrics.labels import OTHER, UNSPECIFIED, LabelPlan, choose, eligible
from exporter.service import ExporterState
from exporter.simulate.writer import upsert_executions
from monitoring.rules import alert_names
from monitoring.settings import Settings
from tests.integration.test_metrics import (
    NOW,
    fill,
    get,
    make_config,
    open_service,
    parse,
    promtool_check,
)
from tests.kit.truth import Truth

PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
VOLATILE = re.compile(
    rb"^(# (HELP|TYPE) )?"
    rb"(process_|wfa_exporter_snapshot_age_seconds|wfa_exporter_ingest_lag_).*$\n",
    re.MULTILINE,
)
"""Lines that move between two renderings: process figures and ages."""


def _exits(samples: dict, workflow: str) -> dict[str, float]:
    return {
        dict(labels)["reason"]: v
        for (name, labels), v in samples.items()
        if name == "wfa_workflow_exits_total" and ("workflow", workflow) in labels
    }


# exit reasons ------------------------------------------------------------------------------


def test_label_plan_folds_and_never_decreases() -> None:
    counts = {"a": 5, "b": 3, "": 2, "x" * 100: 4}
    plan = LabelPlan(frozenset({"a"}))
    assert plan.fold("t", "w", counts) == {"a": 5, UNSPECIFIED: 2, OTHER: 7}
    # "b" promoted later: its series starts at 0, its past stays in other
    later = LabelPlan(frozenset({"a", "b"}), {("b", "t", "w"): 3})
    assert later.fold("t", "w", counts) == {"a": 5, "b": 0, UNSPECIFIED: 2, OTHER: 7}
    assert later.fold("t", "w", {**counts, "b": 4})["b"] == 1
    assert not eligible("") and not eligible(OTHER) and not eligible("x" * 65)
    assert not eligible("bad\nreason") and eligible("goal met elsewhere")
    assert choose({"a": 9, "b": 7, "c": 8, "d": 1}, {"a": "top"}, ["d"], 3) == [
        ("d", "allow"),
        ("c", "top"),
        ("b", "top"),
    ]
    assert choose({"z": 100}, {"a": "top", "b": "top"}, [], 2) == []


async def test_ten_thousand_reasons_keep_the_series_bounded(store_dsn: tuple[str, str]) -> None:
    backend, db_dsn = store_dsn
    data = await fill(db_dsn, executions=1500, workflows=2, tenants=1)
    svc = await open_service(make_config(db_dsn, backend, top_reasons=3))
    try:
        ms = MetricsServer(svc.cfg.metrics, svc.state, lambda: svc.store)
        first = parse((await _refreshed(ms)).exposition())
        wf = data.workflows[0]
        truth = Truth(data).totals(wf.id)
        before = _exits(first, wf.id)
        assert sum(before.values()) == truth["exits"]
        assert set(before) <= set(truth["exits_by_reason"]) | {OTHER}
        assert len(before) <= 3 + 1

        # 10,000 exits, each with its own reason, some hostile (1 kB, control characters)
        template = next(
            e for e in data.executions if e.status == "exited" and e.workflow_id == wf.id
        )
        new = []
        for i in range(10_000):
            ex = copy.copy(template)
            ex.id = f"flood-{i:05d}"
            ex.exit_reason = (
                f"reason {i} " + "x" * 1000
                if i % 1000 == 0
                else f"reason\n{i}"
                if i % 7 == 0
                else f"r{i}"
            )
            ex.updated_at = NOW + timedelta(seconds=1 + i / 1000)
            new.append(ex)
        conn = await asyncpg.connect(db_dsn)
        try:
            await upsert_executions(conn, new)
        finally:
            await conn.close()
        assert await svc.poll_once() is not None
        body = (await _refreshed(ms)).exposition()
        promtool_check(body)
        after = _exits(parse(body), wf.id)
        assert len(after) <= 3 + 2, "promoted reasons, unspecified and other, nothing more"
        assert sum(after.values()) == truth["exits"] + 10_000
        for reason, n in before.items():
            assert after[reason] >= n, f"{reason} went down"
        assert not [r for r in after if "\n" in r or len(r) > 64]
        series = sum(1 for name, _ in parse(body) if name == "wfa_workflow_exits_total")
        assert series <= 2 * 5

        # a new process (or a replica that takes over) exposes the same label set and values
        await svc.close()
        svc2 = await open_service(make_config(db_dsn, backend, top_reasons=3))
        try:
            ms2 = MetricsServer(svc2.cfg.metrics, svc2.state, lambda: svc2.store)
            again = _exits(parse((await _refreshed(ms2, svc2.state)).exposition()), wf.id)
        finally:
            await svc2.close()
        assert again == after

        # an operator allowlists a reason that was counted in `other`: `other` keeps its value,
        # the new series starts at 0 and counts from now on
        allowed = "r1"
        assert allowed not in after
        svc3 = await open_service(
            make_config(db_dsn, backend, top_reasons=3, exit_reasons=[allowed])
        )
        try:
            ms3 = MetricsServer(svc3.cfg.metrics, svc3.state, lambda: svc3.store)
            listed = _exits(parse((await _refreshed(ms3, svc3.state)).exposition()), wf.id)
            assert listed[allowed] == 0 and listed[OTHER] == after[OTHER]
            more = copy.copy(template)
            more.id, more.exit_reason = "flood-more", allowed
            more.updated_at = NOW + timedelta(minutes=1)
            conn = await asyncpg.connect(db_dsn)
            try:
                await upsert_executions(conn, [more])
            finally:
                await conn.close()
            assert await svc3.poll_once() is not None
            grown = _exits(parse((await _refreshed(ms3, svc3.state)).exposition()), wf.id)
            assert grown[allowed] == 1 and grown[OTHER] == after[OTHER]
        finally:
            await svc3.close()
    finally:
        await svc.close()


async def _refreshed(ms: MetricsServer, state: ExporterState | None = None) -> MetricsServer:
    assert (state or ms.exporter).is_leader
    assert await ms.refresh() is not None, ms.state.snapshot_errors
    return ms


# exposition --------------------------------------------------------------------------------


def _families(text: str) -> list:
    return list(text_string_to_metric_families(text))


async def test_openmetrics_when_asked_text_otherwise_and_process_metrics(db_dsn: str) -> None:
    await fill(db_dsn, executions=600, workflows=3)
    svc = await open_service(make_config(db_dsn))
    ms = MetricsServer(svc.cfg.metrics, svc.state, lambda: svc.store)
    assert await ms.refresh() is not None
    await ms.start("127.0.0.1:0")
    url = f"http://127.0.0.1:{ms.port}/metrics"
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            plain = {"Accept-Encoding": "identity"}
            async with http.get(url, headers={**plain, "Accept": PROMETHEUS_ACCEPT}) as r:
                assert r.headers["Content-Type"].startswith(
                    "application/openmetrics-text; version=1.0.0; charset=utf-8"
                )
                om = await r.read()
            headers = {"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
            async with http.get(url, headers=headers) as r:
                assert r.headers["Content-Encoding"] == "gzip"
                om_gz = gzip.decompress(await r.read())
            async with http.get(url, headers=plain) as r:
                assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
                text = await r.read()
            accept = {**plain, "Accept": "text/plain;version=1.0.0;escaping=underscores"}
            async with http.get(url, headers=accept) as r:
                assert r.headers["Content-Type"].startswith("text/plain; version=1.0.0")
                text_v1 = await r.read()
        assert om.endswith(b"# EOF\n") and om.count(b"# EOF") == 1
        # what prometheus_client renders from the same registry, byte for byte (but for the
        # lines that move between two renderings)
        assert VOLATILE.sub(b"", om) == VOLATILE.sub(
            b"", om_exposition.generate_latest(ms.registry)
        )
        assert VOLATILE.sub(b"", om_gz) == VOLATILE.sub(b"", om)
        assert VOLATILE.sub(b"", text) == VOLATILE.sub(b"", generate_latest(ms.registry))
        assert VOLATILE.sub(b"", text_v1) == VOLATILE.sub(b"", text)
        promtool_check(text)
        families = _families(om.decode())  # the strict parser refuses clashing names
        names = [f.name for f in families]
        assert len(names) == len(set(names))
        kinds = {f.name: f.type for f in families}
        assert kinds["wfa_exporter_series_dropped"] == "counter"
        assert kinds["wfa_exporter_snapshot_series_dropped"] == "gauge"
        assert kinds["wfa_workflow_enrollments"] == "counter"
        for name in (
            "process_cpu_seconds",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_open_fds",
        ):
            assert name in kinds, name
        samples = parse(text)
        assert get(samples, "process_resident_memory_bytes") > 1e6
        for name, _ in samples:
            assert not (
                name.endswith("_total") and name[:-6] in kinds and kinds[name[:-6]] == "gauge"
            )
        gauges = {f.name for f in families if f.type == "gauge"}
        counters = {f.name for f in families if f.type == "counter"}
        assert not gauges & counters
        assert not {g + "_total" for g in gauges} & {n for n, _ in samples}
    finally:
        await ms.stop()
        await svc.close()


async def test_only_the_leader_serves_workflow_series(db_dsn: str) -> None:
    await fill(db_dsn, executions=400, workflows=2)
    svc = await open_service(make_config(db_dsn))
    try:
        state = ExporterState()
        ms = MetricsServer(svc.cfg.metrics, state, lambda: svc.store)
        workflow = re.compile(rb"^wfa_(workflow|step|funnel)_|^wfa_exporter_rejected", re.MULTILINE)
        assert await ms.refresh() is None, "a standby builds no snapshot"
        assert not workflow.search(ms.exposition()) and not workflow.search(ms.openmetrics())
        assert get(parse(ms.exposition()), "wfa_exporter_leader") == 0
        assert b"process_cpu_seconds_total" in ms.exposition()
        state.is_leader = True
        assert not workflow.search(ms.exposition()), "nothing before a snapshot read as leader"
        assert await ms.refresh() is not None
        assert workflow.search(ms.exposition()) and workflow.search(ms.openmetrics())
        state.is_leader = False
        assert not workflow.search(ms.exposition()), "leadership lost: nothing more at once"
        state.is_leader = True
        assert not workflow.search(ms.exposition()), "the old snapshot is older than leadership"
        assert await ms.refresh() is not None
        assert get(parse(ms.exposition()), "wfa_exporter_leader") == 1
        assert workflow.search(ms.exposition())
    finally:
        await svc.close()


async def test_runbook_is_served_per_alert() -> None:
    ms = MetricsServer(MetricsConfig(), ExporterState(), lambda: None)
    await ms.start("127.0.0.1:0")
    base = f"http://127.0.0.1:{ms.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/runbook") as r:
                assert r.status == 200 and r.content_type == "text/plain"
                whole = await r.text()
            for alert in alert_names(Settings.defaults()):
                url = Settings.defaults().monitoring.runbook(alert)
                assert url == f"http://localhost:9464/runbook/{alert}"
                async with http.get(f"{base}/runbook/{alert}") as r:
                    assert r.status == 200, alert
                    section = await r.text()
                assert section.startswith(f"## {alert}\n") and section.count("\n## ") == 0
                assert section.strip() in whole
            async with http.get(f"{base}/runbook/{'x' * 5000}") as r:
                assert r.status == 404 and len(await r.read()) < 200
    finally:
        await ms.stop()


# logs --------------------------------------------------------------------------------------


def test_activity_is_one_line_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    clock = [0.0]
    state = ExporterState(is_leader=True)
    activity = ActivityLog(state, clock=lambda: clock[0])
    caplog.set_level(logging.INFO, logger="exporter.activity")
    activity.leadership(True)
    assert [r.message for r in caplog.records] == [
        "leader: this replica holds the poll lock and serves the workflow series"
    ]
    caplog.clear()
    for i in range(600):  # a poll every 0.2 s for two minutes
        clock[0] = i * 0.2
        result = PollResult(
            batches=1 if i % 10 == 0 else 0, rows={"executions": 3} if i % 10 == 0 else {}
        )
        activity.on_poll(result, None)
    lines = [r for r in caplog.records if r.levelno == logging.INFO]
    assert len(lines) == 1, [r.message for r in lines]
    assert "batches" in lines[0].message and "rows" in lines[0].message
    assert "executions" in lines[0].message
    clock[0] = 130.0
    activity.on_poll(PollResult(), None)
    assert len([r for r in caplog.records if r.levelno == logging.INFO]) == 2
    activity.leadership(True)
    activity.leadership(False)
    assert caplog.records[-1].message.startswith("standby:")


def test_apscheduler_runs_are_debug_only() -> None:
    aps = logging.getLogger("apscheduler")
    try:
        setup_logging("INFO")
        for name in ("apscheduler.executors.default", "apscheduler.scheduler"):
            assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
            assert logging.getLogger(name).isEnabledFor(logging.WARNING), name
        setup_logging("DEBUG")
        assert logging.getLogger("apscheduler.executors.default").isEnabledFor(logging.DEBUG)
    finally:
        aps.setLevel(logging.NOTSET)


def test_rejected_reasons_are_bounded() -> None:
    from exporter.metrics.snapshot import rejected_reason

    assert rejected_reason("invalid_step_progress") == "invalid_step_progress"
    assert rejected_reason('ERROR: duplicate key value violates "x"') == OTHER
    assert rejected_reason("a" * 41) == OTHER
    counts: Counter = Counter(rejected_reason(f"err {i}") for i in range(10_000))
    assert counts == {OTHER: 10_000}
    by: dict[str, int] = defaultdict(int)
    by[rejected_reason("")] += 1
    assert set(by) == {OTHER}
