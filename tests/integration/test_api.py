"""The HTTP API against a real store filled by the simulator: numbers, errors, tenants, schema."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient, TestServer

from exporter.api import ApiSettings, create_app
from exporter.histogram import quantile
from tests.conftest import PgServer
from tests.integration.test_api_common import (
    OpenApi,
    Store,
    api_client,
    api_config,
    auth,
    parse_ts,
    store_db,
    ts,
)
from tests.kit.truth import bucket_start

P = "/api/v1"
FIELDS = ("enrollments", "completions", "conversions", "exits", "failures")


@pytest.fixture(scope="module")
async def store(pg: PgServer) -> AsyncIterator[Store]:
    """One simulated store for the whole module (read-only here)."""
    async with store_db(pg) as s:
        yield s


async def call(
    client: TestClient,
    spec: OpenApi,
    path: str,
    token: str | None = "a_read",
    method: str = "GET",
    **kw: Any,
) -> tuple[int, dict[str, Any], Any]:
    """Request, validate against the OpenAPI document, return (status, headers, json)."""
    headers = {**(auth(token) if token else {}), **kw.pop("headers", {})}
    resp = await client.request(method, path, headers=headers, **kw)
    body = await resp.read()
    spec.validate(method, path, resp.status, resp.content_type, body)
    assert "X-Request-Id" in resp.headers
    return resp.status, dict(resp.headers), json.loads(body)


# numbers against the truth ----------------------------------------------------------------


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def _hist_stats(h: dict[str, Any], qs: tuple[float, ...]) -> dict[str, float | None]:
    out: dict[str, float | None] = {"avg": h["sum_ms"] / h["count"] / 1000 if h["count"] else None}
    for q in qs:
        out[f"p{round(q * 100)}"] = quantile(q, h["buckets"])
    return out


def _ranges(now: datetime) -> list[tuple[dict[str, str], str | None, str]]:
    """(query, expected granularity or None, tz) for several ways of giving a range."""
    ist = timezone(timedelta(hours=5, minutes=30))
    odd_from = (now - timedelta(days=20, minutes=-17, seconds=23)).astimezone(ist)
    epoch = int((now - timedelta(days=2, hours=3)).timestamp() * 1000)
    return [
        ({"range": "7d"}, "day", "UTC"),
        (
            {"from": "now-30d/d", "to": "now/d", "granularity": "week", "tz": "Europe/Berlin"},
            "week",
            "Europe/Berlin",
        ),
        (
            {
                "from": odd_from.isoformat(),
                "to": ts(now - timedelta(days=3, minutes=7)),
                "granularity": "day",
                "tz": "America/New_York",
            },
            "day",
            "America/New_York",
        ),
        (
            {
                "from": str(epoch),
                "to": str(epoch + 2 * 86_400_000),
                "granularity": "hour",
                "tz": "Asia/Kolkata",
            },
            "hour",
            "Asia/Kolkata",
        ),
        (
            {"from": "now-45d", "granularity": "month", "tz": "Australia/Sydney"},
            "month",
            "Australia/Sydney",
        ),
    ]


def _check_summary(store: Store, wid: str, got: dict[str, Any], tz: str) -> None:
    start, end = parse_ts(got["range"]["from"]), parse_ts(got["range"]["to"])
    g = got["range"]["granularity"]
    truth = store.truth
    act = truth.activity(wid, start, end)
    for k in FIELDS:
        assert got[k] == act[k], k
    assert got["exits_by_reason"] == act["exits_by_reason"]
    cohort = truth.cohort_funnel(wid, start, end)
    assert got["completion_rate"] == pytest.approx(_ratio(cohort["completed"], cohort["enrolled"]))
    assert got["conversion_rate"] == pytest.approx(_ratio(cohort["converted"], cohort["enrolled"]))
    for name in ("time_to_complete", "time_to_convert"):
        want = _hist_stats(getattr(truth, name)(wid, start, end), (0.5, 0.95))
        assert got[f"{name}_seconds"] == pytest.approx(want), name
    series = truth.activity_series(wid, start, end, g, tz)
    buckets = [parse_ts(p["bucket"]) for p in got["series"]]
    assert buckets == sorted(set(buckets))
    assert buckets[0] == bucket_start(start, g, tz)
    assert all(b < end for b in buckets)
    nonzero = {
        parse_ts(p["bucket"]): {k: p[k] for k in FIELDS}
        for p in got["series"]
        if any(p[k] for k in FIELDS)
    }
    assert nonzero == {b: {k: v.get(k, 0) for k in FIELDS} for b, v in series.items()}
    assert sum(p["enrollments"] for p in got["series"]) == act["enrollments"]


def _check_cohort(store: Store, wid: str, got: dict[str, Any]) -> None:
    start, end = parse_ts(got["range"]["from"]), parse_ts(got["range"]["to"])
    want = store.truth.cohort_funnel(wid, start, end)
    assert got["mode"] == "cohort"
    for k in ("enrolled", "completed", "converted", "in_progress"):
        assert got[k] == want[k], k
    wf = store.data.workflow(wid)
    assert [s["step_id"] for s in got["steps"]] == wf.step_ids
    assert [s["index"] for s in got["steps"]] == list(range(len(wf.steps)))
    prev = want["enrolled"]
    for s, w, d in zip(got["steps"], want["steps"], wf.steps, strict=True):
        assert (s["name"], s["action_type"]) == (d.name, d.action_type)
        for k in ("reached", "in_progress", "dropped"):
            assert s[k] == w[k], (s["step_id"], k)
        assert s["dropoff_ratio"] == pytest.approx(_ratio(w["dropped"], w["reached"]))
        assert s["conversion_from_start"] == pytest.approx(_ratio(w["reached"], want["enrolled"]))
        assert s["conversion_from_previous"] == pytest.approx(_ratio(w["reached"], prev))
        prev = w["reached"]
    eligible = [s for s in got["steps"] if s["reached"] >= 20 and s["dropoff_ratio"] is not None]
    marked = [s["index"] for s in got["steps"] if s["bottleneck"]]
    if eligible and max(s["dropoff_ratio"] for s in eligible) > 0:
        worst = max(s["dropoff_ratio"] for s in eligible)
        assert len(marked) == 1
        assert got["steps"][marked[0]]["dropoff_ratio"] == worst
    else:
        assert marked == []


def _check_activity(store: Store, wid: str, got: dict[str, Any]) -> None:
    start, end = parse_ts(got["range"]["from"]), parse_ts(got["range"]["to"])
    want = store.truth.activity_funnel(wid, start, end)
    act = store.truth.activity(wid, start, end)
    assert got["mode"] == "activity"
    assert (got["enrolled"], got["completed"], got["converted"]) == (
        act["enrollments"],
        act["completions"],
        act["conversions"],
    )
    assert got["in_progress"] is None
    for s in got["steps"]:
        assert s["reached"] == want[s["step_id"]]
        for k in (
            "in_progress",
            "dropped",
            "dropoff_ratio",
            "conversion_from_previous",
            "conversion_from_start",
            "bottleneck",
        ):
            assert s[k] is None, k


def _perf(want: dict[str, Any]) -> dict[str, Any]:
    hist = {
        "count": want["duration_count"],
        "sum_ms": want["duration_ms_sum"],
        "buckets": want["duration_buckets"],
    }
    errors = sorted(want["errors"].items(), key=lambda kv: (-kv[1], kv[0]))[:5]
    return {
        "executions": want["executions"],
        "succeeded": want["succeeded"],
        "failed": want["failed"],
        "skipped": want["skipped"],
        "running": want["running"],
        "success_rate": _ratio(want["succeeded"], want["succeeded"] + want["failed"]),
        "duration_seconds": _hist_stats(hist, (0.5, 0.95, 0.99)),
        "top_errors": [{"error": e, "count": n} for e, n in errors],
    }


def _same_perf(got: dict[str, Any], want: dict[str, Any], what: str) -> None:
    for k, v in want.items():
        if k == "top_errors":
            assert got[k] == v, (what, k)
        else:
            assert got[k] == pytest.approx(v), (what, k)


def _check_actions(store: Store, wid: str, got: dict[str, Any]) -> None:
    start, end = parse_ts(got["range"]["from"]), parse_ts(got["range"]["to"])
    want = store.truth.actions(wid, start, end)
    wf = store.data.workflow(wid)
    types = {s.id: s.action_type for s in wf.steps}
    got_steps = {a["step_id"]: a for a in got["actions"]}
    assert [a["step_id"] for a in got["actions"]][: len(wf.steps)] == wf.step_ids
    by_type: dict[str, dict[str, Any]] = {}
    for sid, w in want.items():
        g = got_steps[sid]
        assert g["index"] == wf.step_ids.index(sid)
        assert g["action_type"] == types[sid]
        _same_perf(g, _perf(w), sid)
        t = by_type.setdefault(
            types[sid],
            {
                "executions": 0,
                "succeeded": 0,
                "failed": 0,
                "skipped": 0,
                "running": 0,
                "duration_ms_sum": 0,
                "duration_count": 0,
                "duration_buckets": {},
                "errors": {},
            },
        )
        for k in (
            "executions",
            "succeeded",
            "failed",
            "skipped",
            "running",
            "duration_ms_sum",
            "duration_count",
        ):
            t[k] += w[k]
        for le, n in w["duration_buckets"].items():
            t["duration_buckets"][le] = t["duration_buckets"].get(le, 0) + n
        for e, n in w["errors"].items():
            t["errors"][e] = t["errors"].get(e, 0) + n
    got_types = {t["action_type"]: t for t in got["action_types"]}
    assert set(got_types) == {k for k, v in by_type.items() if v["executions"]}
    for name, got_t in got_types.items():
        _same_perf(got_t, _perf(by_type[name]), name)


async def test_numbers_equal_truth_for_ranges_granularities_and_zones(
    client: TestClient, spec: OpenApi, store: Store
) -> None:
    """Every analytics endpoint equals the simulator's truth over several ranges and zones."""
    now = datetime.now(UTC)
    checked = 0
    for tenant, token in (("tenant-1", "a_read"), ("tenant-2", "b_read")):
        wids = store.workflows_of(tenant)[:2]
        for query, granularity, tz in _ranges(now):
            for wid in wids:
                base = f"{P}/workflows/{wid}/analytics"
                status, _, summary = await call(client, spec, base, token, params=query)
                assert status == 200, summary
                assert summary["workflow_id"] == wid
                assert summary["range"]["granularity"] == granularity
                assert summary["range"]["tz"] == tz
                _check_summary(store, wid, summary, tz)
                status, _, cohort = await call(client, spec, f"{base}/funnel", token, params=query)
                assert status == 200
                _check_cohort(store, wid, cohort)
                q = {**query, "mode": "activity"}
                status, _, activity = await call(client, spec, f"{base}/funnel", token, params=q)
                assert status == 200
                _check_activity(store, wid, activity)
                status, _, actions = await call(
                    client, spec, f"{base}/actions", token, params=query
                )
                assert status == 200
                _check_actions(store, wid, actions)
                checked += summary["enrollments"]
    assert checked > 500


