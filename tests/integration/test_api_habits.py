"""The API bends to habits: any `range=` duration, content negotiation on exports, HEAD and
OPTIONS everywhere, CORS when configured, problem types that name the error (parser errors
included), and cursor pagination of workflows and export jobs, tenant by tenant."""

from __future__ import annotations

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from exporter.api import API_PREFIX as P
from exporter.api import ApiSettings, create_app
from exporter.api.errors import KINDS, PROBLEM_BASE
from exporter.api.server import ApiServer
from tests.conftest import PgServer
from tests.integration.test_api_common import (
    OpenApi,
    Store,
    api_client,
    auth,
    parse_ts,
    store_db,
)

ORIGIN = "https://app.example.com"
README = Path(__file__).resolve().parents[2] / "README.md"


@pytest.fixture(scope="module")
async def store(pg: PgServer, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Store]:
    """One store with CORS for one origin and a private exports directory."""
    exports = tmp_path_factory.mktemp("exports")
    async with store_db(pg, cors_origins=[ORIGIN]) as s:
        s.cfg = s.cfg.model_copy(
            update={"exports": s.cfg.exports.model_copy(update={"directory": exports})}
        )
        yield s


async def _get(
    client: TestClient, spec: OpenApi, path: str, token: str | None = "a_read", **kw: Any
) -> tuple[int, Any, Any]:
    headers = {**(auth(token) if token else {}), **kw.pop("headers", {})}
    resp = await client.get(path, headers=headers, **kw)
    body = await resp.read()
    if resp.content_type in ("application/json", "application/problem+json"):
        spec.validate("GET", path.split("?")[0], resp.status, resp.content_type, body)
    return resp.status, resp.headers, body


# range= ----------------------------------------------------------------------------------


async def test_range_takes_any_duration(client: TestClient, spec: OpenApi, store: Store) -> None:
    wid = store.workflows_of("tenant-1")[0]
    url = f"{P}/workflows/{wid}/analytics"
    for text, seconds in (("1h", 3600), ("90m", 5400), ("12h", 43200), ("3d", 259200),
                          ("6w", 3628800)):
        status, _, body = await _get(client, spec, url, params={"range": text})
        assert status == 200, body
        got = json.loads(body)["range"]
        assert (parse_ts(got["to"]) - parse_ts(got["from"])).total_seconds() == seconds
    status, _, body = await _get(client, spec, url, params={"range": "2y"})
    problem = json.loads(body)
    assert status == 400 and problem["param"] == "range"
    assert problem["type"] == PROBLEM_BASE + "invalid-parameter"
    status, _, body = await _get(client, spec, url, params={"range": "500d"})
    assert status == 400 and json.loads(body)["param"] == "range"


# content negotiation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "content_type"),
    [
        (None, "text/csv"),
        ("text/csv", "text/csv"),
        ("application/json", "application/json"),
        ("application/x-ndjson", "application/x-ndjson"),
        ("application/pdf", "application/pdf"),
        ("*/*", "text/csv"),
        ("application/*", "application/json"),
        ("text/html, application/json;q=0.5, application/x-ndjson;q=0.9", "application/x-ndjson"),
        ("application/json;q=0, */*;q=0.1", "text/csv"),
    ],
)
async def test_accept_chooses_the_export_format(
    client: TestClient, spec: OpenApi, store: Store, accept: str | None, content_type: str
) -> None:
    wid = store.workflows_of("tenant-1")[0]
    url = f"{P}/workflows/{wid}/analytics/export"
    headers = {"Accept": accept} if accept else {}
    status, got, body = await _get(
        client, spec, url, "a_export", params={"dataset": "actions", "range": "7d"},
        headers=headers,
    )
    assert status == 200, body
    assert got["Content-Type"].split(";")[0] == content_type
    assert "Accept" in got.getall("Vary")
    ext = {"text/csv": "csv", "application/json": "json", "application/x-ndjson": "ndjson",
           "application/pdf": "pdf"}[content_type]
    assert re.search(rf'filename="[^"]+\.{ext}"', got["Content-Disposition"])


async def test_accept_that_fits_nothing_is_406_and_format_wins(
    client: TestClient, spec: OpenApi, store: Store
) -> None:
    wid = store.workflows_of("tenant-1")[0]
    url = f"{P}/workflows/{wid}/analytics/export"
    status, _, body = await _get(
        client, spec, url, "a_export", params={"range": "7d"}, headers={"Accept": "image/png"}
    )
    problem = json.loads(body)
    assert status == 406 and problem["type"] == PROBLEM_BASE + "not-acceptable"
    assert "text/csv" in problem["detail"] and problem["param"] == "Accept"
    status, got, _ = await _get(
        client, spec, url, "a_export", params={"range": "7d", "format": "ndjson"},
        headers={"Accept": "image/png"},
    )
    assert status == 200 and got["Content-Type"].startswith("application/x-ndjson")
    status, _, body = await _get(
        client, spec, url, "a_export", params={"range": "7d", "dataset": "executions"},
        headers={"Accept": "application/pdf"},
    )
    assert status == 400 and json.loads(body)["param"] == "format"


