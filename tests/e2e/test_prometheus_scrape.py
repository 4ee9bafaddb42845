"""A real Prometheus scrapes the exporter; PromQL over its HTTP API returns the truth."""

from __future__ import annotations

import asyncio
import math
import shutil
import socket
import subprocess
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from exporter.histogram import quantile
from exporter.metrics import MetricsServer
from tests.integration.test_metrics import NOW, fill, make_config, open_service
from tests.kit.truth import Truth

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A throwaway Prometheus server scraping one target every second."""

    def __init__(self, workdir: Path, target: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "scrape_configs:\n"
            f"  - job_name: wfa\n    static_configs: [{{targets: ['{target}']}}]\n"
        )
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                "prometheus",
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    async def query(self, http: aiohttp.ClientSession, expr: str) -> list[dict]:
        """An instant query's result vector."""
        async with http.get(f"{self.url}/api/v1/query", params={"query": expr}) as r:
            body = await r.json()
        assert body["status"] == "success", body
        return body["data"]["result"]

    async def wait(self, http: aiohttp.ClientSession, expr: str, timeout: float = 60) -> list:
        """Poll until `expr` returns a non-empty vector."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            assert self.proc.poll() is None, "prometheus exited"
            try:
                result = await self.query(http, expr)
                if result:
                    return result
            except aiohttp.ClientError:
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"no result for {expr}")
            await asyncio.sleep(0.3)

    def stop(self) -> None:
        """Terminate the server (by its pid) and wait for it."""
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


@pytest.fixture
async def scraped(db_dsn: str, tmp_path: Path) -> AsyncIterator[tuple]:
    """Simulated data ingested, served on /metrics, scraped by a real Prometheus."""
    data = await fill(db_dsn, executions=2000, workflows=3)
    svc = await open_service(make_config(db_dsn))
    ms = MetricsServer(svc.cfg.metrics, svc.state, lambda: svc.store)
    await ms.refresh(NOW)
    await ms.start("127.0.0.1:0")
    prom = Prometheus(tmp_path, f"127.0.0.1:{ms.port}")
    try:
        async with aiohttp.ClientSession() as http:
            yield data, prom, http
    finally:
        prom.stop()
        await ms.stop()
        await svc.close()


def _by(result: list[dict], *labels: str) -> dict[tuple, float]:
    return {tuple(r["metric"].get(k) for k in labels): float(r["value"][1]) for r in result}


async def test_promql_funnel_and_success_ratios(scraped):
    data, prom, http = scraped
    up = await prom.wait(http, 'up{job="wfa"} == 1')
    assert up
    await prom.wait(http, "wfa_workflow_info")
    truth = Truth(data)

    # step reach ratio of the 7-day cohort, joined with the step names
    result = await prom.query(
        http,
        'wfa_funnel_reached{window="7d"}'
        ' / on(workflow, tenant, window) group_left wfa_funnel_enrolled{window="7d"}'
        " * on(workflow, tenant, step) group_left(name, index) wfa_step_info",
    )
    got = _by(result, "workflow", "step", "name", "index")
    want = {}
    for wf in data.workflows:
        f = truth.cohort_funnel(wf.id, NOW - timedelta(days=7), NOW)
        for k, (step, s) in enumerate(zip(wf.steps, f["steps"], strict=True)):
            want[(wf.id, step.id, step.name, str(k))] = s["reached"] / f["enrolled"]
    assert got.keys() == want.keys()
    assert all(math.isclose(got[k], want[k]) for k in want)

    # drop-off ratio per step and conversion ratio per workflow, over each window
    for window, span in (("1d", timedelta(days=1)), ("7d", timedelta(days=7))):
        drop = _by(
            await prom.query(http, f'wfa_funnel_dropoff_ratio{{window="{window}"}}'),
            "workflow",
            "step",
        )
        conv = _by(
            await prom.query(
                http,
                f'wfa_funnel_conversion_ratio{{window="{window}"}}'
                " * on(workflow, tenant) group_left(name) wfa_workflow_info",
            ),
            "workflow",
            "name",
        )
        for wf in data.workflows:
            f = truth.cohort_funnel(wf.id, NOW - span, NOW)
            assert math.isclose(conv[(wf.id, wf.name)], f["converted"] / f["enrolled"])
            for s in f["steps"]:
                if s["reached"]:
                    ratio = drop[(wf.id, s["step_id"])]
                    assert math.isclose(ratio, s["dropped"] / s["reached"]), (window, s)

    # success ratio of step attempts per workflow, from the persisted counters
    result = await prom.query(
        http,
        'sum by (workflow) (wfa_step_outcomes_total{outcome="succeeded"})'
        ' / sum by (workflow) (wfa_step_outcomes_total{outcome=~"succeeded|failed"})',
    )
    got = _by(result, "workflow")
    for wf in data.workflows:
        steps = truth.totals(wf.id)["steps"].values()
        ok = sum(s["succeeded"] for s in steps)
        bad = sum(s["failed"] for s in steps)
        assert math.isclose(got[(wf.id,)], ok / (ok + bad)), wf.id

    # histogram_quantile over the served buckets equals the same interpolation on the truth
    result = await prom.query(
        http,
        "histogram_quantile(0.9,"
        " sum by (workflow, le) (wfa_workflow_time_to_complete_seconds_bucket))",
    )
    got = _by(result, "workflow")
    for wf in data.workflows:
        h = truth.totals(wf.id)["time_to_complete"]
        if h["count"]:
            assert math.isclose(got[(wf.id,)], quantile(0.9, h["buckets"]), rel_tol=1e-9)

    # the self-metrics arrive too
    lag = await prom.query(http, "wfa_exporter_ingest_lag_seconds")
    assert lag and float(lag[0]["value"][1]) >= 0
