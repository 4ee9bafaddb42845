"""Replicas never double: two real `wfa exporter` processes on one store, scraped together by a
real Prometheus with the shipped scrape rules, give every dashboard query and recording rule the
values a single exporter on an identical store gives, before and after the leader is killed;
counters continue across the switch (no reset, no doubled series), so increase() over it is
the real change."""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest
import yaml

from exporter.simulate.generate import advance, generate
from exporter.simulate.model import SimData
from exporter.simulate.writer import create_source_schema, upsert_executions, write
from monitoring import rendered
from tests.conftest import Databases, PgServer
from tests.integration.dashboard_board import Board, Choice
from tests.integration.prom_server import RULES_DIR, Prometheus, free_port, needs_prometheus
from tests.kit.grafana import Query, expand_promql, queries

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = {name: json.loads(text) for name, text in rendered().items()}
WORKFLOW_DASHBOARDS = ("overview.json", "funnel.json", "actions.json")
SCRAPE = timedelta(seconds=1)
RECORDED = [
    r["record"]
    for path in sorted(RULES_DIR.glob("*.yml"))
    for g in yaml.safe_load(path.read_text())["groups"]
    for r in g["rules"]
    if "record" in r
]


class Exporter:
    """A `wfa exporter` process on its own metrics port."""

    def __init__(self, dsn: str, workdir: Path, name: str, reasons: list[str]):
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.config = workdir / f"{name}.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "source": {"dsn": dsn},
                    "exporter": {"poll_interval": "1s", "refresh_interval": "2s"},
                    # every exit reason allowlisted: labels never depend on when a snapshot
                    # ran during the first ingest (top-N promotion would)
                    "metrics": {
                        "listen": self.target,
                        "snapshot_interval": "1s",
                        "exit_reasons": reasons,
                        "top_reasons": 0,
                    },
                }
            )
        )
        self.log = workdir / f"{name}.log"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "exporter", "exporter", "--config", str(self.config)],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    async def leader(self, http: aiohttp.ClientSession) -> bool | None:
        """The replica's wfa_exporter_leader, None while it does not answer."""
        try:
            async with http.get(f"http://{self.target}/metrics") as r:
                body = await r.text()
        except aiohttp.ClientError:
            return None
        m = re.search(r"^wfa_exporter_leader (\S+)$", body, re.MULTILINE)
        return None if m is None else float(m.group(1)) == 1

    def stop(self) -> None:
        """SIGTERM, then SIGKILL."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def _source(dsn: str, now: datetime) -> SimData:
    data = generate(executions=1500, days=3, workflows=5, tenants=2, seed=41, now=now)
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        await write(conn, data)
    finally:
        await conn.close()
    return data


async def _move(dsn: str, data: SimData, to: datetime) -> None:
    """The source moves on to `to` (the same changes for the same data and seed)."""
    changed = advance(data, to, seed=43)
    assert changed
    conn = await asyncpg.connect(dsn)
    try:
        await upsert_executions(conn, changed)
    finally:
        await conn.close()


def _counts_only(expr: str) -> bool:
    """A count from increase()/rate(): Prometheus extrapolates it from its own samples."""
    if "histogram_quantile" in expr or re.search(r"\)\s*/\s*\(", expr):
        return False
    return "increase(" in expr or "rate(" in expr


def _same(a: dict, b: dict, approx: bool, where: str) -> None:
    assert set(a) == set(b), (where, set(a) ^ set(b))
    for k, v in a.items():
        if math.isnan(v) and math.isnan(b[k]):
            continue
        if approx:
            assert v == pytest.approx(b[k], rel=0.3, abs=1e-9), (where, dict(k), v, b[k])
        else:
            assert v == pytest.approx(b[k], rel=1e-9, abs=1e-12), (where, dict(k), v, b[k])


async def _compare(
    two: Prometheus, one: Prometheus, conn: asyncpg.Connection, window: timedelta
) -> int:
    """Every dashboard query and recording rule: two replicas == one exporter; how many."""
    compared = 0
    at = datetime.now(UTC) - timedelta(seconds=2)
    for name in WORKFLOW_DASHBOARDS:
        d = DASHBOARDS[name]
        for choice in (Choice("all", "all"), Choice("one", "several")):
            board = Board(conn, d, tsdb=False)
            await board.choose(choice, at - timedelta(days=7), at)
            for q in (q for q in queries(name, d) if q.kind == "prometheus"):
                expr = _expand(q, board, window)
                a, b = await two.values(expr, at), await one.values(expr, at)
                _same(a, b, _counts_only(expr), f"{name}/{q.panel}/{q.ref} {choice}")
                compared += 1
    for record in RECORDED:
        a, b = await two.values(record, at), await one.values(record, at)
        strip = lambda v: {frozenset(x for x in k if x[0] != "instance"): n for k, n in v.items()}  # noqa: E731
        _same(strip(a), strip(b), False, record)
        compared += 1
    return compared


def _expand(q: Query, board: Board, window: timedelta) -> str:
    return expand_promql(
        q.text, board.templating, interval=window - SCRAPE, range_=window, scrape=SCRAPE
    )


async def _wait(cond: Callable[[], Awaitable[bool]], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not await cond():
        assert time.monotonic() < deadline, f"timed out: {what}"
        await asyncio.sleep(0.3)


async def _total(prom: Prometheus, expr: str) -> float:
    found = await prom.series(expr)
    return float(found[0]["value"][1]) if found else -1.0


@needs_prometheus
async def test_two_replicas_equal_one_exporter_across_a_failover(
    pg: PgServer, databases: Databases, tmp_path: Path
) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    dsn_two = pg.dsn(await databases.create())
    dsn_one = pg.dsn(await databases.create())
    data_two, data_one = await _source(dsn_two, now), await _source(dsn_one, now)
    reasons = sorted({e.exit_reason for e in data_one.executions if e.exit_reason})
    replicas = [
        Exporter(dsn_two, tmp_path, "a", reasons), Exporter(dsn_two, tmp_path, "b", reasons)
    ]
    single = Exporter(dsn_one, tmp_path, "single", reasons)
    conn = await asyncpg.connect(dsn_two)
    http = aiohttp.ClientSession()
    try:
        async with (
            Prometheus([r.target for r in replicas], rules=True) as two,
            Prometheus([single.target], rules=True) as one,
        ):
            job = two.settings.job
            completions = f"sum(wfa_workflow_completions_total{{{job}}})"

            def completed() -> int:
                return sum(e.status == "completed" for e in data_one.executions)

            enrollments = f"sum(wfa_workflow_enrollments_total{{{job}}})"

            async def caught_up() -> bool:
                a, b = await _total(two, completions), await _total(one, completions)
                c, d = await _total(two, enrollments), await _total(one, enrollments)
                return a == b == completed() and c == d == len(data_one.executions)

            await _wait(caught_up, "both stores ingested and scraped", 90)
            roles = [await r.leader(http) for r in replicas]
            assert sorted(roles) == [False, True], roles
            leader, standby = (replicas[0], replicas[1]) if roles[0] else (replicas[1], replicas[0])
            assert await _total(two, f"sum(wfa_exporter_leader{{{job}}})") == 1
            # the standby serves no workflow series: one series per workflow, without instance
            assert await _total(two, f"count(wfa_workflow_enrollments_total{{{job}}})") == 5
            assert not await two.series(
                f'{{{job}, __name__=~"wfa_(workflow|step|funnel)_.+", instance!=""}}'
            )
            # the comparisons' windows reach 3 s before `started`: start them after the last
            # jump of the first ingest has left that margin (plus two scrapes)
            await asyncio.sleep(3 + 2 * SCRAPE.total_seconds())
            started = datetime.now(UTC)
            completed_before = completed()

            # phase 1: the sources move on by half a day, identically
            await _move(dsn_two, data_two, now + timedelta(hours=12))
            await _move(dsn_one, data_one, now + timedelta(hours=12))
            assert completed() > completed_before
            await _wait(caught_up, "phase 1 ingested and scraped")
            await asyncio.sleep(4)
            window = timedelta(seconds=round((datetime.now(UTC) - started).total_seconds()) + 3)
            before_kill = await _compare(two, one, conn, window)
            assert before_kill > 60

            # the leader dies; the standby takes over and continues the same series
            leader.proc.send_signal(signal.SIGKILL)
            leader.proc.wait()
            killed_at = datetime.now(UTC)

            async def took_over() -> bool:
                return bool(await standby.leader(http))

            await _wait(took_over, "the standby took over", 60)
            await _move(dsn_two, data_two, now + timedelta(hours=24))
            await _move(dsn_one, data_one, now + timedelta(hours=24))
            await _wait(caught_up, "phase 2 ingested and scraped by both")
            await asyncio.sleep(4)
            window = timedelta(seconds=round((datetime.now(UTC) - started).total_seconds()) + 3)
            after_kill = await _compare(two, one, conn, window)
            assert after_kill == before_kill
            # increase() across the switch is the real change, with no spike or dip
            seconds = int(window.total_seconds())
            growth = f"sum(increase(wfa_workflow_completions_total{{{job}}}[{seconds}s]))"
            real = completed() - completed_before
            a, b = await _total(two, growth), await _total(one, growth)
            assert a == pytest.approx(b, rel=0.3)
            assert real <= a <= real * window / (window - 3 * SCRAPE) + 1e-6, (a, real)
            resets = await two.values(f"resets(wfa_workflow_completions_total{{{job}}}[5m])")
            assert resets and set(resets.values()) == {0.0}, resets
            counts = await two.values(
                f"max_over_time(count(wfa_workflow_enrollments_total{{{job}}})[3m:1s])"
            )
            assert list(counts.values()) == [5.0], "never a doubled series"
            assert (datetime.now(UTC) - killed_at).total_seconds() < 120
            assert await _total(two, f"sum(wfa_exporter_leader{{{job}}})") == 1
    finally:
        await http.close()
        await conn.close()
        for e in (*replicas, single):
            e.stop()
