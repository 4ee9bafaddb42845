"""Exports over HTTP against a simulated store: every dataset and format round-trips to the API's
numbers and the truth; jobs, restarts, limits, expiry, formula injection, tenants, memory."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from exporter.api import ApiSettings, create_app
from exporter.api.auth import token_digest
from exporter.api.exports import JOBS
from exporter.config import Config, config_from_dict
from exporter.exports import ExportJobs, JobSettings
from exporter.exports.datasets import ACTIONS_COLUMNS, COLUMNS, EXECUTIONS_COLUMNS
from exporter.exports.formats import neutralise
from exporter.exports.render import CsvLines
from exporter.store.locks import EXPORT_OWNERS
from tests.conftest import PgServer
from tests.integration.test_api_common import TOKENS, OpenApi, Store, parse_ts, store_db

P = "/api/v1"
EXPORT_TOKENS = {
    **TOKENS,
    "b_export": ("wfa_test_tenant2_export", "tenant-2", ["export"]),
}
RFC3339 = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)"
FIELDS = ("enrollments", "completions", "conversions", "exits", "failures")
TRICKY = 'said "stop", then\nleft at 10:00:00+00 ""twice""\r\n'
INJECTED = ("=HYPERLINK(\"http://x\")", "+1+2", "-2+3", "@SUM(A1)", "\tTAB")


def export_config(dsn: str, directory: Path, **exports: Any) -> Config:
    """A config over the store with the test tokens plus an export token of tenant 2."""
    tokens = [
        {"name": n, "sha256": token_digest(s), "tenant": t, "scopes": sc}
        for n, (s, t, sc) in EXPORT_TOKENS.items()
    ]
    return config_from_dict(
        {
            "source": {"dsn": dsn},
            "store": {"backend": "postgres", "pool_max_size": 8},
            "api": {"tokens": tokens},
            "exports": {"directory": str(directory), **exports},
        }
    )


def auth(name: str) -> dict[str, str]:
    """Authorization header of a test token."""
    return {"Authorization": f"Bearer {EXPORT_TOKENS[name][0]}"}


async def started(cfg: Config, store: Store) -> TestClient:
    """A running client of an app over the store's pool."""
    assert store.svc.store is not None
    app = create_app(cfg, store.svc.store, store.svc, settings=ApiSettings(shutdown_grace=2))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture(scope="module")
async def store(pg: PgServer) -> AsyncIterator[Store]:
    """One simulated store for the module."""
    async with store_db(pg, executions=3000, days=40, workflows=6) as s:
        yield s


@pytest.fixture(scope="module")
async def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The module's export directory."""
    return tmp_path_factory.mktemp("exports")


@pytest.fixture(scope="module")
async def client(store: Store, export_dir: Path) -> AsyncIterator[TestClient]:
    """A client of the API with exports, over the module's store."""
    c = await started(export_config(store.dsn, export_dir, max_concurrent_per_tenant=3), store)
    yield c
    await c.close()


def _workflow(store: Store, tenant: str = "tenant-1", k: int = 0) -> str:
    ids = sorted(store.workflows_of(tenant), key=lambda w: -len(store.truth.executions(w)))
    return ids[k]


def _range(store: Store) -> dict[str, str]:
    end = store.data.now.replace(minute=0, second=0)
    return {"from": (end - timedelta(days=30)).isoformat(), "to": end.isoformat()}


async def _get(client: TestClient, path: str, token: str, **params: str) -> tuple[int, bytes]:
    resp = await client.get(path, params=params, headers=auth(token))
    return resp.status, await resp.read()


async def _api(client: TestClient, wid: str, dataset: str, q: dict[str, str]) -> dict[str, Any]:
    path = {
        "summary": f"{P}/workflows/{wid}/analytics",
        "funnel": f"{P}/workflows/{wid}/analytics/funnel",
        "actions": f"{P}/workflows/{wid}/analytics/actions",
    }[dataset]
    status, body = await _get(client, path, "a_read", **q)
    assert status == 200, body
    return json.loads(body)


