"""/metrics against the simulator's truth: exposition, restarts, replicas, guard, store outages."""

from __future__ import annotations

import asyncio
import gzip
import math
import os
import re
import signal
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporter.config import config_from_dict
from exporter.histogram import cumulative
from exporter.metrics import (
    MetricsServer,
    Snapshot,
    SnapshotCollector,
    attach_metrics,
    render_snapshot,
    window_label,
)
from exporter.service import ExporterService
from exporter.simulate.generate import advance, generate
from exporter.simulate.model import SimData
from exporter.simulate.writer import create_source_schema, upsert_executions, write
from tests.integration.faults import Proxy
from tests.kit.truth import Truth

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
WINDOWS = (timedelta(hours=1), timedelta(hours=24), timedelta(days=7))
Samples = dict[tuple[str, frozenset], float]


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(body: bytes | str) -> Samples:
    """Every sample of a text exposition keyed by (name, labels); promtool checks the syntax."""
    text = body.decode() if isinstance(body, bytes) else body
    out: Samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, line
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def bucket_index(samples: Samples) -> dict[tuple[str, frozenset], dict[float, float]]:
    """Histogram buckets grouped by series: {(name, labels without le): {le: count}}."""
    out: dict[tuple[str, frozenset], dict[float, float]] = {}
    for (name, labels), v in samples.items():
        if name.endswith("_bucket"):
            le = dict(labels)["le"]
            rest = frozenset(kv for kv in labels if kv[0] != "le")
            out.setdefault((name, rest), {})[float(le)] = v
    return out


def get(samples: Samples, metric: str, default: float | None = None, /, **labels: str) -> float:
    """One sample's value; `default` when absent (KeyError when no default)."""
    key = (metric, frozenset(labels.items()))
    if default is None:
        return samples[key]
    return samples.get(key, default)


def promtool_check(body: bytes) -> None:
    """`promtool check metrics` accepts the exposition without a single remark."""
    p = subprocess.run(
        ["promtool", "check", "metrics"], input=body, capture_output=True, timeout=60
    )
    assert p.returncode == 0 and not p.stdout.strip(), (p.stdout + p.stderr).decode()[:2000]


async def fill(dsn: str, **kw) -> SimData:
    """Generate simulated data and write it to the source tables of `dsn`."""
    params = {"executions": 3000, "days": 10, "workflows": 4, "tenants": 2, "seed": 3, "now": NOW}
    data = generate(**{**params, **kw})
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        await write(conn, data)
    finally:
        await conn.close()
    return data


def make_config(dsn: str, backend: str = "postgres", store_dsn: str | None = None, **metrics):
    """Source and store in the test database; metrics settings from keywords."""
    return config_from_dict(
        {
            "source": {"dsn": dsn},
            "store": {"backend": backend, "dsn": store_dsn or dsn, "connect_retries": 0},
            "metrics": {"listen": "127.0.0.1:9464", **metrics},
        }
    )


async def open_service(cfg) -> ExporterService:
    """An opened exporter service that has polled once."""
    svc = ExporterService(cfg)
    await svc.open()
    await svc.poll_once()
    return svc


async def snapshot_samples(svc: ExporterService, now: datetime) -> tuple[MetricsServer, bytes]:
    """A metrics server on `svc` with a fresh snapshot, and its exposition."""
    ms = MetricsServer(svc.cfg.metrics, svc.state, lambda: svc.store)
    assert await ms.refresh(now) is not None, ms.state.snapshot_errors
    return ms, ms.exposition()


def counters_of(samples: Samples) -> Samples:
    """Counter and histogram samples of the workflow families (what must survive restarts)."""
    return {
        k: v
        for k, v in samples.items()
        if k[0].startswith(("wfa_workflow_", "wfa_step_"))
        and k[0].endswith(("_total", "_bucket", "_sum", "_count"))
    }