# HEAD, OPTIONS, CORS ---------------------------------------------------------------------


async def test_head_answers_every_get_without_a_body(
    client: TestClient, spec: OpenApi, store: Store
) -> None:
    wid = store.workflows_of("tenant-1")[0]
    base = f"{P}/workflows/{wid}/analytics"
    cases = [
        (f"{P}/workflows", "a_read", "application/json"),
        (base, "a_read", "application/json"),
        (f"{base}/funnel", "a_read", "application/json"),
        (f"{base}/actions", "a_read", "application/json"),
        (f"{base}/stream", "a_read", "text/event-stream"),
        (f"{base}/export?format=json&dataset=actions", "a_export", "application/json"),
        (f"{P}/exports", "a_export", "application/json"),
        (f"{P}/retention", "a_admin", "application/json"),
        (f"{P}/openapi.json", None, "application/json"),
        (f"{P}/problems", None, "application/json"),
        ("/healthz", None, "application/json"),
    ]
    for path, token, ctype in cases:
        resp = await client.head(path, headers=auth(token) if token else {})
        assert resp.status == 200, (path, resp.status)
        assert resp.content_type == ctype, path
        assert await resp.read() == b"", path
    resp = await client.head(f"{P}/workflows")
    assert resp.status == 401
    resp = await client.head(f"{P}/workflows/no-such-workflow/analytics", headers=auth("a_read"))
    assert resp.status == 404


