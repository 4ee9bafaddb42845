"""Scrape latency of /metrics (~10,000 series) as the data grows, beside SQL-exporter peers.

For each scale: simulate the source, ingest it with `wfa exporter --once`, run the real
`wfa exporter` process and scrape it like Prometheus does (keep-alive, gzip) while its poll
and snapshot jobs run; measure the database CPU the scrapes cost. Then run the peers from
PEERS.md with the equivalent funnel GROUP BY over the raw source table on the same data.

    python -m bench.bench_scrape --executions 100000 1000000
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from bench.common import (
    Figure,
    cluster,
    machine,
    markdown,
    percentile,
    pg_cpu_seconds,
    write_history,
)
from bench.scrape_peers import PostgresExporter, QueryExporter, Scraper, wait_http
from exporter.config.schema import MetricsConfig
from exporter.metrics import build_snapshot, render_snapshot
from exporter.simulate.writer import create_source_schema
from tests.kit.devdb import free_port

MAX_SERIES = 10_000


async def _fill_source(dsn: str, executions: int, workflows: int) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        await write_history(
            conn, executions=executions, days=30, workflows=workflows, tenants=4, seed=1, now=now
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _ingest(src: str, store: str, workdir: Path) -> float:
    """`wfa exporter --once` (generous statement timeout for the first refresh); seconds."""
    cfg = workdir / "ingest.yaml"
    cfg.write_text(
        f"source: {{dsn: '{src}'}}\n"
        f"store: {{dsn: '{store}', backend: postgres, statement_timeout: 30m}}\n"
    )
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "exporter", "exporter", "--once", "--config", str(cfg)],
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - started


async def _vacuum(*dsns: str) -> None:
    """VACUUM ANALYZE, so autovacuum after the bulk load does not run during the scrapes."""
    for dsn in dsns:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("VACUUM ANALYZE")
        finally:
            await conn.close()


def _latency_figures(
    name: str, scale: str, took_ms: list[float], cpu_ms: float, peer: str = ""
) -> list[Figure]:
    p50, p95 = percentile(took_ms, 50), percentile(took_ms, 95)
    if not peer:
        return [
            Figure("scrape", scale, "scrape p50", p50, "ms"),
            Figure("scrape", scale, "scrape p95", p95, "ms", target="< 50 ms"),
            Figure("scrape", scale, "scrape max", max(took_ms), "ms"),
            Figure("scrape", scale, "database CPU per scrape", cpu_ms, "ms"),
        ]
    return [
        Figure("scrape", scale, f"{name} p50", p50, "ms"),
        Figure("scrape", scale, f"{name} p95", p95, "ms"),
        Figure("scrape", scale, f"{name} database CPU per scrape", cpu_ms, "ms"),
    ]


def _scrape_loop(
    port: int, datadir: Path, n: int, gap: float
) -> tuple[list[float], float, int, int]:
    """n scrapes `gap` seconds apart: (latencies ms, DB CPU ms per scrape, series, bytes)."""
    s = Scraper(port)
    try:
        for _ in range(3):
            s.scrape()
        cpu0 = pg_cpu_seconds(datadir)
        took, last = [], None
        for _ in range(n):
            last = s.scrape()
            took.append(last.seconds * 1000)
            time.sleep(gap)
        cpu = (pg_cpu_seconds(datadir) - cpu0) * 1000 / n
    finally:
        s.close()
    assert last is not None
    return took, cpu, last.series, last.wire_bytes


def _ours(c, src: str, store: str, workdir: Path, scale: str, n: int) -> list[Figure]:
    port = free_port()
    cfg = workdir / "wfa.yaml"
    cfg.write_text(
        f"source: {{dsn: '{src}'}}\n"
        f"store: {{dsn: '{store}', backend: postgres}}\n"
        "exporter: {poll_interval: 5s}\n"
        f"metrics: {{listen: '127.0.0.1:{port}', snapshot_interval: 15s,"
        f" max_series: {MAX_SERIES}}}\n"
    )
    log = (workdir / "wfa.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "exporter", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        wait_http(port, b"wfa_workflow_info{")
        took, cpu, series, wire = _scrape_loop(port, c.datadir, n, 0.05)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    out = _latency_figures("wfa", scale, took, cpu)
    out.append(Figure("scrape", scale, "series per scrape (wfa)", series, "series"))
    out.append(Figure("scrape", scale, "gzip bytes per scrape (wfa)", wire / 1024, "KiB"))
    return out


async def _snapshot_cost(c, store: str, scale: str, rounds: int = 5) -> list[Figure]:
    cfg = MetricsConfig(max_series=MAX_SERIES)
    conn = await asyncpg.connect(store)
    builds, renders, cpus = [], [], []
    try:
        for _ in range(rounds):
            cpu0 = pg_cpu_seconds(c.datadir)
            t = time.perf_counter()
            snap = await build_snapshot(conn, cfg)
            builds.append((time.perf_counter() - t) * 1000)
            cpus.append((pg_cpu_seconds(c.datadir) - cpu0) * 1000)
            t = time.perf_counter()
            render_snapshot(snap)
            renders.append((time.perf_counter() - t) * 1000)
    finally:
        await conn.close()
    return [
        Figure(
            "snapshot",
            scale,
            "snapshot build (store reads), median",
            statistics.median(builds),
            "ms",
        ),
        Figure("snapshot", scale, "database CPU per snapshot", statistics.median(cpus), "ms"),
        Figure(
            "snapshot", scale, "render once per snapshot, median", statistics.median(renders), "ms"
        ),
        Figure("snapshot", scale, "series in snapshot", snap.series, "series"),
    ]


def _peer(peer, c, scale: str, n: int, gap: float) -> list[Figure]:
    try:
        wait_http(peer.port, b"wfa_peer_funnel_steps_reached{")
        took, cpu, series, _ = _scrape_loop(peer.port, c.datadir, n, gap)
    finally:
        peer.stop()
    out = _latency_figures(peer.name, scale, took, cpu, peer=peer.name)
    out.append(Figure("scrape", scale, f"series per scrape ({peer.name})", series, "series"))
    return out


def _query_exporter_collection(c, src: str, workdir: Path, scale: str, seconds: float):
    """query-exporter with a 5 s interval: DB CPU and wall time per collection of the queries."""
    qe = QueryExporter(src, workdir, free_port(), interval=5)
    try:
        wait_http(qe.port, b"wfa_peer_funnel_steps_reached{")
        s = Scraper(qe.port)
        before = _qe_counts(s)
        cpu0 = pg_cpu_seconds(c.datadir)
        time.sleep(seconds)
        cpu = pg_cpu_seconds(c.datadir) - cpu0
        after = _qe_counts(s)
        s.close()
    finally:
        qe.stop()
    runs = (after[0] - before[0]) / 3 or 1
    latency = (after[1] - before[1]) / max(1, after[0] - before[0]) * 3
    return [
        Figure(
            "collection",
            scale,
            "query-exporter: wall time per collection (3 queries)",
            latency * 1000,
            "ms",
        ),
        Figure(
            "collection",
            scale,
            "query-exporter: database CPU per collection",
            cpu * 1000 / runs,
            "ms",
        ),
    ]


def _qe_counts(s: Scraper) -> tuple[float, float]:
    """(successful queries, summed query latency seconds) from query-exporter's own metrics."""
    s.conn.request("GET", "/metrics")
    body = s.conn.getresponse().read().decode()
    done = lat = 0.0
    for line in body.splitlines():
        if line.startswith("queries_total{") and 'status="success"' in line:
            done += float(line.rsplit(" ", 1)[1])
        elif line.startswith("query_latency_sum{"):
            lat += float(line.rsplit(" ", 1)[1])
    return done, lat


