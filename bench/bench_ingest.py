"""Ingest throughput, empty-poll cost and peak RSS, beside PostgreSQL COPY of the same rows."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.common import Figure, cluster, markdown, peak_rss_mb, percentile, write_history
from exporter.config import config_from_dict
from exporter.ingest import Ingestor, PollResult
from exporter.service import ExporterService
from exporter.simulate.generate import simulate_execution
from exporter.simulate.model import SimExecution, SimWorkflow
from exporter.simulate.writer import create_source_schema, upsert_executions

STEADY_EXECUTIONS = 20_000
"""Executions committed again in the steady-state measure (fewer at smaller scales)."""
STEADY_BATCH = 1_000
"""Poll batch of the steady-state measure: a steady state sees small batches."""
STEADY_AGE = timedelta(minutes=10)


async def _fill_source(dsn: str, executions: int) -> list[SimWorkflow]:
    now = datetime.now(UTC).replace(microsecond=0)
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        workflows = await write_history(
            conn, executions=executions, days=90, workflows=10, tenants=3, seed=1, now=now
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return workflows


def _in_flight(
    workflows: list[SimWorkflow], n: int, enrolled: datetime, seen: timedelta
) -> list[SimExecution]:
    """`n` executions enrolled at `enrolled`, as seen `seen` later; the same `n` seen later
    on (same seeds) are the same executions moved on."""
    return [
        simulate_execution(
            random.Random(k), workflows[k % len(workflows)], enrolled, enrolled + seen,
            execution_id=f"steady-{k}", contact_id=f"contact-steady-{k}",
        )
        for k in range(n)
    ]


@contextlib.asynccontextmanager
async def _exporter(
    src: str, store: str, batch: int | None = None
) -> AsyncIterator[tuple[Ingestor, Callable[[], Awaitable[PollResult]]]]:
    """An opened exporter on `src` and `store`: its ingestor, and one poll as `wfa run` polls
    (a source connection, a store connection and a second one for the stored states)."""
    exporter = {} if batch is None else {"exporter": {"batch_size": batch}}
    cfg = config_from_dict(
        {"source": {"dsn": src}, "store": {"dsn": store, "backend": "postgres"}, **exporter}
    )
    svc = ExporterService(cfg)
    await svc.open()
    try:
        assert svc.store and svc.source and svc.ingestor
        ingestor = svc.ingestor
        async with (
            svc.store.acquire() as st,
            svc.store.acquire() as lookup,
            svc.source.acquire() as s,
        ):
            yield ingestor, lambda: ingestor.poll(s, st, lookup)
    finally:
        await svc.close()


@dataclass(frozen=True, slots=True)
class Steady:
    """The steady-state measure: rates of the polls that wrote and of the re-read after."""

    changes_per_s: float
    reread_per_s: float
    changed: int


async def _steady(src: str, store: str, workflows: list[SimWorkflow], n: int) -> Steady:
    """Execution changes per second of the exporter's polls on a full store: `n` executions
    are ingested in flight, then the same `n` are committed again ten minutes on (steps run,
    some end) and polled in `STEADY_BATCH` batches until a poll writes nothing (that last
    poll re-reads them, inside the overlap window, and is timed apart too)."""
    enrolled = datetime.now(UTC).replace(microsecond=0) - STEADY_AGE
    before = _in_flight(workflows, n, enrolled, timedelta(seconds=1))
    after = _in_flight(workflows, n, enrolled, STEADY_AGE)
    changed = sum(a != b for a, b in zip(before, after, strict=True))
    conn = await asyncpg.connect(src)
    try:
        async with _exporter(src, store, STEADY_BATCH) as (_, poll):

            async def commit_and_poll(rows: list[SimExecution]) -> tuple[float, float]:
                stamp = datetime.now(UTC).replace(microsecond=0)
                for ex in rows:  # committed now, whatever the simulated clock said
                    ex.updated_at = stamp
                await upsert_executions(conn, rows)
                t = time.perf_counter()
                while True:
                    polled = time.perf_counter()
                    res = await poll()
                    if res.rejected:
                        raise RuntimeError(
                            f"steady-state rows rejected: {res.rejected}; "
                            f"first of them: {await _rejected_sample(store)}"
                        )
                    if not res.written:
                        break
                done = time.perf_counter()
                return done - t, res.read / (done - polled)

            await commit_and_poll(before)
            took, reread = await commit_and_poll(after)
    finally:
        await conn.close()
    return Steady(n / took, reread, changed)


async def _rejected_sample(store: str, n: int = 3) -> list[tuple[str, str, str]]:
    """The latest quarantined rows of the store (id, reason, detail), to say why."""
    conn = await asyncpg.connect(store)
    try:
        rows = await conn.fetch(
            "SELECT source_id, reason, left(detail, 300) AS detail FROM wfa.rejected_rows"
            " ORDER BY rejected_at DESC LIMIT $1",
            n,
        )
    finally:
        await conn.close()
    return [(r["source_id"], r["reason"], r["detail"]) for r in rows]


def _ingest_subprocess(src: str, store: str, batch: int) -> tuple[float, float, dict]:
    """Run `wfa exporter --once` in its own process; return (seconds, peak RSS MiB, output)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(f"source: {{dsn: '{src}'}}\nstore: {{dsn: '{store}', backend: postgres}}\n"
                f"exporter: {{batch_size: {batch}}}\n")
    cmd = [sys.executable, "-m", "exporter", "exporter", "--once", "--config", f.name]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            peak = max(peak, peak_rss_mb(proc.pid))
        time.sleep(0.2)
    took = time.perf_counter() - started
    out, err = proc.communicate()
    Path(f.name).unlink()
    if proc.returncode:
        raise RuntimeError(f"ingest failed: {err[-2000:]}")
    return took, peak, json.loads(out.strip().splitlines()[-1])