async def test_options_and_cors_for_the_configured_origin(
    client: TestClient, store: Store
) -> None:
    resp = await client.options(f"{P}/workflows")
    assert resp.status == 204 and set(resp.headers["Allow"].split(", ")) == {
        "GET", "HEAD", "OPTIONS"
    }
    assert "Access-Control-Allow-Origin" not in resp.headers
    preflight = {"Origin": ORIGIN, "Access-Control-Request-Method": "GET",
                 "Access-Control-Request-Headers": "authorization"}
    resp = await client.options(f"{P}/workflows", headers=preflight)
    assert resp.status == 204
    assert resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
    assert "GET" in resp.headers["Access-Control-Allow-Methods"]
    resp = await client.options(f"{P}/workflows", headers={**preflight, "Origin": "https://evil.example"})
    assert resp.status == 204 and "Access-Control-Allow-Origin" not in resp.headers
    resp = await client.options(f"{P}/nothing-here", headers=preflight)
    assert resp.status == 404

    resp = await client.get(f"{P}/workflows", headers={**auth("a_read"), "Origin": ORIGIN})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-Request-Id" in resp.headers["Access-Control-Expose-Headers"]
    assert "Origin" in resp.headers.getall("Vary")
    resp = await client.get(f"{P}/workflows", headers={"Origin": ORIGIN})
    assert resp.status == 401 and resp.headers["Access-Control-Allow-Origin"] == ORIGIN
    resp = await client.get(f"{P}/workflows", headers={**auth("a_read"), "Origin": "https://x.test"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_no_cors_headers_unless_configured(pg: PgServer) -> None:
    async with store_db(pg, executions=50) as plain, api_client(plain) as c:
        resp = await c.get(f"{P}/workflows", headers={**auth("a_read"), "Origin": ORIGIN})
        assert resp.status == 200
        assert not any(h.startswith("Access-Control-") for h in resp.headers)
        resp = await c.options(f"{P}/workflows", headers={"Origin": ORIGIN})
        assert resp.status == 204 and "Access-Control-Allow-Origin" not in resp.headers


# problem types ---------------------------------------------------------------------------


async def test_problem_types_name_the_kind_and_are_described(
    client: TestClient, spec: OpenApi
) -> None:
    status, _, body = await _get(client, spec, f"{P}/workflows", token=None)
    problem = json.loads(body)
    assert status == 401 and problem["type"] == PROBLEM_BASE + "unauthorized"
    status, _, body = await _get(client, spec, problem["type"], token=None)
    assert status == 200 and json.loads(body)["status"] == 401
    status, _, body = await _get(client, spec, f"{P}/problems", token=None)
    listed = json.loads(body)["problems"]
    assert [p["type"].removeprefix(PROBLEM_BASE) for p in listed] == list(KINDS)
    readme = README.read_text()
    for name, kind in KINDS.items():
        assert re.search(rf"`{name}`\s*\|\s*{kind.status}\b", readme), name
    resp = await client.delete(f"{P}/workflows", headers=auth("a_read"))
    assert (await resp.json())["type"] == PROBLEM_BASE + "method-not-allowed"


async def _raw(host: str, port: int, data: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


async def test_parser_errors_are_problem_documents(store: Store) -> None:
    """A request line or a header over aiohttp's limits, or garbage, through the real server."""
    assert store.svc.store is not None
    app = create_app(store.cfg, store.svc.store, store.svc, settings=ApiSettings())
    sock = socket.create_server(("127.0.0.1", 0))
    server = ApiServer(app, sock, grace=1.0, access_log=False)
    await server.start()
    host, port = sock.getsockname()[:2]
    try:
        cases = [
            (f"GET /api/v1/workflows?x={'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n", 414,
             "uri-too-long"),
            (f"GET /{'a' * 9000} HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri-too-long"),
            (f"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {'b' * 40000}\r\n\r\n", 431,
             "headers-too-large"),
            ("GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
             + "".join(f"X-H{i}: {'c' * 4000}\r\n" for i in range(10)) + "\r\n", 431,
             "headers-too-large"),
            ("NOT HTTP AT ALL\r\n\r\n", 400, "malformed-request"),
        ]
        for request, status, kind in cases:
            got, headers, body = await _raw(host, port, request.encode())
            assert got == status, (request[:40], got, body[:200])
            assert headers["Content-Type"].startswith("application/problem+json")
            assert json.loads(body)["type"] == PROBLEM_BASE + kind
        ok = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        got, _, _ = await _raw(host, port, ok)
        assert got == 200
    finally:
        await server.stop()


# pagination ------------------------------------------------------------------------------


async def test_workflows_paginate_with_a_cursor(
    client: TestClient, spec: OpenApi, store: Store
) -> None:
    status, _, body = await _get(client, spec, f"{P}/workflows")
    whole = json.loads(body)
    assert status == 200 and whole["next"] is None
    want = sorted(store.workflows_of("tenant-1"))
    assert [w["workflow_id"] for w in whole["workflows"]] == want and len(want) >= 3
    seen: list[str] = []
    url: str | None = f"{P}/workflows?limit=2"
    while url is not None:
        status, headers, body = await _get(client, spec, url)
        page = json.loads(body)
        assert status == 200 and len(page["workflows"]) <= 2
        seen += [w["workflow_id"] for w in page["workflows"]]
        if page["next"]:
            assert headers["Link"] == f'<{page["next"]}>; rel="next"'
        else:
            assert "Link" not in headers
        url = page["next"]
    assert seen == want
    for bad in ("!!!", "WyJ4Il0", "eyJhIjogMX0", "W10"):
        status, _, body = await _get(client, spec, f"{P}/workflows", params={"cursor": bad})
        assert status in (200, 400), bad
        if bad in ("!!!", "eyJhIjogMX0", "W10"):
            assert status == 400 and json.loads(body)["param"] == "cursor"
    status, _, body = await _get(client, spec, f"{P}/workflows", params={"limit": "0"})
    assert status == 400 and json.loads(body)["param"] == "limit"


async def test_export_jobs_list_their_tenant_only(
    client: TestClient, spec: OpenApi, store: Store
) -> None:
    wid = store.workflows_of("tenant-1")[0]
    made = []
    for fmt in ("csv", "json", "ndjson"):
        resp = await client.post(
            f"{P}/workflows/{wid}/analytics/export",
            params={"format": fmt, "dataset": "actions", "range": "7d"},
            headers=auth("a_export"),
        )
        assert resp.status == 202, await resp.text()
        made.append((await resp.json())["job_id"])
    seen: list[dict[str, Any]] = []
    url: str | None = f"{P}/exports?limit=2"
    while url is not None:
        status, _, body = await _get(client, spec, url, "a_export")
        page = json.loads(body)
        assert status == 200, body
        seen += page["jobs"]
        url = page["next"]
    ids = [j["job_id"] for j in seen]
    assert set(made) <= set(ids) and len(ids) == len(set(ids))
    created = [parse_ts(j["created_at"]) for j in seen]
    assert created == sorted(created, reverse=True)
    assert all(j["expires_at"] and "bytes" in j and j["status"] for j in seen)
    # another tenant's export token sees none of them, and cannot fetch one by id
    status, _, body = await _get(client, spec, f"{P}/exports?limit=1000", "b_export")
    assert status == 200 and not set(made) & {j["job_id"] for j in json.loads(body)["jobs"]}
    status, _, _ = await _get(client, spec, f"{P}/exports/{made[0]}", "b_export")
    assert status == 404
    status, _, _ = await _get(client, spec, f"{P}/exports", "a_read")
    assert status == 403
