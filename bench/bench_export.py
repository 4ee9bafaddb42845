"""Export throughput and memory through a real `wfa api`, beside PostgreSQL COPY; PDF report time.

`executions` rows of one workflow are written straight into the store (generate_series: the
export reads only wfa.executions); a small simulated workload, ingested as usual, gives the
PDF report real numbers. The API runs in its own process, whose peak RSS is read from
/proc while the export streams.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg

from bench.common import Figure, cluster, markdown, peak_rss_mb
from exporter.api.auth import token_digest
from exporter.config import config_from_dict
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.writer import create_source_schema, write
from exporter.store.postgres import PostgresBackend

TOKEN = "wfa_bench_export_token"
WORKFLOW = "wf-bulk"
P = "/api/v1"
_INSERT = """
INSERT INTO wfa.executions (execution_id, enrolled_at, tenant_id, workflow_id, contact_id,
                            status, completed_at, converted_at, exited_at, exit_reason,
                            current_step_id, source_updated_at)
SELECT 'ex-' || lpad(g::text, 9, '0'), $2::timestamptz - g * $3::interval, 'tenant-1', $1,
       'contact-' || lpad((g * 7919 % 1000003)::text, 9, '0'),
       (ARRAY['completed', 'exited', 'active', 'failed'])[1 + g % 4],
       CASE WHEN g % 4 = 0 THEN $2::timestamptz - g * $3::interval + interval '3 hours' END,
       CASE WHEN g % 8 = 0 THEN $2::timestamptz - g * $3::interval + interval '5 hours' END,
       CASE WHEN g % 4 = 1 THEN $2::timestamptz - g * $3::interval + interval '2 days' END,
       CASE WHEN g % 4 = 1 THEN 'unsubscribed' END,
       CASE WHEN g % 4 = 2 THEN 'wf-bulk-s2' END, now()
  FROM generate_series($4::bigint, $5::bigint) g
"""


async def _fill(dsn: str, executions: int, pdf_executions: int) -> str:
    """Simulated workload (ingested) plus `executions` bulk rows; the PDF workflow's id."""
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
    data = generate(
        executions=pdf_executions, days=30, workflows=3, tenants=1, seed=3, now=now
    )
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        await write(conn, data)
    finally:
        await conn.close()
    cfg = config_from_dict({"source": {"dsn": dsn}, "store": {"backend": "postgres"}})
    svc = ExporterService(cfg)
    await svc.open()
    try:
        await svc.poll_once()
    finally:
        await svc.close()
    conn = await asyncpg.connect(dsn)
    try:
        step = timedelta(days=30) / max(executions, 1)
        await PostgresBackend().prepare_write(
            conn, {"executions": (now - timedelta(days=31), now)}
        )
        await conn.execute(
            "INSERT INTO wfa.workflows (workflow_id, tenant_id, name, source_updated_at) "
            "VALUES ($1, 'tenant-1', 'Bulk export benchmark', now())",
            WORKFLOW,
        )
        chunk = 250_000
        for lo in range(1, executions + 1, chunk):
            await conn.execute(_INSERT, WORKFLOW, now, step, lo, min(lo + chunk - 1, executions))
        await conn.execute("ANALYZE wfa.executions")
    finally:
        await conn.close()
    biggest = max(data.workflows, key=lambda w: sum(e.workflow_id == w.id for e in data.executions))
    return biggest.id


async def _copy_rate(dsn: str) -> float:
    """Rows per second of COPY (SELECT ... same rows) TO STDOUT CSV into a sink."""
    conn = await asyncpg.connect(dsn)
    size = 0

    async def sink(chunk: bytes) -> None:
        nonlocal size
        size += len(chunk)

    try:
        rows = await conn.fetchval(
            "SELECT count(*) FROM wfa.executions WHERE workflow_id = $1", WORKFLOW
        )
        t = time.perf_counter()
        await conn.copy_from_query(
            "SELECT * FROM wfa.executions WHERE workflow_id = 'wf-bulk' "
            "ORDER BY enrolled_at, execution_id",
            output=sink,
            format="csv",
            header=True,
        )
        return rows / (time.perf_counter() - t)
    finally:
        await conn.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Api:
    """A `wfa api` process over the store, and its peak RSS sampled while it works."""

    def __init__(self, dsn: str, directory: Path) -> None:
        self.port = _free_port()
        self.config = directory / "wfa.yaml"
        self.config.write_text(
            f"source: {{dsn: '{dsn}'}}\nstore: {{backend: postgres}}\n"
            f"api:\n  listen: 127.0.0.1:{self.port}\n  max_range: 400d\n  tokens:\n"
            f"    - {{name: bench, sha256: {token_digest(TOKEN)}, tenant: tenant-1, "
            "scopes: [export, read]}\n"
            f"exports: {{directory: '{directory / 'files'}'}}\n"
        )
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "api", "--config", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.base = f"http://127.0.0.1:{self.port}"
        self.peak = 0.0

    def sample(self) -> None:
        """Read the process's peak RSS so far."""
        with contextlib.suppress(OSError, ValueError):
            self.peak = max(self.peak, peak_rss_mb(self.proc.pid))

    async def ready(self, http: aiohttp.ClientSession) -> None:
        """Wait for /healthz."""
        for _ in range(200):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(f"{self.base}/healthz") as r:
                    if r.status == 200:
                        return
            await asyncio.sleep(0.05)
        raise RuntimeError("wfa api did not start")

    def stop(self) -> None:
        """Terminate the process."""
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


