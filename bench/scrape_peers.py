"""Peers of the scrape benchmark: SQL exporters running the funnel GROUP BY over the raw table.

Both peers get the same three queries over the source executions table: the cohort funnel
(reached per step) and the cohort totals for the trailing windows 1h, 1d and 7d, and the
all-time totals per workflow. That is less than /metrics serves (no histograms, no step
outcomes), so the comparison favours the peers.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import yaml

WINDOWS_CTE = (
    "WITH w(label, since) AS (VALUES ('1h', now() - interval '1 hour'),"
    " ('1d', now() - interval '1 day'), ('7d', now() - interval '7 days'))"
)
FUNNEL_STEPS_SQL = (
    f"{WINDOWS_CTE} SELECT e.workflow_id::text AS workflow, w.label AS window,"
    " a.step_id AS step, count(DISTINCT e.id)::float AS reached"
    " FROM {table} e JOIN w ON e.enrolled_at >= w.since"
    " CROSS JOIN LATERAL jsonb_to_recordset(e.step_progress) AS a(step_id text)"
    " GROUP BY 1, 2, 3"
)
FUNNEL_TOTALS_SQL = (
    f"{WINDOWS_CTE} SELECT e.workflow_id::text AS workflow, w.label AS window,"
    " count(*)::float AS enrolled, count(e.completed_at)::float AS completed,"
    " count(e.converted_at)::float AS converted"
    " FROM {table} e JOIN w ON e.enrolled_at >= w.since GROUP BY 1, 2"
)
WORKFLOW_TOTALS_SQL = (
    "SELECT workflow_id::text AS workflow, count(*)::float AS enrollments,"
    " count(completed_at)::float AS completions, count(converted_at)::float AS conversions,"
    " count(*) FILTER (WHERE status = 'failed')::float AS failures,"
    " count(*) FILTER (WHERE status = 'active')::float AS active"
    " FROM {table} GROUP BY 1"
)
QUERIES = {
    "funnel_steps": (FUNNEL_STEPS_SQL, ("workflow", "window", "step"), ("reached",)),
    "funnel_totals": (
        FUNNEL_TOTALS_SQL,
        ("workflow", "window"),
        ("enrolled", "completed", "converted"),
    ),
    "workflow_totals": (
        WORKFLOW_TOTALS_SQL,
        ("workflow",),
        ("enrollments", "completions", "conversions", "failures", "active"),
    ),
}
PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;"
    "q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)
QUERY_EXPORTER_VENV = Path(
    os.environ.get("WFA_QUERY_EXPORTER_VENV", "/opt/wfa-peers/query-exporter")
)


@dataclass
class Scrape:
    """One scrape: wall seconds, body bytes as received, series in the exposition."""

    seconds: float
    wire_bytes: int
    series: int


class Scraper:
    """A keep-alive HTTP client that scrapes like Prometheus (Accept header, gzip)."""

    def __init__(self, port: int, path: str = "/metrics", timeout: float = 300):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.path = path

    def scrape(self) -> Scrape:
        """GET the metrics page; time includes reading and un-gzipping the body."""
        started = time.perf_counter()
        self.conn.request(
            "GET", self.path, headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"}
        )
        r = self.conn.getresponse()
        raw = r.read()
        if r.status != 200:
            raise RuntimeError(f"scrape answered {r.status}: {raw[:300]!r}")
        body = zlib.decompress(raw, 47) if r.getheader("Content-Encoding") == "gzip" else raw
        took = time.perf_counter() - started
        series = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
        return Scrape(took, len(raw), series)

    def close(self) -> None:
        """Close the connection."""
        self.conn.close()


def wait_http(port: int, needle: bytes, timeout: float = 600, path: str = "/metrics") -> None:
    """Wait until GET `path` answers 200 with `needle` in the body."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            c.request("GET", path)
            r = c.getresponse()
            body = r.read()
            c.close()
            if r.status == 200 and needle in body:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{needle!r} never showed on port {port}")
        time.sleep(0.25)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class Peer:
    """A running peer exporter process."""

    name: str
    port: int
    proc: subprocess.Popen

    def stop(self) -> None:
        """Stop the process (by its pid)."""
        _stop(self.proc)