async def _empty_polls(src: str, store: str, n: int) -> list[float]:
    out = []
    async with _exporter(src, store) as (_, poll):
        for _ in range(n):
            t = time.perf_counter()
            res = await poll()
            out.append((time.perf_counter() - t) * 1000)
            assert res.written == 0
    return out


async def _copy_rate(src: str, store: str) -> float:
    """Rows per second of a binary COPY of the source executions into an empty clone (the rows
    pass through a file, not memory: at 10M they take several GB)."""
    a, b = await asyncpg.connect(src), await asyncpg.connect(store)
    try:
        with tempfile.TemporaryDirectory(prefix="wfa-copy-") as tmp:
            path = Path(tmp) / "executions.copy"
            await a.copy_from_table("workflow_executions", output=path, format="binary")
            cols = await a.fetch(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'workflow_executions' ORDER BY ordinal_position"
            )
            ddl = ", ".join(f'"{c["column_name"]}" {c["data_type"]}' for c in cols)
            await b.execute(f"DROP TABLE IF EXISTS copy_limit; CREATE TABLE copy_limit ({ddl}, "
                            "PRIMARY KEY (id))")
            await b.execute("CREATE INDEX ON copy_limit (updated_at, id)")
            rows = await a.fetchval("SELECT count(*) FROM workflow_executions")
            t = time.perf_counter()
            await b.copy_to_table("copy_limit", source=path, format="binary")
            took = time.perf_counter() - t
            await b.execute("DROP TABLE copy_limit")
        return rows / took
    finally:
        await a.close()
        await b.close()


@dataclass(frozen=True, slots=True)
class Ingested:
    """A private cluster whose source was filled and ingested by the exporter once."""

    source: str
    store: str
    seconds: float
    peak_rss_mb: float
    output: dict
    workflows: list[SimWorkflow]


@contextlib.contextmanager
def ingested(executions: int, batch: int) -> Iterator[Ingested]:
    """Fill a new source with `executions` and run the exporter's first ingest into a store."""
    with cluster() as c:
        c.create_database("source")
        c.create_database("store")
        src, store = c.dsn("source"), c.dsn("store")
        workflows = asyncio.run(_fill_source(src, executions))
        took, rss, out = _ingest_subprocess(src, store, batch)
        yield Ingested(src, store, took, rss, out, workflows)


def run(executions: int, batch: int = 5000) -> list[Figure]:
    """Measure ingest at `executions` source rows."""
    scale = f"{executions:,} executions"
    recommitted = min(STEADY_EXECUTIONS, executions)
    with ingested(executions, batch) as i:
        src, store, took, rss = i.source, i.store, i.seconds, i.peak_rss_mb
        step_rows = i.output["rows"].get("step_runs", 0)
        polls = asyncio.run(_empty_polls(src, store, 50))
        copy = asyncio.run(_copy_rate(src, store))  # before the steady rows join the source
        steady = asyncio.run(_steady(src, store, i.workflows, recommitted))
    rate = executions / took
    return [
        Figure("ingest", scale, "execution changes/s (first ingest, incl. rollup refresh)",
               rate, "rows/s", "PostgreSQL COPY of the same rows", copy),
        Figure("ingest", scale, "first ingest as a share of the COPY rate", 100 * rate / copy,
               "%", target="≥ 25 %"),
        Figure("ingest", scale, "step entries/s", step_rows / took, "rows/s"),
        Figure("ingest", scale, "peak RSS of the exporter", rss, "MiB", target="< 300 MiB"),
        Figure("ingest", scale,
               f"steady state: execution changes/s ({recommitted:,} "
               f"executions committed again, {steady.changed:,} of them moved on; batches of "
               f"{STEADY_BATCH:,}, one re-read of the overlap window included, rollup "
               "refresh not included)",
               steady.changes_per_s, "rows/s", target="≥ 10,000 rows/s"),
        Figure("ingest", scale,
               "steady state: re-read of the overlap window, rows/s (each poll re-reads "
               "the rows changed in the last `exporter.overlap`)",
               steady.reread_per_s, "rows/s"),
        Figure("ingest", scale, "empty poll p50", percentile(polls, 50), "ms"),
        Figure("ingest", scale, "empty poll p95", percentile(polls, 95), "ms", target="< 2 ms"),
    ]


def main() -> None:
    """Command line: `python -m bench.bench_ingest --executions 100000`."""
    p = argparse.ArgumentParser()
    p.add_argument("--executions", type=int, nargs="+", default=[100_000, 1_000_000])
    p.add_argument("--batch-size", type=int, default=5000)
    args = p.parse_args()
    figures = [f for n in args.executions for f in run(n, args.batch_size)]
    print(markdown(figures))


if __name__ == "__main__":
    main()
