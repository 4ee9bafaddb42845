"""The API and the exporter degrade cleanly and tell the truth: a store or a source cut off
(through a TCP proxy), freshness and readiness, hostile input, slow bodies, clients that leave,
and an export directory that is read-only, full, or a file."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter.api import ApiSettings, create_app
from exporter.api.exports import JOBS
from exporter.commands.api import serve
from exporter.config import Config, config_from_dict
from exporter.exports import ExportJobs, JobSettings
from exporter.metrics import MetricsServer
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.writer import create_source_schema, write
from tests.conftest import PgServer
from tests.integration.faults import Proxy, port_of, wait_until, with_port
from tests.integration.test_api_common import (
    TOKENS,
    OpenApi,
    Store,
    api_config,
    auth,
    data_now,
    parse_ts,
    store_db,
)
from tests.integration.test_exports import EXPORT_TOKENS, export_config
from tests.integration.test_metrics import get, parse
from tests.kit.devdb import free_port

P = "/api/v1"
_LOCKS = itertools.count(990_001)


@pytest.fixture(scope="module")
async def store(pg: PgServer) -> AsyncIterator[Store]:
    """One simulated store (source = store) for the module."""
    async with store_db(pg, executions=2000, days=10, workflows=3) as s:
        yield s


@pytest.fixture(scope="module")
async def spec(store: Store) -> OpenApi:
    """The OpenAPI document the app serves."""
    app = create_app(store.cfg, store.svc.store, None, route_modules=["exporter.api.routes"])
    async with TestClient(TestServer(app)) as c:
        return OpenApi(await (await c.get(f"{P}/openapi.json")).json())


@dataclass(frozen=True)
class Fresh:
    """A database of its own with source tables (nothing ingested yet) and its store backend."""

    backend: str
    dsn: str
    workflow_id: str


@pytest.fixture
async def fresh(store_dsn: tuple[str, str]) -> Fresh:
    """A fresh database per backend (postgres, timescaledb) holding simulated source rows."""
    backend, dsn = store_dsn
    data = generate(executions=600, days=5, workflows=2, tenants=2, seed=5, now=data_now())
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        await write(conn, data)
    finally:
        await conn.close()
    wid = next(w.id for w in data.workflows if w.tenant_id == "tenant-1")
    return Fresh(backend, dsn, wid)


def _config(
    source: str, store_dsn: str, backend: str = "postgres", **exporter: Any
) -> Config:
    base = api_config(source).model_dump(mode="json")
    base["source"]["dsn"] = source
    base["store"] = {
        "backend": backend,
        "dsn": store_dsn,
        "connect_retries": 0,
        "connect_retry_delay": "100ms",
        "connect_retry_max_delay": "500ms",
    }
    # A lock of their own: the module's store keeps holding the default poll lock.
    base["exporter"] = {"ready_max_lag": "1h", "lock_id": next(_LOCKS), **exporter}
    base["exports"] = {"directory": str(Path(tempfile.gettempdir()) / "wfa-degrade-exports")}
    return config_from_dict(base)


@contextlib.asynccontextmanager
async def _client(cfg: Config, svc: ExporterService | None, pool: Any) -> AsyncIterator[Any]:
    app = create_app(cfg, pool, svc, settings=ApiSettings(shutdown_grace=1))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def _call(
    client: TestClient, spec: OpenApi, path: str, token: str | None = "a_read", **kw: Any
) -> tuple[int, dict[str, str], Any]:
    method = kw.pop("method", "GET")
    headers = {**(auth(token) if token else {}), **kw.pop("headers", {})}
    resp = await client.request(method, path, headers=headers, **kw)
    body = await resp.read()
    if resp.content_type != "text/csv":
        spec.validate(method, path, resp.status, resp.content_type, body)
    data = json.loads(body) if resp.content_type.endswith("json") else body
    return resp.status, dict(resp.headers), data


async def _add_source_row(dsn: str, wid: str, ident: str) -> None:
    """A new active execution of workflow `wid` in the source, enrolled and updated now."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "INSERT INTO workflow_executions (id, tenant_id, workflow_id, contact_id, status, "
            "enrolled_at, step_progress, updated_at) "
            "SELECT $1, tenant_id, id, 'contact-' || $1, 'active', now(), '[]', now() "
            "FROM workflows WHERE id = $2",
            ident,
            wid,
        )
    finally:
        await conn.close()