def _apt_install(package: str) -> str | None:
    """Install a Debian package when running as root; the path of its binary, if any."""
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", package]
    if subprocess.run(cmd, env=env, capture_output=True, check=False).returncode:
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, check=False)
        subprocess.run(cmd, env=env, capture_output=True, check=False)
    # The package starts its own service on :9187; the benchmark runs its own instance.
    subprocess.run(["service", package, "stop"], capture_output=True, check=False)
    return shutil.which(package)


class PostgresExporter(Peer):
    """Debian's prometheus-postgres-exporter with a queries file (queries run on every scrape)."""

    name = "prometheus-postgres-exporter"

    def __init__(self, dsn: str, workdir: Path, port: int, table: str = "workflow_executions"):
        binary = shutil.which("prometheus-postgres-exporter") or _apt_install(
            "prometheus-postgres-exporter"
        )
        if binary is None:
            raise FileNotFoundError("apt-get install prometheus-postgres-exporter")
        queries = {
            f"wfa_peer_{name}": {
                "query": sql.format(table=table),
                "metrics": [{c: {"usage": "LABEL", "description": c}} for c in labels]
                + [{c: {"usage": "GAUGE", "description": c}} for c in values],
            }
            for name, (sql, labels, values) in QUERIES.items()
        }
        path = workdir / "postgres_exporter_queries.yaml"
        path.write_text(yaml.safe_dump(queries, sort_keys=False))
        self.port = port
        env = {**os.environ, "DATA_SOURCE_NAME": f"{dsn}?sslmode=disable"}
        self.proc = subprocess.Popen(
            [
                binary,
                f"--web.listen-address=127.0.0.1:{port}",
                f"--extend.query-path={path}",
                "--disable-default-metrics",
                "--disable-settings-metrics",
                "--no-collector.database",
                "--no-collector.bgwriter",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "postgres_exporter.log").open("wb"),
        )


class QueryExporter(Peer):
    """query-exporter (PyPI, own virtualenv): queries on an interval, scrapes read a cache."""

    name = "query-exporter"

    def __init__(
        self,
        dsn: str,
        workdir: Path,
        port: int,
        interval: int = 15,
        table: str = "workflow_executions",
    ):
        binary = ensure_query_exporter()
        metrics, queries = {}, {}
        for name, (sql, labels, values) in QUERIES.items():
            cols = []
            for v in values:
                metric = f"wfa_peer_{name}_{v}"
                metrics[metric] = {"type": "gauge", "description": v, "labels": list(labels)}
                cols.append(metric)
            select = sql.format(table=table)
            for v, metric in zip(values, cols, strict=True):
                select = select.replace(f" AS {v}", f" AS {metric}", 1)
            queries[name] = {
                "databases": ["wf"],
                "metrics": cols,
                "interval": f"{interval}s",
                "timeout": 600,
                "sql": select,
            }
        sa_dsn = dsn.replace("postgresql://", "postgresql+psycopg2://", 1)
        config = {"databases": {"wf": {"dsn": sa_dsn}}, "metrics": metrics, "queries": queries}
        path = workdir / "query_exporter.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        self.port = port
        self.proc = subprocess.Popen(
            [binary, "--config", str(path), "-H", "127.0.0.1", "-p", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=(workdir / "query_exporter.log").open("wb"),
        )


def ensure_query_exporter() -> str:
    """The query-exporter binary of its own virtualenv, created with pip when missing."""
    binary = QUERY_EXPORTER_VENV / "bin" / "query-exporter"
    if not binary.exists():
        subprocess.run([sys.executable, "-m", "venv", str(QUERY_EXPORTER_VENV)], check=True)
        pip = str(QUERY_EXPORTER_VENV / "bin" / "pip")
        subprocess.run([pip, "install", "-q", "query-exporter", "psycopg2-binary"], check=True)
    return str(binary)
