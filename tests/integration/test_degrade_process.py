"""Real `wfa` processes against databases that are down, restarted or attacked: starting with
the store down, recovering from a store restart (with a bound), slow clients, and the live
simulator surviving a source restart."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from exporter.simulate.generate import generate
from exporter.simulate.writer import create_source_schema, write
from tests.integration.faults import PrivateCluster, WfaProcess, get, wait_until
from tests.integration.test_api_common import api_config, auth
from tests.integration.test_metrics import get as sample
from tests.integration.test_metrics import parse
from tests.kit.devdb import free_port, quote_ident

P = "/api/v1"
RECOVERY_BOUND_S = 20.0
"""Most seconds from a restarted store accepting connections to answers and ingestion."""

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    """A private cluster, initialised and stopped: each test starts and stops it."""
    c = PrivateCluster()
    c.start()
    c.stop()
    try:
        yield c
    finally:
        c.remove()


async def _create_db(cluster: PrivateCluster, name: str, backend: str = "postgres") -> str:
    if backend == "timescaledb" and not cluster.cluster.has_timescaledb:
        pytest.skip(f"TimescaleDB is not installed ({cluster.cluster.timescaledb_reason})")
    conn = await asyncpg.connect(cluster.dsn())
    try:
        await conn.execute(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        await conn.execute(f"CREATE DATABASE {quote_ident(name)}")
    finally:
        await conn.close()
    if backend == "timescaledb":
        conn = await asyncpg.connect(cluster.dsn(name))
        try:
            await conn.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
        finally:
            await conn.close()
    return cluster.dsn(name)


async def _fill_source(dsn: str, executions: int = 600) -> int:
    data = generate(
        executions=executions,
        days=5,
        workflows=2,
        tenants=2,
        seed=7,
        now=datetime.now(UTC) - timedelta(minutes=2),
    )
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        await write(conn, data)
    finally:
        await conn.close()
    return len(data.executions)


async def _count(dsn: str, sql: str, *args: Any) -> int | None:
    try:
        conn = await asyncpg.connect(dsn, timeout=2)
    except (OSError, asyncpg.PostgresError):
        return None
    try:
        return await conn.fetchval(sql, *args)
    except asyncpg.PostgresError:
        return None
    finally:
        await conn.close()


def _config(
    source: str, store: str, tmp: Path, backend: str = "postgres", **extra: Any
) -> dict[str, Any]:
    tokens = api_config(source).model_dump(mode="json")["api"]["tokens"]
    return {
        "source": {"dsn": source},
        "store": {
            "dsn": store,
            "backend": backend,
            "connect_retries": 1,
            "connect_retry_delay": "200ms",
            "connect_retry_max_delay": "1s",
        },
        "exporter": {"poll_interval": "1s", "ready_max_lag": "30s"},
        "metrics": {
            "listen": f"127.0.0.1:{free_port()}",
            "snapshot_interval": "1s",
            **extra,
        },
        "api": {"listen": f"127.0.0.1:{free_port()}", "tokens": tokens, **extra},
        "exports": {"directory": str(tmp / "exports")},
    }


def _url(cfg: dict[str, Any], section: str, path: str) -> str:
    return f"http://{cfg[section]['listen']}{path}"


async def _status(url: str, **kw: Any) -> int:
    return (await get(url, **kw))[0]


async def _metrics(cfg: dict[str, Any]) -> dict:
    status, _, body = await get(_url(cfg, "metrics", "/metrics"))
    assert status == 200
    return parse(body)


def _quiet_log(proc: WfaProcess) -> None:
    """No traceback, and retries logged once per backoff level, not once per attempt."""
    log = proc.log
    assert "Traceback" not in log, log[-3000:]
    retries = [line for line in log.splitlines() if re.search(r"store unreachable \(", line)]
    assert len(retries) <= 4, retries  # 200ms, 400ms, 800ms, 1s: one line each


@pytest.mark.parametrize(
    ("command", "backend"),
    [("run", "postgres"), ("exporter", "postgres"), ("api", "postgres"), ("run", "timescaledb")],
)
async def test_starts_with_the_store_down_then_serves_once_it_is_up(
    command: str, backend: str, cluster: PrivateCluster, db_dsn: str, tmp_path: Path
) -> None:
    """The store is down at start: the process stays up, /healthz and /metrics answer (store_up
    0, source_up 1), /readyz and the API answer 503; the store starts: ingestion happens and
    /readyz turns 200."""
    rows = await _fill_source(db_dsn)
    cluster.start()
    try:
        store = await _create_db(cluster, f"store_{command}", backend)
    finally:
        cluster.stop()
    cfg = _config(db_dsn, store, tmp_path, backend)
    proc = WfaProcess(tmp_path, [command], cfg)
    headers = auth("a_read")
    try:
        health = _url(cfg, "metrics" if command == "exporter" else "api", "/healthz")
        await wait_until(lambda: _is(200, _status(health)), 20, "/healthz")
        if command != "api":

            async def told_apart() -> bool:
                m = await _metrics(cfg)
                return sample(m, "wfa_exporter_store_up") == 0 and (
                    sample(m, "wfa_exporter_source_up") == 1
                )

            await wait_until(told_apart, 20, "store_up 0 and source_up 1")
        if command != "exporter":
            assert await _status(_url(cfg, "api", "/readyz")) == 503
            status, hdrs, body = await get(_url(cfg, "api", f"{P}/workflows"), headers=headers)
            assert status == 503 and int(hdrs["Retry-After"]) > 0, body
        await asyncio.sleep(3)  # far past connect_retries x connect_retry_delay
        assert proc.alive(), proc.log[-3000:]

        cluster.start()
        if command == "api":  # the API alone needs an exporter to migrate and ingest
            once = WfaProcess(tmp_path, ["exporter", "--once"], cfg)
            assert await asyncio.to_thread(once.proc.wait, 120) == 0, once.log[-3000:]
            once.stop()

        async def ingested() -> bool:
            n = await _count(store, "SELECT count(*) FROM wfa.executions")
            return n == rows

        await wait_until(ingested, 60, "the source ingested into the store")
        if command == "exporter":
            m = await _metrics(cfg)
            assert sample(m, "wfa_exporter_store_up") == 1
        else:
            await wait_until(lambda: _is(200, _status(_url(cfg, "api", "/readyz"))), 30, "ready")
            status, hdrs, _ = await get(_url(cfg, "api", f"{P}/workflows"), headers=headers)
            assert status == 200
        assert proc.stop() == 0, proc.log[-3000:]
        _quiet_log(proc)
    finally:
        proc.stop()
        cluster.stop()


async def _is(want: int, status: Any) -> bool:
    return await status == want


async def test_starts_with_the_source_down_and_says_so(
    cluster: PrivateCluster, db_dsn: str, tmp_path: Path
) -> None:
    """The source is down at start, the store up: `wfa run` migrates, answers from the store,
    /readyz 503 naming the source, store_up 1 and source_up 0; the source starts: ingestion."""
    cluster.start()
    try:
        source = await _create_db(cluster, "source_down")
        rows = await _fill_source(source)
    finally:
        cluster.stop()
    cfg = _config(source, db_dsn, tmp_path)
    proc = WfaProcess(tmp_path, ["run"], cfg)
    try:
        ready = _url(cfg, "api", "/readyz")

        async def says_source() -> bool:
            status, _, body = await get(ready)
            return status == 503 and b"source" in body

        await wait_until(says_source, 30, "/readyz naming the source")
        status, _, _ = await get(_url(cfg, "api", f"{P}/workflows"), headers=auth("a_read"))
        assert status == 200
        m = await _metrics(cfg)
        assert sample(m, "wfa_exporter_store_up") == 1
        assert sample(m, "wfa_exporter_source_up") == 0
        cluster.start()

        async def ingested() -> bool:
            return await _count(db_dsn, "SELECT count(*) FROM wfa.executions") == rows

        await wait_until(ingested, 60, "the source ingested")
        await wait_until(lambda: _is(200, _status(ready)), 30, "ready")
        m = await _metrics(cfg)
        assert sample(m, "wfa_exporter_source_up") == 1
        assert proc.stop() == 0, proc.log[-3000:]
        assert "Traceback" not in proc.log, proc.log[-3000:]
    finally:
        proc.stop()
        cluster.stop()


@pytest.mark.parametrize("backend", ["postgres", "timescaledb"])
async def test_recovers_within_a_bound_after_the_store_restarts(
    backend: str,
    cluster: PrivateCluster,
    db_dsn: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`wfa run` while the store restarts: 503 with Retry-After meanwhile, then answers and
    ingestion within RECOVERY_BOUND_S of the store accepting connections again."""
    rows = await _fill_source(db_dsn)
    cluster.start()
    try:
        store = await _create_db(cluster, f"store_restart_{backend}", backend)
    except BaseException:
        cluster.stop()
        raise
    cfg = _config(db_dsn, store, tmp_path, backend)
    proc = WfaProcess(tmp_path, ["run"], cfg)
    headers = auth("a_read")
    try:
        ready = _url(cfg, "api", "/readyz")
        await wait_until(lambda: _is(200, _status(ready)), 60, "ready")
        assert await _count(store, "SELECT count(*) FROM wfa.executions") == rows
        wid = (await get(_url(cfg, "api", f"{P}/workflows"), headers=headers))[2]
        summary = _url(cfg, "api", f"{P}/workflows/wf-01/analytics?range=24h")
        assert await _status(summary, headers=headers) == 200, wid

        down_at = time.monotonic()
        await asyncio.to_thread(cluster.stop)
        status, hdrs, _ = await get(summary, headers=headers)
        assert status == 503 and int(hdrs["Retry-After"]) > 0
        assert await _status(ready) == 503

        async def store_down() -> bool:
            m = await _metrics(cfg)
            return sample(m, "wfa_exporter_store_up") == 0 and (
                sample(m, "wfa_exporter_source_up") == 1
            )

        await wait_until(store_down, 20, "store_up 0, source_up 1")
        await asyncio.sleep(2)  # a few polls fail and back off

        await asyncio.to_thread(cluster.start)
        back_at = time.monotonic()
        marker = f"after-restart-{int(time.time())}"
        conn = await asyncpg.connect(db_dsn)
        try:
            await conn.execute(
                "INSERT INTO workflow_executions (id, tenant_id, workflow_id, contact_id, status,"
                " enrolled_at, step_progress, updated_at) SELECT $1, tenant_id, workflow_id,"
                " 'c', 'active', now(), '[]', now() FROM workflow_executions LIMIT 1",
                marker,
            )
        finally:
            await conn.close()

        async def answers() -> float | None:
            ok = await _status(summary, headers=headers) == 200
            return time.monotonic() if ok else None

        async def ingests() -> float | None:
            n = await _count(store, "SELECT count(*) FROM wfa.executions WHERE execution_id = $1",
                             marker)
            return time.monotonic() if n == 1 else None

        api_at, ingest_at = await asyncio.gather(
            wait_until(answers, RECOVERY_BOUND_S + 10, "answers again", 0.05),
            wait_until(ingests, RECOVERY_BOUND_S + 10, "ingestion again", 0.05),
        )
        await wait_until(lambda: _is(200, _status(ready)), 10, "ready again")
        recovery = max(api_at, ingest_at) - back_at
        with capsys.disabled():
            print(
                f"\nstore restart ({backend}): down {back_at - down_at:.1f} s; after it accepted"
                " connections"
                f" again: API 200 in {api_at - back_at:.2f} s, the new row ingested in"
                f" {ingest_at - back_at:.2f} s (bound {RECOVERY_BOUND_S:g} s)"
            )
        assert recovery < RECOVERY_BOUND_S
        m = await _metrics(cfg)
        assert sample(m, "wfa_exporter_store_up") == sample(m, "wfa_exporter_source_up") == 1
        assert proc.stop() == 0
        assert "Traceback" not in proc.log, proc.log[-3000:]
    finally:
        proc.stop()
        cluster.stop()