# parsing back -------------------------------------------------------------------------------

_INTS = {
    "index", "reached", "in_progress", "dropped", "executions", "succeeded", "failed",
    "skipped", "running", "top_error_count", *FIELDS,
}
_FLOATS = {
    "dropoff_ratio", "conversion_from_previous", "conversion_from_start", "success_rate",
    "duration_avg_seconds", "duration_p50_seconds", "duration_p95_seconds",
    "duration_p99_seconds",
}
_BOOLS = {"bottleneck", "converted_in_window"}


def _typed(column: str, cell: str) -> Any:
    if cell == "":
        return None
    if column in _INTS:
        return int(cell)
    if column in _FLOATS:
        return float(cell)
    if column in _BOOLS:
        return {"true": True, "false": False}[cell]
    return cell


def parse_csv(body: bytes) -> tuple[list[str], list[dict[str, Any]]]:
    """Header and typed rows of an RFC 4180 export (CRLF line ends, UTF-8)."""
    text = body.decode("utf-8")
    assert text.endswith("\r\n")
    if '"' not in text:
        assert "\n" not in text.replace("\r\n", "")
    rows = list(csv.reader(io.StringIO(text, newline="")))
    header = rows[0]
    return header, [{c: _typed(c, v) for c, v in zip(header, r, strict=True)} for r in rows[1:]]


def parse_ndjson(body: bytes) -> list[dict[str, Any]]:
    """One JSON object per line."""
    text = body.decode("utf-8")
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