def _unavailable(status: int, headers: dict[str, str], body: Any) -> bool:
    return (
        status == 503
        and int(headers["Retry-After"]) > 0
        and headers["Content-Type"].startswith("application/problem+json")
        and body["status"] == 503
    )


# a store or a source cut off -------------------------------------------------------------------


async def test_store_and_source_outages_are_told_apart_and_answered_503(
    fresh: Fresh, spec: OpenApi
) -> None:
    """Only the store down: 503 + Retry-After everywhere it is needed, store_up 0, source_up 1.
    Only the source down: answers go on from the store, /readyz 503, store_up 1, source_up 0."""
    store_proxy, source_proxy = Proxy(port_of(fresh.dsn)), Proxy(port_of(fresh.dsn))
    await store_proxy.start()
    await source_proxy.start()
    cfg = _config(
        with_port(fresh.dsn, source_proxy.port),
        with_port(fresh.dsn, store_proxy.port),
        fresh.backend,
    )
    svc = ExporterService(cfg)
    await svc.open()
    metrics = MetricsServer(cfg.metrics, svc.state, lambda: svc.store)
    health = svc.state.health
    summary = f"{P}/workflows/{fresh.workflow_id}/analytics"
    try:
        assert await svc.poll_once() is not None
        async with _client(cfg, svc, svc.store) as c:
            status, _, body = await _call(c, spec, "/readyz", None)
            assert status == 200, body
            ok = parse(metrics.exposition())
            assert get(ok, "wfa_exporter_store_up") == get(ok, "wfa_exporter_source_up") == 1

            # the source goes away: the store still answers, readiness says why not
            await source_proxy.stop()
            with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises
                await svc.poll_once()
            await wait_until(lambda: _done(not health.source_up), 10, "source_up 0")
            assert health.store_up
            down = parse(metrics.exposition())
            assert get(down, "wfa_exporter_store_up") == 1
            assert get(down, "wfa_exporter_source_up") == 0
            status, headers, body = await _call(c, spec, "/readyz", None)
            assert status == 503 and "source" in body["detail"] and headers["Retry-After"]
            status, _, body = await _call(c, spec, summary, params={"range": "7d"})
            assert status == 200 and body["data_as_of"] is not None

            # the store goes away instead: 503 with Retry-After, never a 500
            await source_proxy.start()
            await store_proxy.stop()
            with pytest.raises(Exception):  # noqa: B017
                await svc.poll_once()
            await wait_until(lambda: _done(not health.store_up), 10, "store_up 0")
            await wait_until(lambda: _done(health.source_up), 10, "source_up 1")
            down = parse(metrics.exposition())
            assert get(down, "wfa_exporter_store_up") == 0
            assert get(down, "wfa_exporter_source_up") == 1
            job = str(uuid.uuid4())
            for path, token, method in (
                (f"{P}/workflows", "a_read", "GET"),
                (summary, "a_read", "GET"),
                (f"{summary}/funnel", "a_read", "GET"),
                (f"{summary}/actions", "a_read", "GET"),
                (f"{summary}/stream", "a_read", "GET"),
                (f"{summary}/export", "a_export", "GET"),
                (f"{summary}/export", "a_export", "POST"),
                (f"{P}/exports/{job}", "a_export", "GET"),
                (f"{P}/retention", "a_admin", "GET"),
                ("/readyz", None, "GET"),
            ):
                status, headers, body = await _call(c, spec, path, token, method=method)
                assert _unavailable(status, headers, body), (path, status, body)
            status, _, body = await _call(c, spec, "/healthz", None)
            assert (status, body) == (200, {"status": "alive"})

            # back: answers within seconds, and the health flags follow
            await store_proxy.start()
            began = time.monotonic()

            async def answers() -> bool:
                status, _, _ = await _call(c, spec, summary, params={"range": "24h"})
                return status == 200

            await wait_until(answers, 15, "the API answering again")
            assert time.monotonic() - began < 15
            assert await svc.poll_once() is not None
            assert health.store_up and health.source_up
    finally:
        await svc.close()
        for proxy in (store_proxy, source_proxy):
            if proxy.server is not None and proxy.server.is_serving():
                await proxy.stop()