async def test_relative_expressions_resolve_like_grafana(
    client: TestClient, spec: OpenApi, store: Store
) -> None:
    """now/d, now-1d/d, range=24h and the 7-day default give the expected half-open ranges."""
    wid = store.workflows_of("tenant-1")[0]
    base = f"{P}/workflows/{wid}/analytics/funnel"

    async def resolved(**q: str) -> tuple[datetime, datetime]:
        status, _, body = await call(client, spec, base, params=q)
        assert status == 200, body
        return parse_ts(body["range"]["from"]), parse_ts(body["range"]["to"])

    before = datetime.now(UTC).replace(microsecond=0)
    start, end = await resolved()
    assert end - start == timedelta(days=7) and before <= end <= datetime.now(UTC)
    today = bucket_start(before, "day", "Europe/Paris")
    start, end = await resolved(**{"from": "now/d", "to": "now/d", "tz": "Europe/Paris"})
    assert start == today and end == bucket_start(
        today + timedelta(hours=26), "day", "Europe/Paris"
    )
    start, end = await resolved(**{"from": "now-1d/d", "to": "now-1d/d"})
    assert (start, end) == (
        bucket_start(before, "day") - timedelta(days=1),
        bucket_start(before, "day"),
    )
    start, end = await resolved(range="24h")
    assert end - start == timedelta(hours=24)
    start, end = await resolved(**{"from": "now-2h/h", "to": "now+1h"})
    assert start == bucket_start(before, "hour") - timedelta(hours=2)
    start, end = await resolved(
        **{"from": "2024-03-01T00:00:00", "to": "2024-03-02", "tz": "Asia/Tokyo"}
    )
    assert start == datetime(2024, 2, 29, 15, tzinfo=UTC) and end == datetime(
        2024, 3, 1, 15, tzinfo=UTC
    )


# errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ({"from": "yesterday"}, "from"),
        ({"to": "2024-13-01T00:00:00Z"}, "to"),
        ({"from": "now-1d", "to": "now-2d"}, "from"),
        ({"from": "now-1d", "to": "now-1d"}, "from"),
        ({"from": "now-500d"}, "from"),
        ({"range": "1y"}, "range"),
        ({"range": "7d", "from": "now-1d"}, "range"),
        ({"granularity": "minute"}, "granularity"),
        ({"tz": "Mars/Olympus"}, "tz"),
        ({"tz": "../../etc/passwd"}, "tz"),
        ({"mode": "sideways"}, "mode"),
        ({"bogus": "1"}, "bogus"),
        ({"from": "now-1d'; DROP TABLE wfa.executions; --"}, "from"),
        ({"from": "0001-01-01T00:00:00Z", "to": "0001-01-02T00:00:00Z"}, "from"),
        ({"from": "now-400d", "granularity": "hour"}, "granularity"),
    ],
)
async def test_invalid_parameters_answer_400_naming_the_parameter(
    client: TestClient, spec: OpenApi, store: Store, query: dict[str, str], param: str
) -> None:
    """Bad values, from >= to and too long ranges are 400 problem documents naming the parameter."""
    wid = store.workflows_of("tenant-1")[0]
    status, headers, body = await call(
        client, spec, f"{P}/workflows/{wid}/analytics/funnel", params=query
    )
    assert status == 400, body
    assert headers["Content-Type"].startswith("application/problem+json")
    assert body["param"] == param
    assert body["status"] == 400 and body["title"] and body["detail"]
    text = json.dumps(body).lower()
    assert "traceback" not in text and "select" not in text and "drop table" not in text