def run(
    executions: int,
    workflows: int = 40,
    scrapes: int = 400,
    peer_scrapes: int = 10,
    peers: bool = True,
    quick: bool = False,
) -> list[Figure]:
    """Every figure at `executions` source rows (quick: a few scrapes, no peers)."""
    if quick:
        workflows, scrapes, peers = min(workflows, 5), min(scrapes, 20), False
    scale = f"{executions:,} executions"
    figures: list[Figure] = []
    with cluster() as c, tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        c.create_database("source")
        c.create_database("store")
        src, store = c.dsn("source"), c.dsn("store")
        asyncio.run(_fill_source(src, executions, workflows))
        took = _ingest(src, store, workdir)
        print(f"{scale}: ingested in {took:.0f} s", file=sys.stderr)
        asyncio.run(_vacuum(src, store))
        figures += _ours(c, src, store, workdir, scale, scrapes)
        figures += asyncio.run(_snapshot_cost(c, store, scale))
        if not peers:
            return figures
        figures += _peer(PostgresExporter(src, workdir, free_port()), c, scale, peer_scrapes, 0)
        figures += _peer(
            QueryExporter(src, workdir, free_port()), c, scale, max(scrapes // 4, 20), 0.05
        )
        figures += _query_exporter_collection(c, src, workdir, scale, 30)
    return figures


def main() -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--executions", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--workflows", type=int, default=40)
    p.add_argument("--scrapes", type=int, default=400)
    p.add_argument("--peer-scrapes", type=int, default=10)
    p.add_argument("--no-peers", action="store_true", help="measure wfa only")
    p.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = p.parse_args()
    figures = []
    for n in args.executions:
        figures += run(n, args.workflows, args.scrapes, args.peer_scrapes, not args.no_peers)
    table = f"{machine()}\n\n{markdown(figures)}\n"
    print(table)
    if args.out:
        args.out.write_text(table)


if __name__ == "__main__":
    main()