async def _done(value: bool) -> bool:
    return value


# freshness and readiness -------------------------------------------------------------------------


async def test_answers_carry_their_freshness_and_readyz_reports_the_lag(
    fresh: Fresh, spec: OpenApi, databases: Any, pg: PgServer
) -> None:
    """data_as_of (body) = X-Data-As-Of (header) = the start of the last complete poll; a cached
    answer keeps it; /readyz turns 503 once the lag passes exporter.ready_max_lag."""
    cfg = _config(fresh.dsn, fresh.dsn, fresh.backend, poll_interval="1s", ready_max_lag="3s")
    svc = ExporterService(cfg)
    await svc.open()
    wid = fresh.workflow_id
    summary = f"{P}/workflows/{wid}/analytics"
    try:
        before = datetime.now(UTC)
        await _add_source_row(fresh.dsn, wid, "fresh-1")
        assert (await svc.poll_once()) is not None
        after = datetime.now(UTC)
        async with _client(cfg, svc, svc.store) as c:
            status, headers, body = await _call(c, spec, summary, params={"range": "24h"})
            assert status == 200
            as_of = parse_ts(body["data_as_of"])
            assert headers["X-Data-As-Of"] == body["data_as_of"]
            assert before <= as_of <= after
            again = await c.get(summary, params={"range": "24h"}, headers=auth("a_read"))
            assert again.headers["X-Data-As-Of"] == body["data_as_of"]
            assert json.loads(await again.read()) == body
            for sub in ("/funnel", "/actions"):
                status, headers, doc = await _call(c, spec, summary + sub)
                assert status == 200 and doc["data_as_of"] == headers["X-Data-As-Of"]
            export = await c.get(f"{summary}/export", headers=auth("a_export"))
            assert export.status == 200
            assert parse_ts(export.headers["X-Data-As-Of"]) >= as_of

            status, _, ready = await _call(c, spec, "/readyz", None)
            assert status == 200 and ready["data_as_of"] == body["data_as_of"]
            assert 0 <= ready["ingest_lag_seconds"] < 3

            await asyncio.sleep(3.2)  # nothing polls: the lag grows past ready_max_lag
            status, headers, late = await _call(c, spec, "/readyz", None)
            assert status == 503 and headers["Retry-After"]
            assert late["data_as_of"] == body["data_as_of"]
            assert late["ingest_lag_seconds"] >= 3
            assert "ready_max_lag" in late["detail"]

            await _add_source_row(fresh.dsn, wid, "fresh-2")
            assert (await svc.poll_once()).touched
            status, _, ready = await _call(c, spec, "/readyz", None)
            assert status == 200 and parse_ts(ready["data_as_of"]) > as_of

            async def moved() -> bool:
                _, headers, doc = await _call(c, spec, summary, params={"range": "24h"})
                return doc["data_as_of"] == ready["data_as_of"] == headers["X-Data-As-Of"] and (
                    doc["enrollments"] == body["enrollments"] + 1
                )

            await wait_until(moved, 10, "a new answer with the new freshness")

        # `wfa api` alone reads the same freshness from the store
        async with _client(cfg, None, svc.store) as c:
            status, _, ready = await _call(c, spec, "/readyz", None)
            assert status == 200 and ready["ingest_lag_seconds"] < 3

        # a store no poll has completed on yet is not ready, and says so
        unpolled = pg.dsn(await databases.create())
        empty = ExporterService(_config(unpolled, unpolled))
        await empty.open()
        try:
            async with _client(empty.cfg, None, empty.store) as c:
                status, _, body = await _call(c, spec, "/readyz", None)
                assert status == 503 and "no poll cycle" in body["detail"]
                assert body["data_as_of"] is None
        finally:
            await empty.close()
    finally:
        await svc.close()


