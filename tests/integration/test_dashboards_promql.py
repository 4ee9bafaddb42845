"""Every PromQL the project ships, run by a real Prometheus: it parses, and on live data it
returns series (a throwaway `prometheus` on 127.0.0.1 scraping the real exporter)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from exporter.config import config_from_dict
from exporter.dashboards import rendered
from exporter.dashboards.grafana import expand_promql, multi_variables, queries, variable_queries
from exporter.service import ExporterService
from exporter.simulate.generate import advance, generate
from exporter.simulate.writer import create_source_schema, upsert_executions, write
from tests.unit.test_dashboards import all_promql, base_metric, documented_metrics, metric_names

ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "provisioning/prometheus/rules"
PROMETHEUS = shutil.which("prometheus")
DASHBOARDS = {name: json.loads(text) for name, text in rendered().items()}
SCRAPE = timedelta(seconds=1)

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not installed (Debian package prometheus; scripts/bootstrap.sh)",
)

# Panel queries allowed to be empty on a fresh stack, and why.
MAY_BE_EMPTY = {
    # The counter has a series per reason only once a poll has failed.
    ("exporter.json", "Poll errors per minute"): "no poll failed",
    # Likewise per rejection reason; the simulator writes no bad rows.
    ("exporter.json", "Rejected rows per minute"): "no row rejected",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A throwaway Prometheus server on 127.0.0.1 with an empty TSDB in a temporary directory."""

    def __init__(self, scrape_targets: list[str] | None = None, rules: bool = False):
        self.dir = Path(tempfile.mkdtemp(prefix="wfa-prom-"))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config: dict[str, Any] = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [],
        }
        if scrape_targets:
            config["scrape_configs"].append(
                {"job_name": "wfa-exporter", "static_configs": [{"targets": scrape_targets}]}
            )
        if rules:
            config["rule_files"] = [str(p) for p in sorted(RULES_DIR.glob("*.yml"))]
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Prometheus:
        assert PROMETHEUS is not None
        self.log = open(self.dir / "prometheus.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-admin-api",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.http = aiohttp.ClientSession()
        for _ in range(300):
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "prometheus.log").read_text())
            try:
                async with self.http.get(f"{self.url}/-/ready") as r:
                    if r.status == 200:
                        return self
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("prometheus did not become ready")

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def query(self, expr: str) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of an instant query at the current time."""
        async with self.http.post(f"{self.url}/api/v1/query", data={"query": expr}) as r:
            return r.status, await r.json()

    async def series(self, expr: str) -> list[dict[str, Any]]:
        """The result of an instant query that must succeed."""
        status, body = await self.query(expr)
        assert status == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    async def wait_for(self, expr: str, timeout: float = 60) -> None:
        """Wait until `expr` returns something."""
        for _ in range(int(timeout * 5)):
            if await self.series(expr):
                return
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expr}")


def _panel_promql(values: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(dashboard, panel, expanded PromQL) of every Prometheus panel query."""
    out = []
    for name, d in DASHBOARDS.items():
        multi = multi_variables(d)
        for q in queries(name, d):
            if q.kind != "prometheus":
                continue
            expr = expand_promql(
                q.text,
                values=values,
                multi=multi,
                interval=SCRAPE,
                range_=timedelta(minutes=10),
                scrape=SCRAPE,
            )
            assert "$" not in expr.replace('"$1"', ""), f"unexpanded variable in {expr}"
            out.append((name, q.panel, expr))
    return out


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


SAMPLE_VALUES = {
    "workflow": ["wf-1", "wf.2"],
    "step": ["s1"],
    "window": "1d",
    "instance": ["exporter:9464"],
}


@needs_prometheus
async def test_every_promql_expression_parses() -> None:
    exprs = [(f"{d}/{p}", e) for d, p, e in _panel_promql(SAMPLE_VALUES)]
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


@pytest.fixture
async def live_exporter(db_dsn: str) -> AsyncIterator[dict[str, Any]]:
    """The real exporter on simulated data, serving /metrics on 127.0.0.1."""
    from exporter.metrics import MetricsServer

    now = datetime.now(UTC).replace(microsecond=0)
    data = generate(
        executions=2000, days=3, workflows=3, tenants=2, seed=23, now=now - timedelta(hours=2)
    )
    conn = await asyncpg.connect(db_dsn)
    await create_source_schema(conn)
    await write(conn, data)
    svc = ExporterService(config_from_dict({"source": {"dsn": db_dsn}}))
    await svc.open()
    assert await svc.poll_once() is not None
    ms = MetricsServer(svc.cfg.metrics, svc.state, lambda: svc.store)
    assert await ms.refresh() is not None
    await ms.start("127.0.0.1:0")

    async def step_forward() -> None:
        """Let the simulated executions progress an hour and ingest the changes."""
        changed = advance(data, now - timedelta(hours=1), seed=29)
        assert changed
        await upsert_executions(conn, changed)
        assert await svc.poll_once() is not None
        assert await ms.refresh() is not None

    try:
        yield {"target": f"127.0.0.1:{ms.port}", "data": data, "step": step_forward, "ms": ms}
    finally:
        await ms.stop()
        await svc.close()
        await conn.close()


@needs_prometheus
async def test_queries_return_series_from_the_exporter(live_exporter: dict[str, Any]) -> None:
    target = live_exporter["target"]
    data = live_exporter["data"]
    exposition = live_exporter["ms"].exposition().decode()
    exposed = _exposed_names(exposition)
    documented = documented_metrics()
    for where, expr in all_promql():
        for name in metric_names(expr):
            if name.startswith("wfa_"):
                assert name in exposed or base_metric(name, documented) in exposed, (
                    f"{where}: {name} is not in the exporter's exposition"
                )
    async with Prometheus(scrape_targets=[target], rules=True) as prom:
        await prom.wait_for('count_over_time(up{job="wfa-exporter"}[1m]) >= 3')
        assert await prom.series('up{job="wfa-exporter"} == 1')
        await live_exporter["step"]()
        await asyncio.sleep(5)
        values = {
            "workflow": [w.id for w in data.workflows],
            "step": sorted({s.id for w in data.workflows for s in w.steps}),
            "window": "1d",
            "instance": [target],
        }
        empty, answered = [], 0
        for name, panel, expr in _panel_promql(values):
            if await prom.series(expr):
                answered += 1
            elif (name, panel) not in MAY_BE_EMPTY:
                empty.append(f"{name}/{panel}: {expr}")
        assert not empty, "queries without series:\n" + "\n\n".join(empty)
        assert answered >= len(_panel_promql(values)) - len(MAY_BE_EMPTY)
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
        rules = await prom.http.get(f"{prom.url}/api/v1/rules")
        groups = (await rules.json())["data"]["groups"]
        for g in groups:
            for r in g["rules"]:
                assert r["health"] == "ok", (r["name"], r.get("lastError"))