async def test_repeated_parameter_and_long_query_are_rejected(
    client: TestClient, spec: OpenApi, store: Store
) -> None:
    """A parameter given twice is 400; an overlong query string is 414."""
    wid = store.workflows_of("tenant-1")[0]
    path = f"{P}/workflows/{wid}/analytics?range=7d&range=30d"
    status, _, body = await call(
        client, spec, f"{P}/workflows/{wid}/analytics", params=[("range", "7d"), ("range", "30d")]
    )
    assert status == 400 and body["param"] == "range", path
    status, _, body = await call(
        client, spec, f"{P}/workflows/{wid}/analytics", params={"tz": "x" * 3000}
    )
    assert status == 414


async def test_authentication_and_scopes(client: TestClient, spec: OpenApi, store: Store) -> None:
    """No or a bad token is 401 with a Bearer challenge; a token without `read` is 403."""
    wid = store.workflows_of("tenant-1")[0]
    for path in (f"{P}/workflows", f"{P}/workflows/{wid}/analytics"):
        status, headers, body = await call(client, spec, path, token=None)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
        resp = await client.get(path, headers={"Authorization": "Bearer wfa_not_a_token"})
        assert resp.status == 401
        resp = await client.get(path, headers={"Authorization": "Basic dXNlcjpwYXNz"})
        assert resp.status == 401
        status, _, body = await call(client, spec, path, token="a_export")
        assert status == 403 and "read" in body["detail"]


async def test_tenant_isolation_on_every_endpoint(
    client: TestClient, spec: OpenApi, store: Store
) -> None:
    """Tenant A's token on tenant B's workflows gets the same 404 as for a missing workflow."""
    a_ids, b_ids = store.workflows_of("tenant-1"), store.workflows_of("tenant-2")
    assert a_ids and b_ids
    status, _, listed = await call(client, spec, f"{P}/workflows")
    assert status == 200
    assert [w["workflow_id"] for w in listed["workflows"]] == sorted(a_ids)
    b_names = {w.name for w in store.data.workflows if w.tenant_id == "tenant-2"} - {
        w.name for w in store.data.workflows if w.tenant_id == "tenant-1"
    }
    assert not any(n in json.dumps(listed) for n in b_names)
    for wid in [*b_ids, "no-such-workflow"]:
        base = f"{P}/workflows/{wid}/analytics"
        for method, path, params in (
            ("GET", base, {}),
            ("GET", f"{base}/funnel", {}),
            ("GET", f"{base}/funnel", {"mode": "activity"}),
            ("GET", f"{base}/actions", {}),
            ("GET", f"{base}/stream", {}),
            ("POST", f"{base}/refresh", {}),
        ):
            status, _, body = await call(client, spec, path, "a_admin", method, params=params)
            assert status == 404, (path, body)
            body.pop("instance"), body.pop("request_id")
            assert body == {
                "type": "/api/v1/problems/not-found",
                "title": "Not Found",
                "status": 404,
                "detail": "no such workflow",
                "param": "workflow_id",
            }