# hostile input -----------------------------------------------------------------------------------


async def test_hostile_input_gets_4xx_never_500(store: Store, spec: OpenApi) -> None:
    """NUL and broken UTF-8 in paths, queries and bodies, empty and absurd bodies: 4xx."""
    deep = b"[" * 30000 + b"]" * 30000
    cases: list[tuple[str, str, str | None, dict[str, Any], int, str | None]] = [
        ("GET", f"{P}/workflows/%00/analytics", "a_read", {}, 404, "workflow_id"),
        ("GET", f"{P}/workflows/%00/analytics/funnel", "a_read", {}, 404, "workflow_id"),
        ("GET", f"{P}/workflows/a%00b/analytics/actions", "a_read", {}, 404, "workflow_id"),
        ("GET", f"{P}/workflows/%00/analytics/stream", "a_read", {}, 404, "workflow_id"),
        ("GET", f"{P}/workflows/%00/analytics/export", "a_export", {}, 404, "workflow_id"),
        ("POST", f"{P}/workflows/%00/analytics/export", "a_export", {}, 404, "workflow_id"),
        ("POST", f"{P}/workflows/%00/analytics/refresh", "a_read", {}, 404, "workflow_id"),
        ("GET", f"{P}/workflows/%FF%FE/analytics", "a_read", {}, 404, "workflow_id"),
        ("GET", f"{P}/exports/%00", "a_export", {}, 404, "job_id"),
        ("PUT", f"{P}/retention/%00", "a_admin", {"json": {"period": "90d"}}, 404, "dataset"),
        ("PUT", f"{P}/retention/executions", "a_admin", {}, 400, "body.period"),
        ("PUT", f"{P}/retention/executions", "a_admin", {"data": b" \n"}, 400, "body.period"),
        (
            "PUT",
            f"{P}/retention/executions",
            "a_admin",
            {"json": {"period": "90d", "workflow_id": "wf\u0000"}},
            400,
            "body.workflow_id",
        ),
        ("PUT", f"{P}/retention/executions", "a_admin", {"data": deep}, 400, "body"),
        ("PUT", f"{P}/retention/executions", "a_admin", {"data": b"\xff\xfe"}, 400, "body"),
        ("POST", "{wf}/export", "a_export", {"json": {"tz": "UTC\u0000"}}, 400, "body.tz"),
        ("POST", "{wf}/export", "a_export", {"data": deep}, 400, "body"),
        ("POST", "{wf}/refresh", "a_read", {"data": b"null"}, 400, "body"),
        ("POST", "{wf}/refresh", "a_read", {"data": deep}, 400, "body"),
        ("GET", "{wf}", "a_read", {"params": {"tz": "\u0000"}}, 400, "tz"),
        ("GET", "{wf}", "a_read", {"params": {"from": "now\u0000"}}, 400, "from"),
        ("GET", "{wf}/funnel", "a_read", {"params": {"mode": "\u0000"}}, 400, "mode"),
    ]
    wid = store.workflows_of("tenant-1")[0]
    wf = f"{P}/workflows/{wid}/analytics"
    cfg = export_config(store.dsn, Path("/tmp/wfa-hostile-exports"))
    async with _client(cfg, store.svc, store.svc.store) as c:
        for method, path, token, kw, want, param in cases:
            path = path.replace("{wf}", wf)
            headers = {"Authorization": f"Bearer {EXPORT_TOKENS[token][0]}"} if token else {}
            if "data" in kw:
                headers["Content-Type"] = "application/json"
            resp = await c.request(method, path, headers=headers, **kw)
            body = await resp.read()
            assert resp.status == want, (method, path, kw.keys(), resp.status, body[:300])
            assert resp.content_type == "application/problem+json"
            doc = json.loads(body)
            assert doc.get("param") == param, (path, doc)
            if "%FF" not in path and "%00" not in path:
                spec.validate(method, path, resp.status, resp.content_type, body)