def check_histogram(samples: Samples, index, name: str, labels: dict, buckets: dict, sum_ms: int):
    """A histogram's cumulative buckets, _count and _sum equal the truth."""
    count = sum(buckets.values())
    assert get(samples, f"{name}_count", **labels) == count, (name, labels)
    assert math.isclose(get(samples, f"{name}_sum", **labels), sum_ms / 1000), (name, labels)
    served = index[(f"{name}_bucket", frozenset(labels.items()))]
    assert served == dict(cumulative(buckets)), (name, labels)


def check_truth(samples: Samples, data: SimData, now: datetime, windows=WINDOWS) -> None:
    """Every workflow counter, histogram and gauge equals the simulator's truth."""
    truth = Truth(data)
    index = bucket_index(samples)
    for wf in data.workflows:
        t = truth.totals(wf.id)
        base = {"workflow": wf.id, "tenant": wf.tenant_id}
        for field in ("enrollments", "completions", "conversions", "failures"):
            assert get(samples, f"wfa_workflow_{field}_total", **base) == t[field], (wf.id, field)
        for reason, n in t["exits_by_reason"].items():
            assert get(samples, "wfa_workflow_exits_total", reason=reason, **base) == n
        exits = sum(
            v
            for (name, labels), v in samples.items()
            if name == "wfa_workflow_exits_total" and ("workflow", wf.id) in labels
        )
        assert exits == t["exits"]
        actions = {s.id: s.action_type for s in wf.steps}
        for step_id, row in t["steps"].items():
            labels = {**base, "step": step_id, "action_type": actions[step_id]}
            assert get(samples, "wfa_step_runs_total", **labels) == row["attempts"], labels
            for outcome in ("succeeded", "failed", "skipped"):
                got = get(samples, "wfa_step_outcomes_total", 0.0, outcome=outcome, **labels)
                assert got == row[outcome], (labels, outcome)
            if row["duration_count"]:
                check_histogram(
                    samples,
                    index,
                    "wfa_step_duration_seconds",
                    labels,
                    row["duration_buckets"],
                    row["duration_ms_sum"],
                )
        for name in ("time_to_complete", "time_to_convert"):
            h = t[name]
            if h["count"]:
                check_histogram(
                    samples, index, f"wfa_workflow_{name}_seconds", base, h["buckets"], h["sum_ms"]
                )
        active = [e for e in truth.executions(wf.id) if e.status == "active"]
        assert get(samples, "wfa_workflow_active_executions", **base) == len(active)
        by_step = Counter(e.current_step_id for e in active)
        for s in wf.steps:
            got = get(samples, "wfa_step_active_executions", step=s.id, **base)
            assert got == by_step[s.id], (wf.id, s.id)
        for window in windows:
            w = {**base, "window": window_label(window)}
            want = truth.cohort_funnel(wf.id, now - window, now)
            assert get(samples, "wfa_funnel_enrolled", **w) == want["enrolled"], w
            ratios = {"conversion": want["converted"], "completion": want["completed"]}
            for kind, num in ratios.items():
                got = get(samples, f"wfa_funnel_{kind}_ratio", -1.0, **w)
                assert got == (num / want["enrolled"] if want["enrolled"] else -1.0), (w, kind)
            for s in want["steps"]:
                sw = {**w, "step": s["step_id"]}
                for key in ("reached", "in_progress", "dropped"):
                    assert get(samples, f"wfa_funnel_{key}", **sw) == s[key], (sw, key)
                ratio = get(samples, "wfa_funnel_dropoff_ratio", -1.0, **sw)
                assert ratio == (s["dropped"] / s["reached"] if s["reached"] else -1.0), sw
        assert get(samples, "wfa_workflow_info", name=wf.name, **base) == 1
        for k, s in enumerate(wf.steps):
            info = {"step": s.id, "index": str(k), "name": s.name, "action_type": s.action_type}
            assert get(samples, "wfa_step_info", **base, **info) == 1


