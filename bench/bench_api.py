"""HTTP API under load with wrk on both store backends, beside raw GROUP BY SQL over the source
tables; SSE fan-out.

Stages, all on loopback against a private PostgreSQL cluster:

1. fill: simulate N executions over 120 days (20 workflows, 4 tenants) into a source
   database, then ingest it into one store database per backend (plain PostgreSQL, and
   TimescaleDB when the extension is installed) and refresh the rollups; every step is
   skipped when already done, so `--pgdata` keeps a filled cluster between runs;
2. serve: `wfa run` (exporter polling every second + API) in its own process, per backend;
3. wrk with 16 connections on summary, cohort funnel and actions over a 90-day range,
   twice: `range=90d` (what a dashboard sends; answers are cached until ingestion touches
   the workflow) and a distinct absolute range per request (every request computes its
   answer); requests/s and p95 of the computed answers beside the cached ones, and the CPU
   each computed answer costs the API process and the PostgreSQL cluster;
4. the peer: the same three questions as GROUP BY queries over the source tables
   (with a (workflow_id, enrolled_at) index), one client, beside our API one client,
   uncached;
5. SSE (first backend): N clients hold streams over 10 workflows, one source change per
   workflow is ingested by the running exporter; time from the change's commit to each
   client's event, and the server's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg

from bench.common import (
    Figure,
    cluster,
    cpu_seconds,
    loop_ms,
    machine,
    markdown,
    percentile,
    pg_cpu_seconds,
    write_history,
)
from exporter.api.auth import token_digest
from exporter.config import config_from_dict
from exporter.service import ExporterService
from exporter.simulate.writer import create_source_schema
from tests.kit.devdb import DevCluster, free_port

DB = "wfa_bench_api"
SOURCE_DB = f"{DB}_source"
BACKENDS = ("postgres", "timescaledb")
CONNECTIONS = 16
TOKEN = "wfa_bench_api_token_tenant1"
TENANT = "tenant-1"
DAYS = 120
RANGE_DAYS = 90
P = "/api/v1"

WRK_SCRIPT = r"""
local path, cold, from_ms, to_ms = nil, false, 0, 0
local n = 0
function init(args)
  path = args[1]
  cold = args[2] == "cold"
  from_ms = tonumber(args[3] or "0")
  to_ms = tonumber(args[4] or "0")
  wrk.headers["Authorization"] = "Bearer " .. os.getenv("WFA_TOKEN")
end
function request()
  n = n + 1
  if cold then
    local sep = string.find(path, "?", 1, true) and "&" or "?"
    return wrk.format("GET", path .. sep .. "from=" .. from_ms .. "&to=" .. (to_ms + n))
  end
  return wrk.format("GET", path)
