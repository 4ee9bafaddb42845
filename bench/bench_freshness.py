"""Freshness: time from a source commit to the SSE event and to the changed value on /metrics.

`wfa run` (exporter, API and /metrics in one process) polls a filled source every
second and builds its metrics snapshot every second. One client holds an SSE stream on a
workflow and reads /metrics in a tight loop; each sample commits one new enrollment of that
workflow to the source and times both, while a live workload commits `--live-rate` other
executions per second (200 by default) to the other workflows. The physical limit is the
poll interval: a change waits for the next poll (half an interval on average) before anything
can see it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg

from bench.common import Figure, cluster, markdown, percentile, write_history
from exporter.api.auth import token_digest
from exporter.ingest import NOTIFY_CHANNEL
from exporter.simulate.generate import simulate_execution
from exporter.simulate.model import SimWorkflow
from exporter.simulate.writer import create_source_schema, upsert_executions
from tests.kit.devdb import free_port

POLL_S = 1.0
SNAPSHOT_S = 1.0
TOKEN = "wfa_bench_freshness_token"
TENANT = "tenant-1"
SAMPLE_TIMEOUT_S = 30.0
LIVE_RATE = 200
"""Execution changes per second committed to the other workflows while samples are taken."""
LIVE_TICK_S = 0.1


async def _fill(dsn: str, executions: int) -> list[SimWorkflow]:
    """The source history; its workflows, the measured tenant's first."""
    now = datetime.now(UTC).replace(microsecond=0)
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        workflows = await write_history(
            conn, executions=executions, days=30, workflows=5, tenants=2, seed=3, now=now
        )
        await conn.execute("ANALYZE")
    finally:
        await conn.close()
    return sorted(workflows, key=lambda w: w.tenant_id != TENANT)


def _config(dsn: str, port: int, metrics_port: int, path: Path) -> None:
    cfg = {
        "source": {"dsn": dsn},
        "store": {"backend": "postgres"},
        "exporter": {"poll_interval": f"{POLL_S:g}s", "refresh_interval": "30s"},
        "metrics": {"listen": f"127.0.0.1:{metrics_port}", "snapshot_interval": f"{SNAPSHOT_S:g}s"},
        "api": {
            "listen": f"127.0.0.1:{port}",
            "tokens": [
                {"name": "bench", "sha256": token_digest(TOKEN), "tenant": TENANT,
                 "scopes": ["read"]}
            ],
        },
    }
    path.write_text(json.dumps(cfg))