async def test_exposition_equals_truth_and_passes_promtool(store_dsn):
    backend, dsn = store_dsn
    data = await fill(dsn)
    svc = await open_service(make_config(dsn, backend))
    try:
        ms, body = await snapshot_samples(svc, NOW)
        promtool_check(body)
        samples = parse(body)
        check_truth(samples, data, NOW)
        assert ms.state.snapshot is not None
        assert render_snapshot(ms.state.snapshot) == reference_render(ms.state.snapshot)
        assert get(samples, "wfa_exporter_snapshot_series") == ms.state.snapshot.series
        assert get(samples, "wfa_exporter_snapshot_series_dropped") == 0
        assert get(samples, "wfa_exporter_store_up") == 1
        assert get(samples, "wfa_exporter_leader") == 1
        assert get(samples, "wfa_exporter_rows_ingested_total", table="executions") == 3000
        newest = max(e.updated_at for e in data.executions).timestamp()
        lag = get(samples, "wfa_exporter_ingest_lag_seconds")
        assert abs(lag - (datetime.now(UTC).timestamp() - newest)) < 5
        assert get(samples, "wfa_exporter_last_successful_poll_timestamp_seconds") > 0
        # every workflow series belongs to the counted snapshot
        assert sum(_series_by_workflow(samples).values()) == ms.state.snapshot.series
    finally:
        await svc.close()