async def test_slow_request_body_gets_408(store: Store) -> None:
    """A body that trickles in slower than api.header_timeout is answered 408, not waited for."""
    cfg = api_config(store.dsn, header_timeout="1s")
    wid = store.workflows_of("tenant-1")[0]
    async with _client(cfg, store.svc, store.svc.store) as c:
        host, port = c.host, c.port
        reader, writer = await asyncio.open_connection(host, port)
        head = (
            f"POST {P}/workflows/{wid}/analytics/refresh HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKENS['a_read'][0]}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
        )
        began = time.monotonic()
        writer.write(head.encode())
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 5)
        took = time.monotonic() - began
        writer.close()
        assert status_line.startswith(b"HTTP/1.1 408"), status_line
        assert 0.9 <= took < 3


# clients that leave ------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _served(app: Any, header_timeout: float = 10.0) -> AsyncIterator[tuple[str, int]]:
    """`app` served the way `wfa api` serves it (handlers are not cancelled on disconnect)."""
    port = free_port()
    stop = asyncio.Event()
    task = asyncio.create_task(serve(app, f"127.0.0.1:{port}", stop, 1.0, header_timeout))
    try:
        await wait_until(lambda: _answers(port), 10, "the server")
        yield "127.0.0.1", port
    finally:
        stop.set()
        await task


async def _answers(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


async def test_export_client_leaving_is_a_quiet_close(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """The client hangs up while the export's query waits: no 500, no traceback, a quiet line."""
    wid = store.workflows_of("tenant-1")[0]
    caplog.set_level(logging.INFO)
    app = create_app(store.cfg, store.svc.store, store.svc, settings=ApiSettings(shutdown_grace=1))
    async with _served(app) as (host, port):
        blocker = await asyncpg.connect(store.dsn)
        tx = blocker.transaction()
        await tx.start()
        try:
            await blocker.execute("LOCK TABLE wfa.executions IN ACCESS EXCLUSIVE MODE")
            _reader, writer = await asyncio.open_connection(host, port)
            # Close with a reset, as a client that gives up does when it has unread data.
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.write(
                f"GET {P}/workflows/{wid}/analytics/export?dataset=executions HTTP/1.1\r\n"
                f"Host: x\r\nAuthorization: Bearer {TOKENS['a_export'][0]}\r\n\r\n".encode()
            )
            await writer.drain()
            await asyncio.sleep(0.5)
            writer.transport.abort()
            await asyncio.sleep(0.3)
        finally:
            await tx.rollback()
            await blocker.close()

        async def logged() -> bool:
            return any("ended early" in r.getMessage() for r in caplog.records)

        await wait_until(logged, 10, "the early end logged")
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]
    assert not any(r.exc_info for r in caplog.records if r.name.startswith("exporter"))
    access = [r.getMessage() for r in caplog.records if r.name == "aiohttp.access"]
    assert access and not any('" 500 ' in line for line in access), access


# export directories that cannot take the file ----------------------------------------------


def _mount_tmpfs(path: Path, options: str) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
    )
    return done.returncode == 0


def _umount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.asynccontextmanager
async def _export_client(
    store: Store, directory: Path, housekeeping_s: float = 0.3, **exports: Any
) -> AsyncIterator[Any]:
    cfg = export_config(store.dsn, directory, max_concurrent_per_tenant=1, **exports)
    app = create_app(cfg, store.svc.store, store.svc, settings=ApiSettings(shutdown_grace=1))
    app[JOBS] = ExportJobs(
        cfg.exports, store.svc.store, cfg.store_dsn, JobSettings(housekeeping_s=housekeeping_s)
    )
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


async def _job(client: TestClient, wid: str, **params: str) -> tuple[int, dict[str, Any]]:
    resp = await client.post(
        f"{P}/workflows/{wid}/analytics/export",
        params=params,
        headers={"Authorization": f"Bearer {EXPORT_TOKENS['a_export'][0]}"},
    )
    return resp.status, await resp.json()