async def _half_open(host: str, port: int, trickle: bool) -> float:
    """Open a request that never completes its head (silent, or a header byte every 0.25 s);
    seconds from connecting until the server closes the connection."""
    reader, writer = await asyncio.open_connection(host, port)
    began = time.monotonic()
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + (b"X-Slow: " if trickle else b""))
        await writer.drain()
        while True:
            try:
                data = await asyncio.wait_for(reader.read(1024), 0.25)
            except TimeoutError:
                if trickle:
                    writer.write(b"a")
                    await writer.drain()
                continue
            if not data:
                return time.monotonic() - began
            assert not data.startswith(b"HTTP/1.1 200"), data
    except ConnectionError:
        return time.monotonic() - began
    finally:
        writer.close()


async def test_half_open_requests_are_closed_within_the_header_timeout(
    db_dsn: str, tmp_path: Path
) -> None:
    """1,000 half-open requests (silent or trickling a header byte by byte) on the API and 100
    on /metrics: each is closed within api.header_timeout, a normal request is served
    meanwhile, and the process runs with its open-files soft limit raised to the hard one."""
    await _fill_source(db_dsn, executions=100)
    cfg = _config(db_dsn, db_dsn, tmp_path, header_timeout="1s")  # API and /metrics
    proc = WfaProcess(tmp_path, ["run"], cfg)
    try:
        await wait_until(lambda: _is(200, _status(_url(cfg, "api", "/readyz"))), 60, "ready")
        limits = Path(f"/proc/{proc.proc.pid}/limits").read_text()
        soft, hard = re.search(r"Max open files\s+(\S+)\s+(\S+)", limits).groups()
        assert soft == hard, limits

        api_host, api_port = cfg["api"]["listen"].split(":")
        m_host, m_port = cfg["metrics"]["listen"].split(":")
        targets = [(api_host, int(api_port), k % 2 == 0) for k in range(1000)]
        targets += [(m_host, int(m_port), k % 2 == 0) for k in range(100)]
        began = time.monotonic()
        attack = asyncio.gather(*(_half_open(h, p, t) for h, p, t in targets))
        await asyncio.sleep(0.5)
        status, _, body = await get(_url(cfg, "api", "/healthz"))
        assert status == 200 and b"alive" in body
        waits = await asyncio.wait_for(attack, 60)
        took = time.monotonic() - began
        # Measured from the client's side, which connects them all first (the server's timer
        # may start a little earlier): each is closed, none later than the timeout + slack.
        assert len(waits) == 1100 and max(waits) < 1.0 + 2.0, sorted(waits)[-5:]
        assert took < 20, took
        assert proc.alive()
        assert proc.stop() == 0, proc.log[-3000:]
    finally:
        proc.stop()