def reference_render(snap: Snapshot) -> bytes:
    """prometheus_client's own rendering of the snapshot collector."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(SnapshotCollector(lambda: snap))
    return generate_latest(reg)


def test_render_is_generate_latest_byte_for_byte():
    buckets = cumulative({0.05: 3, 604800.0: 2_000_000, math.inf: 1})
    odd = 'a "quoted" back\\slash\nnew line, {braces}=, ünïcode'
    snap = Snapshot(
        built_at=0.0,
        duration=0.25,
        tenant_label=True,
        samples={
            "wfa_workflow_enrollments_total": [(("wf-1", "t-1"), 12_345_678), (("wf-2", odd), 0)],
            "wfa_workflow_info": [(("wf-1", "t-1", odd), 1)],
            "wfa_funnel_dropoff_ratio": [(("wf-1", "t-1", "s-1", "1d"), 1 / 3)],
            "wfa_step_duration_seconds": [(("wf-1", "t-1", "s-1", "webhook"), (buckets, 1e7 / 3))],
            "wfa_workflow_time_to_complete_seconds": [(("wf-1", "t-1"), (buckets, 0.001))],
        },
        rejected={"invalid_step_progress": 2, "": 1},
        series=40,
        dropped_series=7,
        dropped_workflows=1,
        workflows=1,
        newest_ingested=None,
    )
    for with_tenant in (True, False):
        if not with_tenant:
            samples = {
                k: [((labels[0], *labels[2:]), v) for labels, v in rows]
                for k, rows in snap.samples.items()
            }
            snap = replace(snap, tenant_label=False, samples=samples)
        assert render_snapshot(snap) == reference_render(snap)
    promtool_check(render_snapshot(snap))


async def test_served_over_http_with_gzip_and_healthz(db_dsn):
    await fill(db_dsn, executions=600, workflows=3)
    svc = await open_service(make_config(db_dsn))
    ms = MetricsServer(svc.cfg.metrics, svc.state, lambda: svc.store)
    await ms.start("127.0.0.1:0")
    try:
        url = f"http://127.0.0.1:{ms.port}"
        async with aiohttp.ClientSession(auto_decompress=False) as http:
            plain_headers = {"Accept-Encoding": "identity"}
            async with http.get(f"{url}/metrics", headers=plain_headers) as r:
                before = await r.read()
            assert b"wfa_workflow_enrollments_total" not in before
            assert b"wfa_exporter_snapshot_age_seconds" in before
            await ms.refresh()
            async with http.get(f"{url}/metrics", headers=plain_headers) as r:
                assert r.status == 200
                assert r.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
                plain = await r.read()
            async with http.get(f"{url}/metrics", headers={"Accept-Encoding": "gzip"}) as r:
                assert r.headers["Content-Encoding"] == "gzip"
                zipped = gzip.decompress(await r.read())
            async with http.get(f"{url}/healthz") as r:
                health = await r.json()
        promtool_check(plain)
        a, b = parse(plain), parse(zipped)
        assert counters_of(a) == counters_of(b) and counters_of(a)
        assert health["snapshot"] is True and health["store_up"] is True
        # the served text holds exactly what the private registry yields
        full = parse(generate_latest(ms.registry))
        assert set(full) == set(a)
    finally:
        await ms.stop()
        await svc.close()


async def test_restart_and_replicas_keep_every_counter(db_dsn):
    data = await fill(db_dsn, executions=2000)
    cfg = make_config(db_dsn)
    svc = await open_service(cfg)
    _, body = await snapshot_samples(svc, NOW)
    await svc.close()
    first = counters_of(parse(body))
    assert len(first) > 500

    # restart: a new process, nothing new in the source: every counter keeps its value
    svc = await open_service(cfg)
    _, body = await snapshot_samples(svc, NOW)
    await svc.close()
    assert counters_of(parse(body)) == first

    # the source moves on; the next exporter process counts only what changed
    new_now = NOW + timedelta(hours=3)
    changed = advance(data, new_now, seed=5)
    assert changed
    conn = await asyncpg.connect(db_dsn)
    await upsert_executions(conn, changed)
    await conn.close()
    svc = await open_service(cfg)
    await svc.poll_once()  # a second poll re-reads the overlap window: nothing counted twice
    _, body = await snapshot_samples(svc, new_now)
    after = parse(body)
    check_truth(after, data, new_now)
    assert all(after[k] >= v for k, v in first.items()), "counters never decrease"
    # a standby replica (no poll lock) serves no workflow series (the leader serves them,
    # Prometheus would otherwise see them twice), only its self-metrics with leader 0
    standby = ExporterService(cfg)
    await standby.open()
    try:
        assert await standby.poll_once() is None
        ms = MetricsServer(standby.cfg.metrics, standby.state, lambda: standby.store)
        assert await ms.refresh(new_now) is None, "a standby builds no snapshot"
        replica = parse(ms.exposition())
        assert counters_of(replica) == {}
        store_families = ("wfa_workflow", "wfa_step", "wfa_funnel")
        assert not [k for k in replica if k[0].startswith(store_families)]
        assert get(replica, "wfa_exporter_leader") == 0
        assert "wfa_exporter_rejected_rows_total" not in {k[0] for k in replica}
    finally:
        await standby.close()
        await svc.close()


def _workflows_in(samples: Samples) -> set[str]:
    return {v for _, labels in samples for k, v in labels if k == "workflow"}


def _series_by_workflow(samples: Samples) -> Counter:
    return Counter(v for _, labels in samples for k, v in labels if k == "workflow")


async def test_cardinality_guard_many_workflows(db_dsn):
    data = await fill(db_dsn, executions=3000, days=10, workflows=120, tenants=5)
    svc = await open_service(make_config(db_dsn))
    try:
        _, body = await snapshot_samples(svc, NOW)
        everything = parse(body)
        per_wf = _series_by_workflow(everything)
        assert len(per_wf) == 120
        truth = Truth(data)
        volume = {
            wf.id: (
                truth.cohort_funnel(wf.id, NOW - max(WINDOWS), NOW)["enrolled"],
                len(truth.executions(wf.id)),
            )
            for wf in data.workflows
        }
        ranked = sorted(per_wf, key=lambda w: (-volume[w][0], -volume[w][1], w))
        keep = 70
        limit = sum(per_wf[w] for w in ranked[:keep]) + per_wf[ranked[keep]] - 1
        total = sum(per_wf.values())

        cfg = make_config(db_dsn, max_series=limit)
        guarded = MetricsServer(cfg.metrics, svc.state, lambda: svc.store)
        for _ in range(2):
            snap = await guarded.refresh(NOW)
            assert snap is not None
        samples = parse(guarded.exposition())
        promtool_check(guarded.exposition())
        assert _workflows_in(samples) == set(ranked[:keep]), "the lowest-volume ones are left out"
        served = sum(_series_by_workflow(samples).values())
        assert served == snap.series <= limit
        assert get(samples, "wfa_exporter_snapshot_series_dropped") == total - served
        assert get(samples, "wfa_exporter_series_dropped_total") == 2 * (total - served)
        assert get(samples, "wfa_exporter_snapshot_series") == served
        check_truth(
            samples,
            SimData(
                workflows=[w for w in data.workflows if w.id in set(ranked[:keep])],
                executions=[e for e in data.executions if e.workflow_id in set(ranked[:keep])],
                now=data.now,
            ),
            NOW,
        )

        cfg = make_config(db_dsn, include=["wf-1*", "wf-2?"], exclude=["wf-12"], tenant_label=False)
        picked = MetricsServer(cfg.metrics, svc.state, lambda: svc.store)
        await picked.refresh(NOW)
        body = picked.exposition()
        promtool_check(body)
        samples = parse(body)
        want = {
            w
            for w in per_wf
            if (w.startswith("wf-1") or (len(w) == 5 and w.startswith("wf-2"))) and w != "wf-12"
        }
        assert _workflows_in(samples) == want
        assert not any(k == "tenant" for _, labels in samples for k, _ in labels)
        assert get(samples, "wfa_exporter_snapshot_series_dropped") == 0
    finally:
        await svc.close()


async def test_tenant_filter_keeps_excluded_tenants_out(db_dsn):
    """metrics.tenants: an excluded tenant has no series at all, with or without the label."""
    data = await fill(db_dsn, executions=1500, days=5, workflows=6, tenants=3)
    svc = await open_service(make_config(db_dsn))
    try:
        tenant_of = {w.id: w.tenant_id for w in data.workflows}
        assert set(tenant_of.values()) == {"tenant-1", "tenant-2", "tenant-3"}
        for tenants, label, kept in (
            ({"exclude": ["tenant-2"]}, True, {"tenant-1", "tenant-3"}),
            ({"include": ["tenant-*"], "exclude": ["tenant-[23]"]}, False, {"tenant-1"}),
            ({"include": ["tenant-3", "tenant-2"], "exclude": ["tenant-2"]}, True, {"tenant-3"}),
        ):
            cfg = make_config(db_dsn, tenants=tenants, tenant_label=label)
            ms = MetricsServer(cfg.metrics, svc.state, lambda: svc.store)
            assert await ms.refresh(NOW) is not None
            body = ms.exposition()
            promtool_check(body)
            samples = parse(body)
            served = _workflows_in(samples)
            assert served == {w for w, t in tenant_of.items() if t in kept}, tenants
            seen_tenants = {v for _, labels in samples for k, v in labels if k == "tenant"}
            assert seen_tenants == (kept if label else set())
            for gone in {"tenant-1", "tenant-2", "tenant-3"} - kept:
                assert gone.encode() not in body, f"{gone} leaks into /metrics"
                for wid in (w for w, t in tenant_of.items() if t == gone):
                    assert f'workflow="{wid}"'.encode() not in body
            if label:
                kept_data = SimData(
                    workflows=[w for w in data.workflows if w.tenant_id in kept],
                    executions=[e for e in data.executions if e.tenant_id in kept],
                    now=data.now,
                )
                check_truth(samples, kept_data, NOW)
    finally:
        await svc.close()


async def test_store_down_ends_leadership_and_tells_the_truth(pg, db_dsn):
    data = await fill(db_dsn, executions=800, workflows=3)
    dsn_port = int(db_dsn.split("@", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])
    proxy = Proxy(dsn_port)
    await proxy.start()
    proxied = db_dsn.replace(f":{dsn_port}/", f":{proxy.port}/")
    cfg = make_config(db_dsn, store_dsn=proxied)
    svc = await open_service(cfg)
    ms = MetricsServer(cfg.metrics, svc.state, lambda: svc.store)
    svc.listeners.append(ms.on_poll)
    try:
        assert await ms.refresh(NOW) is not None
        good = parse(ms.exposition())
        check_truth(good, data, NOW)
        age0 = get(good, "wfa_exporter_snapshot_age_seconds")

        await proxy.stop()
        with pytest.raises(Exception):  # noqa: B017
            await svc.poll_once()
        assert await ms.refresh() is None
        await asyncio.sleep(1.1)
        down = parse(ms.exposition())
        promtool_check(ms.exposition())
        # the lock session lives on the store: its loss ends leadership, and a replica that
        # cannot prove it leads serves no workflow series (two of them would double the sums)
        assert counters_of(good) and counters_of(down) == {}, "no workflow series without lead"
        assert get(down, "wfa_exporter_leader") == 0
        assert get(down, "wfa_exporter_store_up") == 0
        # a standby attempts no snapshot, so none fails: the poll's error is the one counted
        assert get(down, "wfa_exporter_snapshot_errors_total", reason="unreachable") == 0
        assert get(down, "wfa_exporter_poll_errors_total", reason="unreachable") == 1
        assert get(down, "wfa_exporter_snapshot_age_seconds") >= age0 + 1

        await proxy.start()
        await svc.poll_once()
        assert await ms.refresh(NOW) is not None
        back = parse(ms.exposition())
        assert get(back, "wfa_exporter_store_up") == 1
        assert get(back, "wfa_exporter_leader") == 1
        assert get(back, "wfa_exporter_snapshot_age_seconds") < 1
        assert counters_of(back) == counters_of(good), "the same persisted values continue"
    finally:
        await svc.close()
        if proxy.server is not None and proxy.server.is_serving():
            await proxy.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _wait_for(url: str, needle: bytes, timeout: float = 30) -> bytes:
    deadline = asyncio.get_running_loop().time() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(url) as r:
                    body = await r.read()
                    if needle in body:
                        return body
            except aiohttp.ClientError:
                pass
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"{needle!r} never appeared at {url}")
            await asyncio.sleep(0.2)


async def test_wfa_exporter_command_serves_metrics(db_dsn, tmp_path: Path):
    data = await fill(db_dsn, executions=500, workflows=2)
    port = _free_port()
    cfg = tmp_path / "wfa.yaml"
    cfg.write_text(
        f"source: {{dsn: '{db_dsn}'}}\n"
        "exporter: {poll_interval: 1s}\n"
        f"metrics: {{listen: '127.0.0.1:{port}', snapshot_interval: 1s}}\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "exporter", "--config", str(cfg)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        truth = Truth(data)
        want = [truth.totals(wf.id)["enrollments"] for wf in data.workflows]
        got: list[float] = []
        polls = 0.0
        for _ in range(100):
            # A snapshot may be taken between two ingest batches, or after the last batch
            # committed but before the cycle (which ends with the rollup refresh) is counted:
            # wait for both.
            body = await _wait_for(f"http://127.0.0.1:{port}/metrics", b"wfa_workflow_info{")
            samples = parse(body)
            got = [
                get(samples, "wfa_workflow_enrollments_total", workflow=wf.id, tenant=wf.tenant_id)
                for wf in data.workflows
            ]
            polls = get(samples, "wfa_exporter_poll_duration_seconds_count")
            if got == want and polls >= 1:
                break
            await asyncio.sleep(0.2)
        assert got == want
        assert polls >= 1
        await _wait_for(f"http://127.0.0.1:{port}/healthz", b'"store_up": true')
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out.decode()[-2000:]


async def test_attach_metrics_schedules_snapshots(db_dsn):
    from exporter.runtime import Jobs

    await fill(db_dsn, executions=300, workflows=2)
    cfg = make_config(db_dsn, snapshot_interval="1s")
    svc = ExporterService(cfg)
    await svc.open()
    scheduler = Jobs()
    svc.start(scheduler)
    ms = attach_metrics(svc, scheduler, cfg)
    scheduler.start()
    try:
        for _ in range(100):
            snap = ms.state.snapshot
            if snap is not None and snap.samples["wfa_workflow_enrollments_total"]:
                break
            await asyncio.sleep(0.1)
        first = ms.state.snapshot
        assert first is not None and ms.state.polls.counts != [0] * len(ms.state.polls.counts)
        await asyncio.sleep(1.5)
        assert ms.state.snapshot is not first, "the job keeps replacing the snapshot"
    finally:
        scheduler.shutdown(wait=False)
        await svc.close()
