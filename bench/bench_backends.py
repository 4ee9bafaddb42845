"""TimescaleDB beside plain PostgreSQL: ingest throughput, and read latency from the aggregates
beside the same queries answered from the raw tables."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

import asyncpg

from bench.common import Figure, cluster, cpu_seconds, machine, markdown, percentile, write_history
from exporter import queries
from exporter.config import config_from_dict
from exporter.db import connect
from exporter.service import ExporterService
from exporter.simulate.writer import create_source_schema
from exporter.store.timescale import TimescaleBackend
from exporter.timerange import Segments

BACKENDS = ("postgres", "timescaledb")
DAYS = 90
QueryFn = Callable[[asyncpg.Connection, queries.Workflow, datetime, datetime], Awaitable[dict]]
QUERIES: dict[str, QueryFn] = {
    "funnel": lambda c, wf, s, e: queries.cohort_funnel(c, wf.tenant_id, wf, s, e),
    "summary": lambda c, wf, s, e: queries.summary(c, wf.tenant_id, wf, s, e, "day", "UTC"),
    "actions": lambda c, wf, s, e: queries.actions(c, wf.tenant_id, wf, s, e),
}


async def _fill_source(dsn: str, executions: int, now: datetime) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        await write_history(
            conn, executions=executions, days=DAYS, workflows=10, tenants=3, seed=1, now=now
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    """User + system CPU seconds of each live process."""
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            out[pid] = cpu_seconds(pid)
    return out


async def _server_cpu(pool: asyncpg.Pool) -> dict[int, float]:
    """CPU seconds so far of every server process attached to the store database."""
    async with pool.acquire() as conn:
        pids = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
        )
    return _cpu_seconds([r["pid"] for r in pids])


async def _ingest(src: str, store: str, backend: str, batch: int) -> dict[str, float]:
    """Poll until caught up, then refresh the rollups; wall and CPU seconds, rows written."""
    cfg = config_from_dict(
        {
            "source": {"dsn": src},
            "store": {"dsn": store, "backend": backend, "statement_timeout": "30m"},
            "exporter": {"batch_size": batch},
        }
    )
    svc = ExporterService(cfg)
    await svc.open()
    try:
        assert svc.store and svc.backend
        cpu0, client0 = await _server_cpu(svc.store), time.process_time()
        started = time.perf_counter()
        res = await svc.poll_once(refresh=False)
        polled = time.perf_counter()
        cpu1, client1 = await _server_cpu(svc.store), time.process_time()
        assert res is not None
        async with svc.store.acquire() as conn:
            await svc.backend.refresh(conn)
            refreshed = time.perf_counter()
            await conn.execute("ANALYZE")
        cpu2 = await _server_cpu(svc.store)
    finally:
        await svc.close()
    return {
        "poll": polled - started,
        "refresh": refreshed - polled,
        "poll_cpu": sum(v - cpu0.get(p, 0.0) for p, v in cpu1.items()) + client1 - client0,
        "refresh_cpu": sum(v - cpu1.get(p, 0.0) for p, v in cpu2.items()),
        "written": res.written,
        "step_runs": res.rows.get("step_runs", 0),
    }


RAW_SIZE = """
SELECT coalesce(sum(hypertable_size(format('%I.%I', hypertable_schema, hypertable_name))), 0)
  FROM timescaledb_information.hypertables WHERE hypertable_schema = 'wfa'"""


async def _compression(store: str, now: datetime, after: timedelta) -> tuple[float, float, int]:
    """Raw hypertable bytes before and after compressing chunks older than `after`; chunks."""
    conn = await connect(store)
    try:
        before = float(await conn.fetchval(RAW_SIZE))
        backend = TimescaleBackend(compress_after=after)
        await backend.maintain(conn, now)
        chunks = await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.chunks "
            "WHERE hypertable_schema = 'wfa' AND is_compressed"
        )
        return before, float(await conn.fetchval(RAW_SIZE)), int(chunks)
    finally:
        await conn.close()


@contextlib.contextmanager
def _raw_only() -> Iterator[None]:
    """Answer the read queries from the raw tables alone (every segment is a raw edge)."""
    original = queries.plan
    queries.plan = lambda start, end, **_: Segments(start, end, end, end, end, end)
    try:
        yield
    finally:
        queries.plan = original


async def _latencies(
    store: str, start: datetime, end: datetime, reps: int, raw: bool
) -> tuple[dict[str, list[float]], dict[str, list[dict]]]:
    """Milliseconds of each query over every workflow, `reps` rounds; and the answers."""
    conn = await connect(store, statement_timeout=timedelta(minutes=30))
    times: dict[str, list[float]] = {q: [] for q in QUERIES}
    answers: dict[str, list[dict]] = {q: [] for q in QUERIES}
    try:
        wfs = await queries.list_workflows(conn, None)
        with _raw_only() if raw else contextlib.nullcontext():
            for name, fn in QUERIES.items():
                await fn(conn, wfs[0], start, end)
                for rep in range(reps):
                    for wf in wfs:
                        t = time.perf_counter()
                        got = await fn(conn, wf, start, end)
                        times[name].append((time.perf_counter() - t) * 1000)
                        if rep == 0:
                            answers[name].append(got)
    finally:
        await conn.close()
    return times, answers


def run(
    executions: int,
    batch: int = 5000,
    reps: int = 10,
    raw_reps: int = 1,
    quick: bool = False,
) -> list[Figure]:
    """Ingest the same source into both backends, then time the read queries on each."""
    if quick:
        reps = 1
    scale = f"{executions:,} executions"
    now = datetime.now(UTC).replace(microsecond=0)
    start, end = now - timedelta(days=DAYS, minutes=17), now
    figures: list[Figure] = []
    ingest: dict[str, dict[str, float]] = {}
    answers: dict[tuple[str, bool], dict[str, list[dict]]] = {}
    lat: dict[tuple[str, bool], dict[str, list[float]]] = {}
    compression = (0.0, 0.0, 0)
    with cluster(fast=True) as c:
        if not c.has_timescaledb:
            raise SystemExit(f"TimescaleDB is not installed: {c.timescaledb_reason}")
        c.create_database("source")
        asyncio.run(_fill_source(c.dsn("source"), executions, now))
        for backend in BACKENDS:
            db = f"store_{backend}"
            c.create_database(db)
            if backend == "timescaledb":
                c.psql("CREATE EXTENSION timescaledb", dbname=db)
            ingest[backend] = asyncio.run(_ingest(c.dsn("source"), c.dsn(db), backend, batch))
            for raw in (False, True):
                n = raw_reps if raw else reps
                lat[backend, raw], answers[backend, raw] = asyncio.run(
                    _latencies(c.dsn(db), start, end, n, raw)
                )
            if backend == "timescaledb":
                compression = asyncio.run(_compression(c.dsn(db), now, timedelta(days=7)))
    for backend in BACKENDS:
        i = ingest[backend]
        figures += [
            Figure("backends", scale, f"{backend}: ingest executions/s (poll, wall clock)",
                   i["written"] / i["poll"], "rows/s"),
            Figure("backends", scale, f"{backend}: ingest CPU (exporter + store server)",
                   i["poll_cpu"], "s"),
            Figure("backends", scale, f"{backend}: rollup refresh after ingest (wall clock)",
                   i["refresh"], "s"),
            Figure("backends", scale, f"{backend}: rollup refresh CPU (store server)",
                   i["refresh_cpu"], "s"),
        ]
    pg, ts = ingest["postgres"], ingest["timescaledb"]
    figures += [
        Figure("backends", scale, "timescaledb / postgres ingest rate (wall clock)",
               100 * pg["poll"] / ts["poll"], "%", target="≥ 80 %"),
        Figure("backends", scale, "timescaledb / postgres ingest rate (by CPU seconds)",
               100 * pg["poll_cpu"] / ts["poll_cpu"], "%", target="≥ 80 %"),
    ]
    before, after, chunks = compression
    figures += [
        Figure("backends", scale, "timescaledb: raw tables before compression", before / 2**20,
               "MiB"),
        Figure("backends", scale, f"timescaledb: compression ratio ({chunks} chunks older "
               "than 7 days compressed)", before / after if after else 0.0, "x"),
    ]
    for backend in BACKENDS:
        for q in QUERIES:
            figures.append(
                Figure("backends", scale, f"{backend}: {q} over {DAYS} days p95",
                       percentile(lat[backend, False][q], 95), "ms",
                       "same query over raw tables", percentile(lat[backend, True][q], 95),
                       "< 20 ms")
            )
    for q in QUERIES:
        ref = answers["postgres", False][q]
        for key, got in answers.items():
            if got[q] != ref:
                raise AssertionError(f"{q}: {key} differs from postgres aggregates")
    return figures


def main() -> None:
    """Command line: `python -m bench.bench_backends --executions 1000000`."""
    p = argparse.ArgumentParser()
    p.add_argument("--executions", type=int, nargs="+", default=[1_000_000])
    p.add_argument("--batch-size", type=int, default=5000)
    p.add_argument("--reps", type=int, default=10, help="rounds over every workflow (aggregates)")
    p.add_argument("--raw-reps", type=int, default=1, help="rounds over every workflow (raw)")
    args = p.parse_args()
    figures = [
        f for n in args.executions for f in run(n, args.batch_size, args.reps, args.raw_reps)
    ]
    print(machine())
    print(markdown(figures))


if __name__ == "__main__":
    main()