def expected_rows(dataset: str, doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The tabular rows an API document should export to."""
    if dataset == "summary":
        return [{c: p[c] for c in COLUMNS["summary"]} for p in doc["series"]]
    if dataset == "funnel":
        return [{c: s[c] for c in COLUMNS["funnel"]} for s in doc["steps"]]
    rows = []
    for scope, items in (("step", doc["actions"]), ("action_type", doc["action_types"])):
        for x in items:
            top = x["top_errors"][0] if x["top_errors"] else {"error": None, "count": None}
            d = x["duration_seconds"]
            values = [
                scope, x.get("index"), x.get("step_id"), x.get("name"), x["action_type"],
                *(x[k] for k in ("executions", "succeeded", "failed", "skipped", "running")),
                x["success_rate"], d["avg"], d["p50"], d["p95"], d["p99"],
                top["error"], top["count"],
            ]
            rows.append(dict(zip(ACTIONS_COLUMNS, values, strict=True)))
    return rows


def _check_truth(store: Store, wid: str, dataset: str, rows: list[dict[str, Any]], q) -> None:
    start, end = parse_ts(q["from"]), parse_ts(q["to"])
    truth = store.truth
    if dataset == "summary":
        act = truth.activity(wid, start, end)
        for k in FIELDS:
            assert sum(r[k] for r in rows) == act[k], k
    elif dataset == "funnel":
        want = truth.cohort_funnel(wid, start, end)
        assert [(r["reached"], r["dropped"]) for r in rows] == [
            (s["reached"], s["dropped"]) for s in want["steps"]
        ]
    else:
        want = truth.actions(wid, start, end)
        for r in rows:
            if r["scope"] == "step" and r["step_id"] in want:
                assert r["executions"] == want[r["step_id"]]["executions"]
                assert r["failed"] == want[r["step_id"]]["failed"]


# round trips --------------------------------------------------------------------------------


@pytest.mark.parametrize("dataset", ["summary", "funnel", "actions"])
async def test_formats_round_trip_to_api_and_truth(
    client: TestClient, store: Store, dataset: str
) -> None:
    wid = _workflow(store)
    q = {**_range(store), "granularity": "day"}
    api = await _api(client, wid, dataset, q)
    path = f"{P}/workflows/{wid}/analytics/export"
    want = expected_rows(dataset, api)
    assert want

    resp = await client.get(path, params={**q, "dataset": dataset}, headers=auth("a_export"))
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/csv")
    assert f"wfa-{dataset}-" in resp.headers["Content-Disposition"]
    header, rows = parse_csv(await resp.read())
    assert header == list(COLUMNS[dataset])
    assert rows == want
    _check_truth(store, wid, dataset, rows, q)

    status, body = await _get(client, path, "a_export", **q, dataset=dataset, format="ndjson")
    assert status == 200
    assert parse_ndjson(body) == want

    status, body = await _get(client, path, "a_export", **q, dataset=dataset, format="json")
    assert status == 200
    doc = json.loads(body)
    assert doc["dataset"] == dataset and doc["workflow_name"] == store.data.workflow(wid).name
    assert abs(parse_ts(doc["generated_at"]) - datetime.now(UTC)) < timedelta(minutes=1)
    # The API answer's freshness belongs to the answer (the export sends it as a header).
    api.pop("data_as_of")
    assert {k: v for k, v in doc.items() if k in api} == api


async def test_executions_round_trip_to_truth(client: TestClient, store: Store) -> None:
    wid = _workflow(store)
    q = _range(store)
    start, end = parse_ts(q["from"]), parse_ts(q["to"])
    want = sorted(
        (e for e in store.truth.executions(wid) if start <= e.enrolled_at < end),
        key=lambda e: (e.enrolled_at, e.id),
    )
    assert len(want) > 100
    path = f"{P}/workflows/{wid}/analytics/export"

    status, body = await _get(client, path, "a_export", **q, dataset="executions")
    assert status == 200
    header, rows = parse_csv(body)
    assert header == list(EXECUTIONS_COLUMNS)
    status, body = await _get(client, path, "a_export", **q, dataset="executions", format="json")
    doc = json.loads(body)
    assert doc["row_count"] == len(want) and doc["columns"] == list(EXECUTIONS_COLUMNS)
    status, body = await _get(
        client, path, "a_export", **q, dataset="executions", format="ndjson"
    )
    assert parse_ndjson(body) == doc["rows"]

    def t(v: str | None) -> datetime | None:
        return None if v is None else parse_ts(v)

    for got in (rows, doc["rows"]):
        assert [r["execution_id"] for r in got] == [e.id for e in want]
        for r, e in zip(got, want, strict=True):
            assert (r["workflow_id"], r["contact_id"], r["status"]) == (
                wid, e.contact_id, e.status
            )
            assert t(r["enrolled_at"]) == e.enrolled_at
            assert t(r["completed_at"]) == e.completed_at
            assert t(r["converted_at"]) == e.converted_at
            assert t(r["exited_at"]) == e.exited_at
            assert t(r["failed_at"]) == e.failed_at
            assert r["exit_reason"] == e.exit_reason
            assert r["current_step_id"] == (e.current_step_id if e.status == "active" else None)
            assert r["converted_in_window"] == store.truth.converted_in_window(e)
    assert all(re.fullmatch(RFC3339, r["enrolled_at"]) for r in (*rows, *doc["rows"]))


async def test_pdf_report_reads_back_and_renders(
    client: TestClient, store: Store, tmp_path: Path
) -> None:
    wid = _workflow(store)
    q = _range(store)
    start, end = parse_ts(q["from"]), parse_ts(q["to"])
    took = time.perf_counter()
    status, body = await _get(
        client, f"{P}/workflows/{wid}/analytics/export", "a_export", **q, format="pdf"
    )
    took = time.perf_counter() - took
    assert status == 200 and body.startswith(b"%PDF-")
    assert took < 3.0
    pdf = tmp_path / "report.pdf"
    pdf.write_bytes(body)
    text = subprocess.run(
        ["pdftotext", "-layout", str(pdf), "-"], check=True, capture_output=True, text=True
    ).stdout
    wf = store.data.workflow(wid)
    assert wf.name in text and wid in text
    assert start.isoformat().replace("+00:00", "Z") in text
    assert "Generated " in text
    act = store.truth.activity(wid, start, end)
    for k in ("enrollments", "completions", "conversions"):
        assert f"{act[k]:,}" in text, k
    funnel = store.truth.cohort_funnel(wid, start, end)
    lines = text.splitlines()
    for k, (step, s) in enumerate(zip(wf.steps, funnel["steps"], strict=True)):
        row = next(i for i, line in enumerate(lines) if f"{k + 1}. {step.name}" in line)
        near = " ".join(lines[max(0, row - 2) : row + 3])
        assert f"{s['reached']:,}" in near and f"dropped {s['dropped']:,}" in near
    actions = store.truth.actions(wid, start, end)
    table = lines[next(i for i, line in enumerate(lines) if "Action performance" in line) :]
    for step in wf.steps:
        runs = actions.get(step.id, {}).get("executions", 0)
        row = next(i for i, line in enumerate(table) if step.name in line)
        assert f" {runs:,} " in table[row] and step.action_type in table[row], step.name

    subprocess.run(
        ["pdftoppm", "-png", "-r", "50", "-f", "1", "-l", "1", str(pdf), str(tmp_path / "page")],
        check=True,
    )
    page = next(tmp_path.glob("page*.png"))
    with Image.open(page) as img:
        gray = img.convert("L")
        dark = sum(gray.histogram()[:128])
        assert img.width > 300 and dark > 2000


# jobs ---------------------------------------------------------------------------------------


async def _wait_done(client: TestClient, job: dict[str, Any], token: str = "a_export") -> dict:
    for _ in range(200):
        status, body = await _get(client, job["status_url"], token)
        assert status == 200
        job = json.loads(body)
        if job["status"] not in ("queued", "running"):
            return job
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job['job_id']} did not finish")


@pytest.mark.parametrize(
    ("dataset", "fmt"),
    [("executions", "csv"), ("summary", "json"), ("funnel", "ndjson"), ("actions", "pdf")],
)
async def test_job_downloads_what_the_stream_gives(
    client: TestClient, store: Store, export_dir: Path, dataset: str, fmt: str
) -> None:
    wid = _workflow(store)
    q = {**_range(store), "dataset": dataset, "format": fmt}
    path = f"{P}/workflows/{wid}/analytics/export"
    resp = await client.post(path, params=q, headers=auth("a_export"))
    assert resp.status == 202, await resp.text()
    job = await resp.json()
    assert resp.headers["Location"] == job["status_url"]
    assert job["status"] == "running" and job["download_url"] is None
    job = await _wait_done(client, job)
    assert job["status"] == "succeeded", job
    assert job["attempts"] == 1 and job["error"] is None
    assert sorted(p.name for p in export_dir.glob(f"{job['job_id']}*")) == [
        f"{job['job_id']}.{fmt}"
    ]
    status, body = await _get(client, job["download_url"], "a_export")
    assert status == 200
    assert job["bytes"] == len(body)
    status, direct = await _get(client, path, "a_export", **q)
    if fmt in ("csv", "ndjson"):
        assert body == direct
        n = body.count(b"\n") - (1 if fmt == "csv" else 0)
        assert job["rows"] == n
    elif fmt == "json":
        a, b = json.loads(body), json.loads(direct)
        a.pop("generated_at"), b.pop("generated_at")
        assert a == b
    else:
        assert body.startswith(b"%PDF-") and direct.startswith(b"%PDF-")


async def test_json_body_is_accepted_and_bad_input_named(client: TestClient, store: Store) -> None:
    wid = _workflow(store)
    path = f"{P}/workflows/{wid}/analytics/export"
    resp = await client.post(
        path, json={"dataset": "funnel", "format": "json", "range": "7d"}, headers=auth("a_export")
    )
    assert resp.status == 202
    assert (await _wait_done(client, await resp.json()))["status"] == "succeeded"
    for params, param in (
        ({"format": "xlsx"}, "format"),
        ({"dataset": "contacts"}, "dataset"),
        ({"dataset": "executions", "format": "pdf"}, "format"),
        ({"from": "yesterday"}, "from"),
        ({"path": "/etc/passwd"}, "path"),
    ):
        resp = await client.get(path, params=params, headers=auth("a_export"))
        assert resp.status == 400, params
        assert (await resp.json())["param"] == param


async def test_tenant_isolation_and_scopes(client: TestClient, store: Store) -> None:
    wid = _workflow(store)
    other = _workflow(store, "tenant-2")
    path = f"{P}/workflows/{wid}/analytics/export"
    resp = await client.post(path, params={"dataset": "summary"}, headers=auth("a_export"))
    job = await _wait_done(client, await resp.json())
    for url in (job["status_url"], f"{job['status_url']}/download"):
        status, body = await _get(client, url, "b_export")
        assert status == 404, url
        assert json.loads(body)["detail"] == "no such export job"
    for bad in (str(uuid.uuid4()), "..%2F..%2Fetc%2Fpasswd", "not-a-uuid"):
        status, _ = await _get(client, f"{P}/exports/{bad}/download", "a_export")
        assert status == 404, bad
    for method in ("GET", "POST"):
        resp = await client.request(method, path, headers=auth("b_export"))
        assert resp.status == 404, method
        resp = await client.request(
            method, f"{P}/workflows/{other}/analytics/export", headers=auth("a_export")
        )
        assert resp.status == 404, method
        resp = await client.request(method, path, headers=auth("a_read"))
        assert resp.status == 403, method
        resp = await client.request(method, path)
        assert resp.status == 401, method
    status, _ = await _get(client, job["status_url"], "a_read")
    assert status == 403


async def test_formula_injection_is_neutralised(client: TestClient, store: Store) -> None:
    wid = _workflow(store, k=1)
    wf = store.data.workflow(wid)
    conn = await asyncpg.connect(store.dsn)
    try:
        for step, evil in zip(wf.steps, INJECTED, strict=False):
            await conn.execute(
                "UPDATE wfa.workflow_steps SET name = $3 WHERE workflow_id = $1 AND step_id = $2",
                wid, step.id, evil,
            )
        first = await conn.fetchval(
            "SELECT execution_id FROM wfa.executions WHERE workflow_id = $1 "
            "ORDER BY enrolled_at DESC LIMIT 1",
            wid,
        )
        await conn.execute(
            "UPDATE wfa.executions SET contact_id = '=cmd|'' /C calc''!A0', "
            "exit_reason = '@SUM(1+1)' WHERE execution_id = $1",
            first,
        )
        tricky = await conn.fetchval(
            "UPDATE wfa.executions SET exit_reason = $2 WHERE execution_id = ("
            "SELECT execution_id FROM wfa.executions WHERE workflow_id = $1 "
            "ORDER BY enrolled_at DESC OFFSET 1 LIMIT 1) RETURNING execution_id",
            wid,
            TRICKY,
        )
    finally:
        await conn.close()
    path = f"{P}/workflows/{wid}/analytics/export"
    q = _range(store)
    _, body = await _get(client, path, "a_export", **q, dataset="funnel")
    _, rows = parse_csv(body)
    names = [r["name"] for r in rows]
    n = min(len(INJECTED), len(wf.steps))
    assert names[:n] == ["'" + s for s in INJECTED[:n]]
    _, body = await _get(client, path, "a_export", **q, dataset="funnel", format="json")
    assert [s["name"] for s in json.loads(body)["steps"]][:n] == list(INJECTED[:n])
    _, body = await _get(client, path, "a_export", **q, dataset="executions")
    _, rows = parse_csv(body)
    evil = next(r for r in rows if r["execution_id"] == first)
    assert evil["contact_id"] == "'=cmd|' /C calc'!A0"
    assert evil["exit_reason"] == "'@SUM(1+1)"
    assert next(r for r in rows if r["execution_id"] == tricky)["exit_reason"] == TRICKY
    assert not any(
        v.startswith(("=", "+", "-", "@", "\t", "\r"))
        for r in rows
        for v in r.values()
        if isinstance(v, str)
    )


async def test_store_formula_guard_equals_the_python_one(store: Store) -> None:
    # The executions CSV is guarded by wfa.csv_safe in the store, every other export by
    # neutralise in Python: both must guard exactly the same cells.
    cells = [*INJECTED, TRICKY, "", "'quoted", "=", "\r\nx", " =x", "x=", "é=", "€", "ab",
             *(chr(c) + "rest" for c in range(1, 128)), "\u00a0-x", "\U0001f600+"]
    conn = await asyncpg.connect(store.dsn)
    try:
        got = await conn.fetch(
            "SELECT c, wfa.csv_safe(c) AS safe FROM unnest($1::text[]) c", cells
        )
        assert await conn.fetchval("SELECT wfa.csv_safe(NULL)") is None
    finally:
        await conn.close()
    assert [r["safe"] for r in got] == [neutralise(c) for c in cells]
    # Guarded: the six first characters among chr(1..127), every INJECTED, "=" and "\r\nx".
    assert sum(r["safe"] != r["c"] for r in got) == 6 + len(INJECTED) + 2


async def test_concurrent_jobs_are_limited_per_tenant(
    store: Store, tmp_path: Path
) -> None:
    client = await started(export_config(store.dsn, tmp_path, max_concurrent_per_tenant=2), store)
    wid, other = _workflow(store), _workflow(store, "tenant-2")
    blocker = await asyncpg.connect(store.dsn)
    tx = blocker.transaction()
    await tx.start()
    try:
        await blocker.execute("LOCK TABLE wfa.executions IN ACCESS EXCLUSIVE MODE")
        params = {"dataset": "executions"}
        jobs = []
        for _ in range(2):
            resp = await client.post(
                f"{P}/workflows/{wid}/analytics/export", params=params, headers=auth("a_export")
            )
            assert resp.status == 202
            jobs.append(await resp.json())
        resp = await client.post(
            f"{P}/workflows/{wid}/analytics/export", params=params, headers=auth("a_export")
        )
        assert resp.status == 429 and resp.headers["Retry-After"]
        assert "at most 2" in (await resp.json())["detail"]
        resp = await client.post(
            f"{P}/workflows/{other}/analytics/export", params=params, headers=auth("b_export")
        )
        assert resp.status == 202
        jobs.append(await resp.json())
        status, body = await _get(client, jobs[0]["status_url"] + "/download", "a_export")
        assert status == 409 and "running" in json.loads(body)["detail"]
    finally:
        await tx.rollback()
        await blocker.close()
    try:
        for job, token in zip(jobs, ("a_export", "a_export", "b_export"), strict=True):
            assert (await _wait_done(client, job, token))["status"] == "succeeded"
    finally:
        await client.close()


async def test_expired_files_are_removed(client: TestClient, store: Store, export_dir) -> None:
    wid = _workflow(store)
    resp = await client.post(
        f"{P}/workflows/{wid}/analytics/export", params={"format": "json"}, headers=auth("a_export")
    )
    job = await _wait_done(client, await resp.json())
    file = export_dir / f"{job['job_id']}.json"
    assert file.is_file()
    assert parse_ts(job["expires_at"]) - parse_ts(job["finished_at"]) == timedelta(hours=24)
    conn = await asyncpg.connect(store.dsn)
    try:
        await conn.execute(
            "UPDATE wfa.export_jobs SET expires_at = now() - interval '1 second' "
            "WHERE job_id = $1",
            uuid.UUID(job["job_id"]),
        )
    finally:
        await conn.close()
    assert await client.app[JOBS].cleanup() >= 1
    assert not file.exists()
    status, body = await _get(client, job["download_url"], "a_export")
    assert status == 410
    status, body = await _get(client, job["status_url"], "a_export")
    assert json.loads(body)["status"] == "expired"


def test_csv_lines_keep_quoted_line_feeds_across_chunks() -> None:
    body = b'a,"x\ny"\nb,"say ""hi""\n"\nc,\n'
    for size in (1, 2, 3, 5, 7, len(body)):
        lines = CsvLines()
        out = b"".join(lines.feed(body[i : i + size]) for i in range(0, len(body), size))
        lines.close()
        assert out == b'a,"x\ny"\r\nb,"say ""hi""\n"\r\nc,\r\n', size
        assert lines.rows == 3
        assert list(csv.reader(io.StringIO(out.decode(), newline=""))) == [
            ["a", "x\ny"], ["b", 'say "hi"\n'], ["c", ""]
        ]


# restarts -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_restart_mid_job_resumes_or_fails_with_reason(
    store: Store, tmp_path: Path
) -> None:
    """A real `wfa api` is killed while its job runs; a new process resumes the job."""
    wid = _workflow(store)
    port = _free_port()
    config = tmp_path / "wfa.yaml"
    tokens = "\n".join(
        f"    - {{name: {n}, sha256: {token_digest(s)}, tenant: {t}, scopes: [{', '.join(sc)}]}}"
        for n, (s, t, sc) in EXPORT_TOKENS.items()
    )
    config.write_text(
        f"source: {{dsn: '{store.dsn}'}}\nstore: {{backend: postgres}}\n"
        f"api:\n  listen: 127.0.0.1:{port}\n  tokens:\n{tokens}\n"
        f"exports: {{directory: '{tmp_path / 'files'}'}}\n"
    )
    blocker = await asyncpg.connect(store.dsn)
    tx = blocker.transaction()
    await tx.start()
    await blocker.execute("LOCK TABLE wfa.executions IN ACCESS EXCLUSIVE MODE")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "api", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"{base}/healthz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError("wfa api did not start")
            async with http.post(
                f"{base}{P}/workflows/{wid}/analytics/export",
                params={**_range(store), "dataset": "executions"},
                headers=auth("a_export"),
            ) as r:
                assert r.status == 202
                job_id = uuid.UUID((await r.json())["job_id"])
        await asyncio.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        await tx.rollback()
    row = await blocker.fetchrow("SELECT * FROM wfa.export_jobs WHERE job_id = $1", job_id)
    assert row["status"] == "running" and row["attempts"] == 1
    killed_owner = row["owner"]

    # A job that already used up its starts, left running by a dead process, fails instead.
    dead = uuid.uuid4()
    await blocker.execute(
        "INSERT INTO wfa.export_jobs (job_id, tenant_id, workflow_id, dataset, format, params, "
        "requested_by, status, owner, attempts, expires_at) SELECT $1, tenant_id, workflow_id, "
        "dataset, format, params, requested_by, 'running', 12345, 3, expires_at "
        "FROM wfa.export_jobs WHERE job_id = $2",
        dead,
        job_id,
    )
    cfg = export_config(store.dsn, tmp_path / "files")
    assert store.svc.store is not None
    jobs = ExportJobs(cfg.exports, store.svc.store, store.dsn, JobSettings(housekeeping_s=3600))
    resumed = await jobs.start()
    try:
        deadline = time.monotonic() + 10
        while job_id not in resumed and time.monotonic() < deadline:
            resumed += await jobs.adopt()
            await asyncio.sleep(0.1)
        assert job_id in resumed
        await jobs.wait(job_id, 30)
        row = await blocker.fetchrow("SELECT * FROM wfa.export_jobs WHERE job_id = $1", job_id)
        assert row["status"] == "succeeded", row["error"]
        assert row["attempts"] == 2
        start, end = parse_ts(_range(store)["from"]), parse_ts(_range(store)["to"])
        want = sum(1 for e in store.truth.executions(wid) if start <= e.enrolled_at < end)
        assert row["rows"] == want
        body = (tmp_path / "files" / f"{job_id}.csv").read_bytes()
        assert body.count(b"\r\n") == want + 1
        assert not list((tmp_path / "files").glob("*.part"))
        gone = await blocker.fetchrow("SELECT * FROM wfa.export_jobs WHERE job_id = $1", dead)
        assert gone["status"] == "failed"
        assert "interrupted 3 times by restarts" in gone["error"]
        held = await blocker.fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = $1 "
            "AND objid = $2::bigint::oid",
            EXPORT_OWNERS,
            killed_owner,
        )
        assert held == 0
    finally:
        await jobs.close(2)
        await blocker.close()


# memory -------------------------------------------------------------------------------------


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def fill_executions(dsn: str, wid: str, tenant: str, n: int, pad: int, end: datetime) -> None:
    """Insert `n` executions of `wid` spread over the 10 days before `end`."""
    from exporter.store.postgres import PostgresBackend

    conn = await asyncpg.connect(dsn)
    try:
        await PostgresBackend().prepare_write(
            conn, {"executions": (end - timedelta(days=11), end)}
        )
        await conn.execute(
            "INSERT INTO wfa.executions (execution_id, enrolled_at, tenant_id, workflow_id, "
            "contact_id, status, completed_at, source_updated_at) "
            "SELECT 'bulk-' || g, $4::timestamptz - g * interval '17 seconds', $2, $1, "
            "'contact-' || g || repeat('x', $5), 'completed', "
            "$4::timestamptz - g * interval '17 seconds' + interval '5 minutes', now() "
            "FROM generate_series(1, $3) g",
            wid,
            tenant,
            n,
            end,
            pad,
        )
    finally:
        await conn.close()


async def test_executions_stream_memory_is_bounded(client: TestClient, store: Store) -> None:
    wid = _workflow(store, k=2)
    end = store.data.now.replace(microsecond=0)
    n = 50_000
    conn = await asyncpg.connect(store.dsn)
    try:
        await conn.execute("DELETE FROM wfa.executions WHERE workflow_id = $1", wid)
    finally:
        await conn.close()
    await fill_executions(store.dsn, wid, "tenant-1", n, 1000, end)
    before = _rss_mb()
    peak = before
    size = rows = 0
    resp = await client.get(
        f"{P}/workflows/{wid}/analytics/export",
        params={"dataset": "executions", "from": (end - timedelta(days=20)).isoformat()},
        headers=auth("a_export"),
    )
    assert resp.status == 200
    assert resp.headers.get("Transfer-Encoding") == "chunked"
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        rows += chunk.count(b"\r\n")
        peak = max(peak, _rss_mb())
    assert rows == n + 1
    assert size > 50 * 1024 * 1024
    assert peak - before < 40, f"RSS grew {peak - before:.0f} MiB for a {size >> 20} MiB export"


async def test_responses_match_the_openapi_document(client: TestClient, store: Store) -> None:
    spec = OpenApi(await (await client.get(f"{P}/openapi.json")).json())
    wid = _workflow(store)
    path = f"{P}/workflows/{wid}/analytics/export"
    resp = await client.post(path, params={"dataset": "funnel"}, headers=auth("a_export"))
    body = await resp.read()
    spec.validate("POST", path, resp.status, resp.content_type, body)
    job = await _wait_done(client, json.loads(body))
    for url, token in (
        (job["status_url"], "a_export"),
        (job["status_url"], "b_export"),
        (job["status_url"], "a_read"),
        (f"{P}/exports/{uuid.uuid4()}/download", "a_export"),
        (f"{path}?format=xlsx", "a_export"),
    ):
        resp = await client.get(url, headers=auth(token))
        spec.validate("GET", url.split("?")[0], resp.status, resp.content_type, await resp.read())
    resp = await client.get(job["download_url"], headers=auth("a_export"))
    assert resp.status == 200 and resp.content_type == "text/csv"