async def _measure(dsn: str, pdf_workflow: str, rows: int, work: Path) -> dict[str, float]:
    api = _Api(dsn, work)
    out: dict[str, float] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    wide = {"from": "now-40d", "dataset": "executions"}
    timeout = aiohttp.ClientTimeout(total=600)
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as http:
            await api.ready(http)
            api.sample()
            out["rss_idle"] = api.peak
            for fmt in ("csv", "ndjson"):
                t = time.perf_counter()
                got = size = 0
                async with http.get(
                    f"{api.base}{P}/workflows/{WORKFLOW}/analytics/export",
                    params={**wide, "format": fmt},
                ) as r:
                    r.raise_for_status()
                    async for chunk in r.content.iter_chunked(1 << 16):
                        size += len(chunk)
                        got += chunk.count(b"\n")
                        api.sample()
                took = time.perf_counter() - t
                got -= 1 if fmt == "csv" else 0
                if got != rows:
                    raise RuntimeError(f"{fmt} export gave {got} rows, expected {rows}")
                out[f"{fmt}_rate"] = rows / took
                out[f"{fmt}_mb"] = size / 2**20
            t = time.perf_counter()
            async with http.post(
                f"{api.base}{P}/workflows/{WORKFLOW}/analytics/export", params=wide
            ) as r:
                job = await r.json()
            while job["status"] in ("queued", "running"):
                await asyncio.sleep(0.05)
                api.sample()
                async with http.get(f"{api.base}{job['status_url']}") as r:
                    job = await r.json()
            if job["status"] != "succeeded" or job["rows"] != rows:
                raise RuntimeError(f"export job ended {job['status']}: {job['error']}")
            out["job_rate"] = rows / (time.perf_counter() - t)
            times = []
            for _ in range(3):
                t = time.perf_counter()
                async with http.get(
                    f"{api.base}{P}/workflows/{pdf_workflow}/analytics/export",
                    params={"from": "now-30d", "format": "pdf"},
                ) as r:
                    r.raise_for_status()
                    body = await r.read()
                times.append(time.perf_counter() - t)
                if not body.startswith(b"%PDF-"):
                    raise RuntimeError("not a PDF")
            out["pdf_first"], out["pdf_warm"] = times[0], min(times[1:])
            api.sample()
            out["rss_peak"] = api.peak
    finally:
        api.stop()
    return out


def run(executions: int, quick: bool = False) -> list[Figure]:
    """Measure exports of `executions` rows of one workflow."""
    scale = f"{executions:,} executions"
    with cluster(fast=True) as c, tempfile.TemporaryDirectory(prefix="wfa-bench-export-") as d:
        c.create_database("store")
        dsn = c.dsn("store")
        pdf_wf = asyncio.run(_fill(dsn, executions, 2_000 if quick else 20_000))
        copy = asyncio.run(_copy_rate(dsn))
        m = asyncio.run(_measure(dsn, pdf_wf, executions, Path(d)))
    return [
        Figure("export", scale, "executions CSV streamed over HTTP", m["csv_rate"], "rows/s",
               "PostgreSQL COPY TO STDOUT CSV of the same rows", copy),
        Figure("export", scale, "CSV over HTTP as a share of the COPY TO STDOUT rate",
               100 * m["csv_rate"] / copy, "%", target="≥ 70 %"),
        Figure("export", scale, "executions NDJSON streamed over HTTP", m["ndjson_rate"],
               "rows/s"),
        Figure("export", scale, "executions CSV as a stored job (file, fsync)", m["job_rate"],
               "rows/s"),
        Figure("export", scale, "CSV size", m["csv_mb"], "MiB"),
        Figure("export", scale, "peak RSS of the API process", m["rss_peak"], "MiB",
               "idle API process", m["rss_idle"], "< 200 MiB"),
        Figure("export", scale, "PDF report, first (fonts loaded)", m["pdf_first"], "s",
               target="< 3 s"),
        Figure("export", scale, "PDF report, warm", m["pdf_warm"], "s", target="< 3 s"),
    ]


def main() -> None:
    """Command line: `python -m bench.bench_export --executions 1000000`."""
    p = argparse.ArgumentParser()
    p.add_argument("--executions", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    figures = [f for n in args.executions for f in run(n, args.quick)]
    print(markdown(figures))


if __name__ == "__main__":
    main()