async def test_live_simulator_survives_a_source_restart(
    cluster: PrivateCluster, tmp_path: Path
) -> None:
    """`wfa simulate --live` keeps going through a source restart, says so once, and writes
    again once the source is back."""
    cluster.start()
    source = await _create_db(cluster, "live_source")
    cfg = {"source": {"dsn": source}}
    args = ["simulate", "--live", "--rate", "50/s", "--tick", "0.2", "--executions", "0"]
    proc = WfaProcess(tmp_path, args, cfg)
    count = "SELECT count(*) FROM workflow_executions"
    try:
        await wait_until(lambda: _more(source, count, 50), 30, "live rows")
        await asyncio.to_thread(cluster.stop)
        await asyncio.sleep(2.5)
        assert proc.alive(), proc.log[-3000:]
        await asyncio.to_thread(cluster.start)
        before = await _count(source, count)
        assert before is not None
        await wait_until(lambda: _more(source, count, before + 50), 30, "rows after restart")
        assert proc.alive()
        assert proc.stop() == 0, proc.log[-3000:]
        log = proc.log
        assert "Traceback" not in log, log[-3000:]
        assert log.count("source unreachable") == 1, log[-3000:]
        assert log.count("source reachable again") == 1, log[-3000:]
    finally:
        proc.stop()
        cluster.stop()


async def _more(dsn: str, sql: str, than: int) -> bool:
    n = await _count(dsn, sql)
    return n is not None and n > than


async def test_one_shot_commands_give_up_after_connect_retries(
    db_dsn: str, tmp_path: Path
) -> None:
    """`wfa exporter --once` (cron) does not wait for ever: connect_retries, then exit 1 with
    the reason and no traceback."""
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    cfg = _config(db_dsn, closed, tmp_path)
    began = time.monotonic()
    once = WfaProcess(tmp_path, ["exporter", "--once"], cfg)
    code = await asyncio.to_thread(once.proc.wait, 60)
    once.stop()
    assert code == 1
    assert time.monotonic() - began < 30
    log = once.log
    assert "Traceback" not in log, log
    assert re.search(r"exporter: .*(Connect call failed|refused)", log), log