async def _status(client: TestClient, job: dict[str, Any]) -> dict[str, Any]:
    resp = await client.get(
        job["status_url"], headers={"Authorization": f"Bearer {EXPORT_TOKENS['a_export'][0]}"}
    )
    assert resp.status == 200
    return await resp.json()


async def _failed_at_once(client: TestClient, wid: str, fmt: str = "csv") -> dict[str, Any]:
    """Submit a job, see it fail within seconds, stay failed through housekeeping (not adopted
    again), and free the tenant's slot."""
    began = time.monotonic()
    status, job = await _job(client, wid, dataset="executions", format=fmt, range="30d")
    assert status == 202, job

    async def finished() -> dict[str, Any] | None:
        doc = await _status(client, job)
        return doc if doc["status"] not in ("queued", "running") else None

    doc = await wait_until(finished, 10, "the job to finish")
    assert doc["status"] == "failed" and time.monotonic() - began < 10
    await asyncio.sleep(1.0)  # several housekeeping rounds
    again = await _status(client, job)
    assert again["status"] == "failed" and again["attempts"] == 1
    status, second = await _job(client, wid, dataset="summary", format="json")
    assert status == 202, "the failed job no longer holds the tenant's only slot"
    await wait_until(lambda: finished_job(client, second), 10, "the second job")
    return doc


async def finished_job(client: TestClient, job: dict[str, Any]) -> bool:
    """Whether a job is no longer queued or running."""
    return (await _status(client, job))["status"] not in ("queued", "running")


async def test_export_directory_that_is_a_file_fails_jobs_with_the_reason(
    store: Store, tmp_path: Path
) -> None:
    """A file where the directory should be: the API starts, jobs fail at once and say why."""
    where = tmp_path / "not-a-dir"
    where.write_text("x")
    async with _export_client(store, where) as c:
        doc = await _failed_at_once(c, store.workflows_of("tenant-1")[0])
        assert doc["error"] == "the export directory is not a directory (Not a directory)"


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("mount"), reason="needs root and mount")
@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ("ro,size=1m", "the export directory is read-only (Read-only file system)"),
        ("size=16k", "the export directory is full (No space left on device)"),
    ],
)
async def test_read_only_or_full_export_directory_fails_jobs_at_once(
    store: Store, tmp_path: Path, options: str, reason: str
) -> None:
    """Read-only or full: the job fails at once with that reason, leaves no partial file behind,
    is not adopted again every housekeeping round, and frees the tenant's slot."""
    where = tmp_path / "mnt"
    if not _mount_tmpfs(where, options):
        pytest.skip("mount -t tmpfs is not permitted here")
    try:
        async with _export_client(store, where) as c:
            doc = await _failed_at_once(c, store.workflows_of("tenant-1")[0])
            assert doc["error"] == reason
            assert [p.name for p in where.iterdir() if p.name.endswith(".part")] == []
    finally:
        _umount(where)


async def test_expired_files_are_refused_at_expires_at(store: Store, tmp_path: Path) -> None:
    """From expires_at on, download answers 410 and the status says expired, before cleanup."""
    async with _export_client(store, tmp_path, housekeeping_s=3600, max_age="3s") as c:
        status, job = await _job(c, store.workflows_of("tenant-1")[0], format="json")
        assert status == 202
        await wait_until(lambda: finished_job(c, job), 10, "the job")
        doc = await _status(c, job)
        assert doc["status"] == "succeeded"
        headers = {"Authorization": f"Bearer {EXPORT_TOKENS['a_export'][0]}"}
        resp = await c.get(doc["download_url"], headers=headers)
        assert resp.status == 200
        expires = parse_ts(doc["expires_at"])
        await asyncio.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.05)
        resp = await c.get(doc["download_url"], headers=headers)
        assert resp.status == 410
        assert (tmp_path / f"{job['job_id']}.json").is_file(), "refused, not merely deleted"
        assert (await _status(c, job))["status"] == "expired"
        assert (await _status(c, job))["download_url"] is None