async def test_workflows_list_has_steps_in_order(
    client: TestClient, spec: OpenApi, store: Store
) -> None:
    """GET /workflows lists each workflow with its ordered steps."""
    status, _, body = await call(client, spec, f"{P}/workflows", "b_read")
    assert status == 200
    got = {w["workflow_id"]: w for w in body["workflows"]}
    assert set(got) == set(store.workflows_of("tenant-2"))
    for wid, w in got.items():
        wf = store.data.workflow(wid)
        assert w["name"] == wf.name
        assert [(s["index"], s["step_id"], s["name"], s["action_type"]) for s in w["steps"]] == [
            (k, s.id, s.name, s.action_type) for k, s in enumerate(wf.steps)
        ]


async def test_health_ready_openapi_and_unknown_routes(client: TestClient, spec: OpenApi) -> None:
    """Probes answer without a token; unknown paths and methods are problem documents."""
    for path in ("/healthz", f"{P}/healthz"):
        status, _, body = await call(client, spec, path, token=None)
        assert (status, body) == (200, {"status": "alive"})
    for path in ("/readyz", f"{P}/readyz"):
        status, _, body = await call(client, spec, path, token=None)
        assert (status, body["status"]) == (200, "ready")
        assert set(body) == {"status", "data_as_of", "ingest_lag_seconds"}
        as_of = parse_ts(body["data_as_of"])
        assert 0 <= body["ingest_lag_seconds"] < 86400
        assert abs((datetime.now(UTC) - as_of).total_seconds() - body["ingest_lag_seconds"]) < 5
    assert spec.doc["openapi"] == "3.1.0"
    resp = await client.get(f"{P}/nothing-here")
    assert resp.status == 404 and resp.content_type == "application/problem+json"
    resp = await client.delete(f"{P}/workflows")
    assert resp.status == 405 and resp.content_type == "application/problem+json"
    assert "GET" in resp.headers["Allow"]
    resp = await client.get(f"{P}/workflows", headers={"X-Request-Id": "abc-123"})
    assert resp.headers["X-Request-Id"] == "abc-123"


async def test_refresh_runs_a_cycle_and_is_rate_limited(
    client: TestClient, spec: OpenApi, store: Store
) -> None:
    """POST refresh ingests and refreshes rollups, then answers 429 within the interval."""
    wid = store.workflows_of("tenant-1")[0]
    path = f"{P}/workflows/{wid}/analytics/refresh"
    status, _, body = await call(client, spec, path, "a_admin", "POST", json={"rollups": True})
    assert status == 200, body
    assert body["ingested"] and body["rollups_refreshed"] and body["workflow_changed"] is False
    assert "cycle" not in body  # the cycle's totals span every tenant: no tenant sees them
    status, headers, body = await call(client, spec, path, "a_read", "POST")
    assert status == 429 and int(headers["Retry-After"]) >= 1
    other = store.workflows_of("tenant-2")[0]
    status, _, body = await call(
        client, spec, f"{P}/workflows/{other}/analytics/refresh", "b_read", "POST"
    )
    assert status == 200 and "cycle" not in body
    status, _, body = await call(
        client, spec, f"{P}/workflows/{other}/analytics/refresh", "b_read", "POST", json={"x": 1}
    )
    assert status == 400 and body["param"] == "body.x"
    status, _, body = await call(
        client,
        spec,
        path,
        "a_read",
        "POST",
        data=b"{" * 70000,
        headers={"Content-Type": "application/json"},
    )
    assert status == 413


async def test_refresh_without_exporter_is_503_and_readyz_without_schema(
    store: Store, db_dsn: str
) -> None:
    """`wfa api` alone answers 503 on refresh; readyz is 503 when the schema is missing."""
    async with api_client(store, with_service=False) as c:
        wid = store.workflows_of("tenant-1")[0]
        resp = await c.post(f"{P}/workflows/{wid}/analytics/refresh", headers=auth("a_read"))
        assert resp.status == 503
        assert "wfa run" in (await resp.json())["detail"]
    pool = await asyncpg.create_pool(db_dsn, min_size=1, max_size=2)
    try:
        app = create_app(
            api_config(db_dsn), pool, settings=ApiSettings(), route_modules=["exporter.api.routes"]
        )
        async with TestClient(TestServer(app)) as c:
            resp = await c.get("/readyz")
            assert resp.status == 503
            assert "wfa migrate" in (await resp.json())["detail"]
            resp = await c.get("/healthz")
            assert resp.status == 200
    finally:
        await pool.close()