end
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nWRKJSON {"requests":%d,"duration_us":%d,"p50":%d,"p95":%d,"p99":%d,"max":%d,' ..
    '"errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(95),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""

# The peer: the same questions straight over the source tables.
PEER_SQL = {
    "funnel": [
        """SELECT count(*) AS enrolled,
                  count(*) FILTER (WHERE status = 'completed') AS completed,
                  count(converted_at) AS converted,
                  count(*) FILTER (WHERE status = 'active') AS in_progress
             FROM workflow_executions
            WHERE workflow_id = $1 AND enrolled_at >= $2 AND enrolled_at < $3""",
        """SELECT sp->>'step_id' AS step_id, count(DISTINCT e.id) AS reached
             FROM workflow_executions e, jsonb_array_elements(e.step_progress) sp
            WHERE e.workflow_id = $1 AND e.enrolled_at >= $2 AND e.enrolled_at < $3
            GROUP BY 1""",
        """SELECT current_step_id, count(*) FROM workflow_executions
            WHERE workflow_id = $1 AND enrolled_at >= $2 AND enrolled_at < $3
              AND status = 'active' GROUP BY 1""",
    ],
    "summary": [
        """SELECT count(*) FILTER (WHERE enrolled_at >= $2 AND enrolled_at < $3),
                  count(*) FILTER (WHERE completed_at >= $2 AND completed_at < $3),
                  count(*) FILTER (WHERE converted_at >= $2 AND converted_at < $3),
                  count(*) FILTER (WHERE exited_at >= $2 AND exited_at < $3),
                  count(*) FILTER (WHERE status = 'failed' AND updated_at >= $2
                                   AND updated_at < $3),
                  percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (
                      ORDER BY extract(epoch FROM completed_at - enrolled_at))
                      FILTER (WHERE completed_at >= $2 AND completed_at < $3),
                  percentile_cont(ARRAY[0.5, 0.95]) WITHIN GROUP (
                      ORDER BY extract(epoch FROM converted_at - enrolled_at))
                      FILTER (WHERE converted_at >= $2 AND converted_at < $3)
             FROM workflow_executions
            WHERE workflow_id = $1 AND enrolled_at < $3""",
        """SELECT date_trunc('day', t, 'UTC') AS bucket, kind, count(*)
             FROM workflow_executions e,
                  LATERAL (VALUES ('enrolled', e.enrolled_at), ('completed', e.completed_at),
                                  ('converted', e.converted_at), ('exited', e.exited_at)) v(kind, t)
            WHERE e.workflow_id = $1 AND e.enrolled_at < $3 AND t >= $2 AND t < $3
            GROUP BY 1, 2""",
        """SELECT count(*) FILTER (WHERE status = 'completed')::float / nullif(count(*), 0),
                  count(converted_at)::float / nullif(count(*), 0)
             FROM workflow_executions
            WHERE workflow_id = $1 AND enrolled_at >= $2 AND enrolled_at < $3""",
    ],
    "actions": [
        """WITH a AS (
             SELECT sp->>'step_id' AS step_id, sp->>'status' AS status, sp->>'error' AS error,
                    extract(epoch FROM (sp->>'finished_at')::timestamptz
                                       - (sp->>'entered_at')::timestamptz) AS seconds
               FROM workflow_executions e, jsonb_array_elements(e.step_progress) sp
              WHERE e.workflow_id = $1 AND e.enrolled_at < $3
                AND (sp->>'entered_at')::timestamptz >= $2
                AND (sp->>'entered_at')::timestamptz < $3)
           SELECT step_id, count(*), count(*) FILTER (WHERE status = 'succeeded'),
                  count(*) FILTER (WHERE status = 'failed'),
                  count(*) FILTER (WHERE status = 'skipped'),
                  count(*) FILTER (WHERE status = 'running'), avg(seconds),
                  percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY seconds)
             FROM a GROUP BY 1""",
        """SELECT sp->>'step_id', sp->>'error', count(*)
             FROM workflow_executions e, jsonb_array_elements(e.step_progress) sp
            WHERE e.workflow_id = $1 AND e.enrolled_at < $3 AND sp->>'status' = 'failed'
              AND (sp->>'entered_at')::timestamptz >= $2
              AND (sp->>'entered_at')::timestamptz < $3
            GROUP BY 1, 2 ORDER BY 3 DESC""",
    ],
}
ENDPOINTS = {
    "summary": "/analytics?granularity=day",
    "funnel": "/analytics/funnel?mode=cohort",
    "actions": "/analytics/actions",
}


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"[bench_api {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextmanager
def pg_cluster(pgdata: str | None) -> Iterator[DevCluster]:
    """A kept cluster in `pgdata` (left running) or a throwaway one."""
    if pgdata is None:
        with cluster() as c:
            yield c
        return
    c = DevCluster(Path(pgdata))
    c.start()
    yield c


async def fill_source(dsn: str, executions: int) -> None:
    """Simulate and write `executions` source rows unless they are there already."""
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        written = await conn.fetchval("SELECT count(*) FROM workflow_executions")
        if written != executions:
            await conn.execute("TRUNCATE workflow_executions, workflows")
            now = datetime.now(UTC).replace(microsecond=0)
            log(f"simulating and writing {executions:,} executions over {DAYS} days")
            await write_history(
                conn, executions=executions, days=DAYS, workflows=20, tenants=4, seed=1, now=now
            )
        await conn.execute(
            "CREATE INDEX IF NOT EXISTS bench_peer_idx "
            "ON workflow_executions (workflow_id, enrolled_at)"
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


async def fill(source: str, store: str, backend: str, executions: int) -> float:
    """Ingest the source into `store` and refresh unless already done; seconds spent."""
    conn = await asyncpg.connect(store)
    try:
        have = None
        if await conn.fetchval("SELECT to_regclass('wfa.meta') IS NOT NULL"):
            have = await conn.fetchval(
                "SELECT value FROM wfa.meta WHERE key = 'bench_api_executions'"
            )
    finally:
        await conn.close()
    if have == str(executions):
        log(f"{backend} store already holds {executions:,} executions")
        return 0.0
    started = time.perf_counter()
    log(f"ingesting into the {backend} store and refreshing the rollups")
    cfg = config_from_dict(
        {
            "source": {"dsn": source},
            "store": {"dsn": store, "backend": backend, "statement_timeout": "1h"},
            "exporter": {"batch_size": 20000},
        }
    )
    svc = ExporterService(cfg)
    await svc.open()
    try:
        await svc.poll_once()
        assert svc.store is not None
        async with svc.store.acquire() as c:
            await c.execute("VACUUM (ANALYZE)")
            await c.execute(
                "INSERT INTO wfa.meta VALUES ('bench_api_executions', $1) "
                "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                str(executions),
            )
    finally:
        await svc.close()
    took = time.perf_counter() - started
    log(f"{backend} store filled in {took:.0f} s")
    return took


async def pick_workflows(dsn: str) -> list[str]:
    """Tenant-1 workflows, largest first."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT workflow_id, count(*) FROM workflow_executions WHERE tenant_id = $1 "
            "GROUP BY 1 ORDER BY 2 DESC",
            TENANT,
        )
    finally:
        await conn.close()
    return [r["workflow_id"] for r in rows]


def write_config(
    source: str, store: str, backend: str, port: int, metrics_port: int, path: Path
) -> None:
    """The `wfa run` config of the benchmark."""
    cfg = {
        "source": {"dsn": source},
        "store": {"dsn": store, "backend": backend, "pool_max_size": 10},
        "exporter": {"poll_interval": "1s", "refresh_interval": "30s"},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
        "api": {
            "listen": f"127.0.0.1:{port}",
            "sse_max_per_token": 5000,
            "tokens": [
                {
                    "name": "bench",
                    "sha256": token_digest(TOKEN),
                    "tenant": TENANT,
                    "scopes": ["read"],
                }
            ],
        },
    }
    path.write_text(json.dumps(cfg))


@contextmanager
def server(config: Path, port: int) -> Iterator[subprocess.Popen]:
    """`wfa run` in its own process until the block ends (SIGTERM, bounded wait)."""
    log_path = config.with_suffix(".log")
    with log_path.open("w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run", "--config", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=log_file,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"wfa run exited: {log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                import urllib.request

                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            if time.monotonic() > deadline:
                raise RuntimeError("wfa run did not become ready")
            time.sleep(0.5)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rss_mb(pid: int, key: str = "VmRSS") -> float:
    """Resident set size (or another /proc status field) of a process in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def warm_up(url: str) -> None:
    """One request, so the timed run measures the steady state of a dashboard."""
    import urllib.request

    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(req, timeout=120) as r:
        r.read()


def run_wrk(url: str, args: list[str], duration: int, connections: int) -> dict:
    """One wrk run; the JSON its done() hook prints."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(WRK_SCRIPT)
    try:
        out = subprocess.run(
            [
                "wrk",
                "-t1",
                f"-c{connections}",
                f"-d{duration}s",
                "--timeout",
                "10s",
                "-s",
                f.name,
                url,
                "--",
                *args,
            ],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "WFA_TOKEN": TOKEN},
        ).stdout
    finally:
        Path(f.name).unlink()
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    res = json.loads(line.removeprefix("WRKJSON "))
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    return res


async def peer_latencies(dsn: str, wid: str, start: datetime, end: datetime, n: int) -> dict:
    """Milliseconds per question of the raw SQL peer (one client, sequential)."""
    conn = await asyncpg.connect(dsn)
    out: dict[str, list[float]] = {}
    try:
        for name, stmts in PEER_SQL.items():
            times = []
            for _ in range(n):
                t = time.perf_counter()
                for sql in stmts:
                    await conn.fetch(sql, wid, start, end)
                times.append((time.perf_counter() - t) * 1000)
            out[name] = times
    finally:
        await conn.close()
    return out


async def api_latencies(base: str, wid: str, end: datetime, n: int) -> dict:
    """Milliseconds per question of our API, uncached (distinct range each), one client.

    The ranges start before the wrk runs' ones, so none of them is in the answer cache.
    """
    out: dict[str, list[float]] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    to_ms = int(end.timestamp() * 1000)
    from_ms = to_ms - RANGE_DAYS * 86_400_000
    async with aiohttp.ClientSession(headers=headers) as s:
        for name, suffix in ENDPOINTS.items():
            times = []
            for i in range(n):
                sep = "&" if "?" in suffix else "?"
                url = f"{base}{P}/workflows/{wid}{suffix}{sep}from={from_ms - i - 1}&to={to_ms}"
                t = time.perf_counter()
                async with s.get(url) as r:
                    await r.read()
                    assert r.status == 200, r.status
                times.append((time.perf_counter() - t) * 1000)
            out[name] = times
    return out


# SSE -------------------------------------------------------------------------------------


async def sse_client(base: str, wids: list[str], n: int, ready_file: str, out_file: str) -> None:
    """Hold n streams; after the initial events, record when each gets its next event."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    conn = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=120)
    got_first = asyncio.Semaphore(0)
    received: list[float] = []

    async def one(i: int) -> None:
        url = f"{base}{P}/workflows/{wids[i % len(wids)]}/analytics/stream?range=7d"
        async with s.get(url) as r:
            assert r.status == 200, r.status
            events = 0
            while True:
                line = await r.content.readline()
                if not line:
                    return
                if line.startswith(b"event: analytics"):
                    events += 1
                    if events == 1:
                        got_first.release()
                    else:
                        received.append(time.time())
                        return

    async with aiohttp.ClientSession(connector=conn, headers=headers, timeout=timeout) as s:
        tasks = [asyncio.create_task(one(i)) for i in range(n)]
        for _ in range(n):
            await got_first.acquire()
        Path(ready_file).write_text(str(time.time()))
        _done, pending = await asyncio.wait(tasks, timeout=60)
        for t in pending:
            t.cancel()
    Path(out_file).write_text(json.dumps({"received": received, "failed": len(pending)}))


async def touch_source(dsn: str, wids: list[str]) -> float:
    """Record a conversion on one active execution per workflow; the commit time."""
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for wid in wids:
                done = await conn.execute(
                    "UPDATE workflow_executions SET converted_at = clock_timestamp(), "
                    "updated_at = clock_timestamp() WHERE id = (SELECT id FROM "
                    "workflow_executions WHERE workflow_id = $1 AND converted_at IS NULL "
                    "AND status IN ('active', 'completed') "
                    "ORDER BY status = 'active' DESC, enrolled_at DESC LIMIT 1)",
                    wid,
                )
                assert done == "UPDATE 1", (wid, done)
        return time.time()
    finally:
        await conn.close()


def run_sse(
    base: str, dsn: str, pid: int, wids: list[str], clients: int, scale: str
) -> list[Figure]:
    """N streams, one change per workflow, delivery latency and server RSS."""
    scale = f"{scale}, {clients:,} SSE clients"
    tmp = Path(tempfile.mkdtemp(prefix="wfa-sse-"))
    ready, out = tmp / "ready", tmp / "out.json"
    rss_before = rss_mb(pid)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.bench_api",
            "sse-client",
            "--base",
            base,
            "--clients",
            str(clients),
            "--ready",
            str(ready),
            "--out",
            str(out),
            "--workflows",
            *wids,
        ],
    )
    try:
        deadline = time.monotonic() + 120
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("SSE clients did not connect")
            time.sleep(0.2)
        time.sleep(2)
        rss_held = rss_mb(pid)
        changed_at = asyncio.run(touch_source(dsn, wids))
        proc.wait(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
    res = json.loads(out.read_text())
    lat = [t - changed_at for t in res["received"]]
    within = sum(1 for x in lat if x <= 3.0)
    log(f"SSE: {len(lat)} of {clients} updated, max {max(lat):.2f} s, RSS {rss_held:.0f} MiB")
    return [
        Figure(
            "api sse",
            scale,
            "server RSS while holding them",
            rss_held,
            "MiB",
            "before connecting",
            rss_before,
            "< 300 MiB",
        ),
        Figure(
            "api sse",
            scale,
            "clients updated within 3 s of the source change",
            within,
            "clients",
            target=f"{clients:,}",
        ),
        Figure(
            "api sse",
            scale,
            "change-to-event p50 (incl. 1 s poll interval)",
            percentile(lat, 50),
            "s",
        ),
        Figure("api sse", scale, "change-to-event max", max(lat), "s", target="< 3 s"),
    ]


def _load_figures(name: str, scale: str, hot: dict, cold: dict) -> list[Figure]:
    """Requests/s and latency of computed answers, each beside the cached answer."""
    for r in (hot, cold):
        assert r["non2xx"] == 0 and r["errors"] == 0, r
    label, cached = "distinct range per request (computed)", "cached (range=90d)"
    return [
        Figure(
            f"api {name}",
            scale,
            f"{label}: requests/s, {CONNECTIONS} connections",
            cold["rps"],
            "req/s",
            cached,
            hot["rps"],
            "≥ 300 req/s",
        ),
        Figure(
            f"api {name}",
            scale,
            f"{label}: p95",
            cold["p95"] / 1000,
            "ms",
            cached,
            hot["p95"] / 1000,
            "< 50 ms",
        ),
        Figure(
            f"api {name}",
            scale,
            f"{label}: p99",
            cold["p99"] / 1000,
            "ms",
            cached,
            hot["p99"] / 1000,
        ),
    ]


def _cpu_figures(name: str, scale: str, answers: int, api_s: float, pg_s: float) -> list[Figure]:
    """CPU per computed answer of the `wfa run` process and of the whole PostgreSQL cluster
    (their idle polls, snapshots and refreshes in the timed window included)."""
    label = "distinct range per request (computed): CPU per answer"
    answers = max(answers, 1)
    return [
        Figure(f"api {name}", scale, f"{label}, API process", api_s * 1000 / answers, "ms"),
        Figure(f"api {name}", scale, f"{label}, store", pg_s * 1000 / answers, "ms"),
    ]


def serve_and_load(
    datadir: Path,
    source: str,
    store: str,
    backend: str,
    scale: str,
    wids: list[str],
    duration: int,
    connections: int,
    single: int,
    sse_clients: int,
) -> list[Figure]:
    """`wfa run` on one store: wrk per endpoint (with the CPU each computed answer costs the
    API process and the cluster `datadir`), one-client timings, SSE fan-out."""
    figures: list[Figure] = []
    wid = wids[0]
    port, mport = free_port(), free_port()
    load, speed = os.getloadavg()[0], loop_ms()
    with tempfile.TemporaryDirectory() as tmp:
        cfg_path = Path(tmp) / "wfa.yaml"
        write_config(source, store, backend, port, mport, cfg_path)
        with server(cfg_path, port) as proc:
            base = f"http://127.0.0.1:{port}"
            end = datetime.now(UTC)
            to_ms = int(end.timestamp() * 1000)
            from_ms = to_ms - RANGE_DAYS * 86_400_000
            for name, suffix in ENDPOINTS.items():
                sep = "&" if "?" in suffix else "?"
                path = f"{P}/workflows/{wid}{suffix}"
                warm_up(f"{base}{path}{sep}range=90d")
                hot = run_wrk(
                    f"{base}{path}", [f"{path}{sep}range=90d", "hot"], duration, connections
                )
                api0, pg0 = cpu_seconds(proc.pid), pg_cpu_seconds(datadir)
                cold = run_wrk(
                    f"{base}{path}", [path, "cold", str(from_ms), str(to_ms)], duration, connections
                )
                cpu = (cpu_seconds(proc.pid) - api0, pg_cpu_seconds(datadir) - pg0)
                log(f"{backend} {name}: hot {hot}, cold {cold}, cpu {cpu}")
                figures += _load_figures(name, scale, hot, cold)
                figures += _cpu_figures(name, scale, cold["requests"], *cpu)
            ours = asyncio.run(api_latencies(base, wid, end, single))
            start = end - timedelta(days=RANGE_DAYS)
            peer = asyncio.run(peer_latencies(source, wid, start, end, single))
            for name in ENDPOINTS:
                figures.append(
                    Figure(
                        f"api {name}",
                        scale,
                        "one client, computed: p50",
                        percentile(ours[name], 50),
                        "ms",
                        "raw GROUP BY over source tables",
                        percentile(peer[name], 50),
                    )
                )
            figures += [
                Figure("api", scale, "server RSS after the load", rss_mb(proc.pid), "MiB"),
                Figure(
                    "api",
                    scale,
                    "machine load average (1 min) before the timed runs",
                    load,
                    "",
                    target="< 1.5 for comparable figures",
                ),
                Figure(
                    "api",
                    scale,
                    "machine speed: a fixed Python loop before / after the timed runs",
                    speed,
                    "ms",
                    "after",
                    loop_ms(),
                ),
            ]
            if sse_clients:
                figures += run_sse(base, source, proc.pid, wids[:10], sse_clients, scale)
    return figures


def run(
    executions: int,
    *,
    quick: bool = False,
    pgdata: str | None = None,
    duration: int | None = None,
    connections: int = CONNECTIONS,
    sse_clients: int | None = None,
    backends: tuple[str, ...] = BACKENDS,
) -> list[Figure]:
    """All stages at `executions` rows, on every backend the cluster has."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed (apt-get install wrk)")
    duration = duration or (2 if quick else 10)
    sse = sse_clients if sse_clients is not None else (50 if quick else 1000)
    single = 5 if quick else 20
    figures: list[Figure] = []
    with pg_cluster(pgdata) as c:
        have = c.psql("SELECT datname FROM pg_database")
        if SOURCE_DB not in have:
            c.create_database(SOURCE_DB)
        source = c.dsn(SOURCE_DB)
        asyncio.run(fill_source(source, executions))
        wids = asyncio.run(pick_workflows(source))
        for backend in backends:
            if backend == "timescaledb" and not c.has_timescaledb:
                log(f"timescaledb skipped: {c.timescaledb_reason}")
                continue
            db = f"{DB}_{backend}"
            if db not in have:
                c.create_database(db)
                if backend == "timescaledb":
                    c.psql("CREATE EXTENSION timescaledb", dbname=db)
            store = c.dsn(db)
            asyncio.run(fill(source, store, backend, executions))
            scale = f"{executions:,} executions, {RANGE_DAYS}-day range, {backend}"
            figures += serve_and_load(
                c.datadir, source, store, backend, scale, wids, duration, connections, single, sse
            )
            sse = 0
    return figures


def main() -> None:
    """Command line: `python -m bench.bench_api [--executions N] [--pgdata DIR]`."""
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd")
    client = sub.add_parser("sse-client")
    client.add_argument("--base", required=True)
    client.add_argument("--clients", type=int, required=True)
    client.add_argument("--ready", required=True)
    client.add_argument("--out", required=True)
    client.add_argument("--workflows", nargs="+", required=True)
    p.add_argument("--executions", type=int, default=1_000_000)
    p.add_argument("--pgdata", help="keep the cluster (and the filled stores) in this directory")
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--connections", type=int, default=CONNECTIONS)
    p.add_argument("--sse-clients", type=int, default=1000)
    p.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS))
    args = p.parse_args()
    if args.cmd == "sse-client":
        asyncio.run(sse_client(args.base, args.workflows, args.clients, args.ready, args.out))
        return
    figures = run(
        args.executions,
        pgdata=args.pgdata,
        duration=args.duration,
        connections=args.connections,
        sse_clients=args.sse_clients,
        backends=tuple(args.backends),
    )
    print(f"Machine: {machine()}; load average {os.getloadavg()[0]:.2f}\n")
    print(markdown(figures))


if __name__ == "__main__":
    main()