def _backfill(config: Path) -> float:
    """Import the history with `wfa backfill` so the server starts on a full store; seconds."""
    began = time.monotonic()
    subprocess.run(
        [sys.executable, "-m", "exporter", "backfill", "--config", str(config)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.monotonic() - began


@contextlib.contextmanager
def _server(config: Path, port: int) -> Iterator[subprocess.Popen[str]]:
    """`wfa run` until the block ends (SIGTERM, bounded wait)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "run", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"wfa run exited: {proc.stderr.read()[-2000:]}")
            url = f"http://127.0.0.1:{port}/readyz"
            with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("wfa run did not become ready")
            time.sleep(0.3)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _metric(session: aiohttp.ClientSession, url: str, pattern: re.Pattern[str]) -> float:
    async with session.get(url) as resp:
        text = await resp.text()
    m = pattern.search(text)
    return float(m.group(1)) if m else 0.0


async def _stream(session: aiohttp.ClientSession, url: str, events: asyncio.Queue[float]) -> None:
    headers = {"Authorization": f"Bearer {TOKEN}", "Accept": "text/event-stream"}
    async with session.get(url, headers=headers, timeout=aiohttp.ClientTimeout()) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"event: analytics"):
                events.put_nowait(time.monotonic())


async def _live(dsn: str, workflows: list[SimWorkflow], rate: int, stop: asyncio.Event) -> float:
    """Commit `rate` new executions per second to `workflows` until `stop`; the rate achieved."""
    rng = random.Random(11)
    conn = await asyncpg.connect(dsn)
    per_tick = max(1, round(rate * LIVE_TICK_S))
    sent, began = 0, time.monotonic()
    try:
        while not stop.is_set():
            now = datetime.now(UTC)
            batch = [
                simulate_execution(
                    rng, rng.choice(workflows), now, now,
                    execution_id=f"live-{time.time_ns()}-{k}", contact_id=f"contact-live-{k}",
                )
                for k in range(per_tick)
            ]
            await upsert_executions(conn, batch)
            sent += len(batch)
            ahead = began + sent / rate - time.monotonic()
            if ahead > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), ahead)
    finally:
        await conn.close()
    return sent / (time.monotonic() - began)


async def _measure(
    api: str, metrics_url: str, dsn: str, workflows: list[SimWorkflow], samples: int, rate: int
) -> tuple[list[float], list[float], list[float], float]:
    """Milliseconds from commit to the ingest NOTIFY, the SSE event and the new /metrics value
    of the first workflow, while the others take `rate` changes per second; the rate achieved."""
    wf, others = workflows[0], workflows[1:]
    pattern = re.compile(
        r'^wfa_workflow_enrollments_total\{[^}]*workflow="' + re.escape(wf.id) + r'"[^}]*\} (\S+)',
        re.M,
    )
    rng = random.Random(7)
    events: asyncio.Queue[float] = asyncio.Queue()
    notified: asyncio.Queue[float] = asyncio.Queue()
    sse: list[float] = []
    scraped: list[float] = []
    ingested: list[float] = []

    def on_notify(_c: object, _pid: int, _channel: str, payload: str) -> None:
        if wf.id in payload:
            notified.put_nowait(time.monotonic())

    stop = asyncio.Event()
    live = asyncio.create_task(_live(dsn, others, rate, stop)) if rate and others else None
    async with aiohttp.ClientSession() as session:
        stream = asyncio.create_task(
            _stream(session, f"{api}/api/v1/workflows/{wf.id}/analytics/stream", events)
        )
        conn = await asyncpg.connect(dsn)
        listener = await asyncpg.connect(dsn)
        await listener.add_listener(NOTIFY_CHANNEL, on_notify)
        try:
            await asyncio.wait_for(events.get(), SAMPLE_TIMEOUT_S)  # the initial snapshot
            for i in range(samples):
                await asyncio.sleep(1.2 + rng.uniform(0, POLL_S))
                for q in (events, notified):
                    while not q.empty():
                        q.get_nowait()
                before = await _metric(session, metrics_url, pattern)
                now = datetime.now(UTC)
                ex = simulate_execution(
                    rng, wf, now, now, execution_id=f"fresh-{time.time_ns()}-{i}",
                    contact_id=f"contact-fresh-{i}",
                )
                await upsert_executions(conn, [ex])
                t0 = time.monotonic()
                got_sse = got_metric = None
                while (got_sse is None or got_metric is None) and (
                    time.monotonic() - t0 < SAMPLE_TIMEOUT_S
                ):
                    if got_sse is None:
                        with contextlib.suppress(TimeoutError):
                            t = await asyncio.wait_for(events.get(), 0.01)
                            if t >= t0:
                                got_sse = t
                    if got_metric is None:
                        if await _metric(session, metrics_url, pattern) > before:
                            got_metric = time.monotonic()
                        else:
                            await asyncio.sleep(0.01)
                if got_sse is None or got_metric is None:
                    raise RuntimeError(f"sample {i}: no change seen in {SAMPLE_TIMEOUT_S:.0f} s")
                sse.append((got_sse - t0) * 1000)
                scraped.append((got_metric - t0) * 1000)
                notes = []
                while not notified.empty():
                    notes.append(notified.get_nowait())
                after = [t for t in notes if t >= t0]
                if after:
                    ingested.append((min(after) - t0) * 1000)
        finally:
            stop.set()
            await listener.close()
            stream.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await stream
            await conn.close()
    achieved = await live if live is not None else 0.0
    return ingested, sse, scraped, achieved


def run(
    executions: int, *, quick: bool = False, samples: int | None = None, rate: int | None = None
) -> list[Figure]:
    """Freshness with `executions` rows of history, imported first with `wfa backfill`."""
    samples = samples or (3 if quick else 12)
    rate = (20 if quick else LIVE_RATE) if rate is None else rate
    scale = f"{executions:,} executions"
    with cluster() as c, tempfile.TemporaryDirectory() as tmp:
        c.create_database("wfa")
        dsn = c.dsn("wfa")
        workflows = asyncio.run(_fill(dsn, executions))
        port, mport = free_port(), free_port()
        config = Path(tmp) / "wfa.json"
        _config(dsn, port, mport, config)
        imported = _backfill(config)
        with _server(config, port):
            ingested, sse, scraped, achieved = asyncio.run(
                _measure(
                    f"http://127.0.0.1:{port}",
                    f"http://127.0.0.1:{mport}/metrics",
                    dsn,
                    workflows,
                    samples,
                    rate,
                )
            )
    poll = f"poll interval {POLL_S:g} s, {achieved:,.0f} live changes/s"
    limit = POLL_S * 1000
    return [
        Figure("backfill", scale, "first import rows/s (wfa backfill, incl. rollup refresh)",
               executions / imported, "rows/s"),
        Figure("freshness", scale, f"commit → ingested (NOTIFY) p50 ({poll})",
               percentile(ingested, 50), "ms", "physical limit: mean wait for the next poll",
               limit / 2),
        Figure("freshness", scale, f"commit → SSE event p50 ({poll})", percentile(sse, 50),
               "ms", "physical limit: mean wait for the next poll", limit / 2),
        Figure("freshness", scale, f"commit → SSE event p95 ({poll})", percentile(sse, 95),
               "ms", "physical limit: one poll interval", limit, f"≤ {limit + 1000:,.0f} ms"),
        Figure("freshness", scale,
               f"commit → new /metrics value p50 ({poll}, snapshot {SNAPSHOT_S:g} s)",
               percentile(scraped, 50), "ms", "physical limit: mean wait for the next poll",
               limit / 2),
        Figure("freshness", scale,
               f"commit → new /metrics value p95 ({poll}, snapshot {SNAPSHOT_S:g} s)",
               percentile(scraped, 95), "ms", "physical limit: poll + snapshot interval",
               limit + SNAPSHOT_S * 1000, f"≤ {limit + SNAPSHOT_S * 1000 + 1000:,.0f} ms"),
    ]


def main() -> None:
    """Command line: `python -m bench.bench_freshness --executions 100000`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--executions", type=int, nargs="+", default=[100_000])
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--live-rate", type=int, default=LIVE_RATE)
    args = p.parse_args()
    figures = [
        f for n in args.executions for f in run(n, samples=args.samples, rate=args.live_rate)
    ]
    print(markdown(figures))


if __name__ == "__main__":
    main()
