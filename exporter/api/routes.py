"""Analytics endpoints: workflows, summary, funnel, actions, stream, refresh, health, OpenAPI."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web

from exporter import models, queries
from exporter.api.app import (
    API_PREFIX,
    CACHE,
    CONFIG,
    HUB,
    OUTAGES,
    POOL,
    SETTINGS,
    service_of,
)
from exporter.api.auth import Principal, require_scope
from exporter.api.errors import ProblemError
from exporter.api.openapi import openapi_document
from exporter.api.pages import PageQuery, decode_cursor, page_of
from exporter.api.params import (
    MAX_ID_CHARS,
    FunnelQuery,
    NoQuery,
    RefreshBody,
    TimeQuery,
    TimeRange,
    parse_body,
    parse_query,
    resolve_time,
)
from exporter.api.sse import run_stream
from exporter.db import describe, is_unreachable
from exporter.health import check_store, data_as_of, iso
from exporter.store.migrate import SchemaError

log = logging.getLogger(__name__)

READY_TIMEOUT_S = 5.0
READY_RETRY_AFTER_S = 5
DATA_AS_OF_HEADER = "X-Data-As-Of"
"""Response header: the store's freshness (see exporter.health), as in the body's data_as_of."""


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    raise TypeError(f"cannot serialize {type(value).__name__}")


def dumps(data: Any) -> bytes:
    """Compact JSON bytes (times as RFC 3339 UTC; non-finite floats become null)."""
    try:
        # Documents rarely hold a non-finite float: walk them only when one is there.
        return json.dumps(data, default=_default, separators=(",", ":"), allow_nan=False).encode()
    except ValueError:
        return json.dumps(_finite(data), default=_default, separators=(",", ":")).encode()


def _finite(data: Any) -> Any:
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_finite(v) for v in data]
    return data


WORKFLOWS_PER_PAGE = 500
"""Workflows per page without `limit` (more than most tenants have: one page)."""


def json_body(body: bytes, status: int = 200) -> web.Response:
    """A JSON response from already encoded bytes."""
    return web.Response(body=body, status=status, content_type="application/json")


def not_found() -> ProblemError:
    """The one answer for a workflow that is missing or belongs to another tenant."""
    return ProblemError(404, "Not Found", "no such workflow", param="workflow_id")


def workflow_id_of(request: web.Request) -> str:
    """The {workflow_id} path segment (404 when absurdly long)."""
    wid = request.match_info["workflow_id"]
    if not wid or len(wid) > MAX_ID_CHARS or "\x00" in wid:
        # The store keeps ids as text, which cannot hold NUL: no workflow has such an id.
        raise not_found()
    return wid


def time_range(request: web.Request, q: TimeQuery) -> TimeRange:
    """Resolve the time filter with the configured limits."""
    api = request.app[CONFIG].api
    return resolve_time(q, max_range=api.max_range, default_range=api.default_range)


async def load_workflow(
    request: web.Request, principal: Principal, workflow_id: str
) -> queries.Workflow:
    """The caller's workflow or 404 (also for another tenant's)."""
    async with request.app[POOL].acquire() as conn:
        wf = await queries.get_workflow(conn, principal.tenant, workflow_id)
    if wf is None:
        raise not_found()
    return wf


# bodies ----------------------------------------------------------------------------------


def _workflow(w: queries.Workflow) -> models.Workflow:
    return models.Workflow(
        workflow_id=w.workflow_id,
        name=w.name,
        updated_at=w.updated_at,
        steps=[
            models.Step(index=k, step_id=s.step_id, name=s.name, action_type=s.action_type)
            for k, s in enumerate(w.steps)
        ],
    )


Body = Callable[[Any, queries.Workflow, TimeRange], Awaitable[dict[str, Any]]]
"""An analytics document as the read queries give it (its model picks what it shows)."""


async def summary_body(conn: Any, wf: queries.Workflow, tr: TimeRange) -> dict[str, Any]:
    """The summary document of a workflow over a range."""
    return await queries.summary(
        conn, wf.tenant_id, wf, tr.start, tr.end, tr.granularity, tr.tz
    )


def _funnel_body(mode: str) -> Body:
    async def body(conn: Any, wf: queries.Workflow, tr: TimeRange) -> dict[str, Any]:
        if mode == "cohort":
            f = await queries.cohort_funnel(conn, wf.tenant_id, wf, tr.start, tr.end)
        else:
            f = await queries.activity_funnel(conn, wf.tenant_id, wf, tr.start, tr.end)
        return {"mode": mode, **f}

    return body


async def actions_body(conn: Any, wf: queries.Workflow, tr: TimeRange) -> dict[str, Any]:
    """The action performance document of a workflow over a range."""
    return await queries.actions(conn, wf.tenant_id, wf, tr.start, tr.end)


class WorkflowCache:
    """Workflow definitions per (tenant, id) for a few seconds; misses are not kept."""

    def __init__(self, ttl: float = 30.0, max_entries: int = 10_000) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[tuple[str, str], tuple[float, queries.Workflow]] = {}

    async def get(self, conn: Any, tenant: str, workflow_id: str) -> queries.Workflow | None:
        """The tenant's workflow, or None when it has no such workflow."""
        hit = self._entries.get((tenant, workflow_id))
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        wf = await queries.get_workflow(conn, tenant, workflow_id)
        if wf is not None:
            if len(self._entries) >= self.max_entries:
                self._entries.clear()
            self._entries[(tenant, workflow_id)] = (now + self.ttl, wf)
        return wf


WORKFLOWS = web.AppKey("wfa_workflow_cache", WorkflowCache)
_BODIES: dict[str, tuple[Body, type[models.Answer]]] = {
    "summary": (summary_body, models.Summary),
    "funnel:cohort": (_funnel_body("cohort"), models.Funnel),
    "funnel:activity": (_funnel_body("activity"), models.Funnel),
    "actions": (actions_body, models.Actions),
}


@dataclass(frozen=True, slots=True)
class Answer:
    """An analytics document as JSON bytes and its freshness (RFC 3339, None when unknown)."""

    body: bytes
    data_as_of: str | None

    def response(self) -> web.Response:
        """The 200 response: the body, with `X-Data-As-Of` when the freshness is known."""
        resp = json_body(self.body)
        if self.data_as_of is not None:
            resp.headers[DATA_AS_OF_HEADER] = self.data_as_of
        return resp


async def analytics_answer(
    app: web.Application,
    principal: Principal,
    workflow_id: str,
    tr: TimeRange,
    kind: str,
    question: tuple = (),
) -> Answer:
    """One analytics document with its freshness, from the cache when it is fresh.

    `question` identifies the request's own wording of a relative range (its query
    parameters), so an answer a second old can stand in while the new one is computed.
    The freshness is read before the numbers, so they include at least what it claims;
    a cached answer keeps the freshness it was computed with.
    """
    body_fn, model = _BODIES[kind]
    scope = (kind, principal.tenant, workflow_id)
    key = (*scope, tr.start, tr.end, tr.granularity, tr.tz)
    family = (*scope, question) if tr.relative else None

    async def compute() -> Answer:
        async with app[POOL].acquire() as conn:
            as_of = iso(await data_as_of(conn))
            wf = await app[WORKFLOWS].get(conn, principal.tenant, workflow_id)
            if wf is None:
                raise not_found()
            doc = await body_fn(conn, wf, tr)
        answer = model.model_validate(
            {**doc, "workflow_id": workflow_id, "range": tr.to_json(), "data_as_of": as_of}
        )
        return Answer(answer.json_bytes(), as_of)

    return await app[CACHE].get(key, workflow_id, compute, family)


def question_of(q: TimeQuery) -> tuple:
    """The query parameters as given, a hashable key."""
    return tuple(sorted((k, v) for k, v in q.model_dump().items() if v is not None))


# handlers --------------------------------------------------------------------------------


async def list_workflows(request: web.Request) -> web.Response:
    """GET /workflows: the tenant's workflows and their steps, a page at a time."""
    principal = require_scope(request, "read")
    q = parse_query(request.query, PageQuery)
    limit = q.limit or WORKFLOWS_PER_PAGE
    after = decode_cursor(q.cursor, (str,))[0] if q.cursor else None
    async with request.app[POOL].acquire() as conn:
        wfs = await queries.workflows_page(conn, principal.tenant, after, limit + 1)
    page = page_of(request, wfs, limit, lambda w: (w.workflow_id,))
    body = models.WorkflowList(workflows=[_workflow(w) for w in page.items], next=page.next)
    return page.link(json_body(body.json_bytes()))


async def _analytics(request: web.Request, kind: str, q: TimeQuery) -> web.Response:
    principal = require_scope(request, "read")
    tr = time_range(request, q)
    answer = await analytics_answer(
        request.app, principal, workflow_id_of(request), tr, kind, question_of(q)
    )
    return answer.response()


async def get_summary(request: web.Request) -> web.Response:
    """GET /workflows/{id}/analytics: activity counts, cohort rates, times, series."""
    require_scope(request, "read")
    return await _analytics(request, "summary", parse_query(request.query, TimeQuery))


async def get_funnel(request: web.Request) -> web.Response:
    """GET /workflows/{id}/analytics/funnel: cohort or activity funnel."""
    require_scope(request, "read")
    q = parse_query(request.query, FunnelQuery)
    return await _analytics(request, f"funnel:{q.mode}", q)


async def get_actions(request: web.Request) -> web.Response:
    """GET /workflows/{id}/analytics/actions: performance per step and per action type."""
    require_scope(request, "read")
    return await _analytics(request, "actions", parse_query(request.query, TimeQuery))


async def stream(request: web.Request) -> web.StreamResponse:
    """GET /workflows/{id}/analytics/stream: summary events as ingestion touches the workflow."""
    principal = require_scope(request, "read")
    q = parse_query(request.query, TimeQuery)
    time_range(request, q)
    wid = workflow_id_of(request)
    await load_workflow(request, principal, wid)
    app = request.app
    hub = app[HUB]
    limit = app[CONFIG].api.sse_max_per_token
    if hub.streams_of(principal.name) >= limit:
        raise ProblemError(
            429,
            "Too Many Requests",
            f"at most {limit} open streams per token",
            headers={"Retry-After": "5"},
        )

    async def snapshot() -> bytes:
        tr = time_range(request, q)
        answer = await analytics_answer(app, principal, wid, tr, "summary", question_of(q))
        return answer.body

    return await run_stream(
        request, hub, wid, principal.name, snapshot, heartbeat=app[SETTINGS].heartbeat
    )


class Refresher:
    """Serializes on-demand ingest cycles and limits them per tenant."""

    def __init__(self, min_interval: float) -> None:
        self.min_interval = min_interval
        self.lock = asyncio.Lock()
        self._last: dict[str, float] = {}

    def admit(self, tenant: str) -> None:
        """429 when this tenant refreshed less than `min_interval` ago."""
        now = time.monotonic()
        last = self._last.get(tenant)
        if last is not None and now - last < self.min_interval:
            wait = math.ceil(self.min_interval - (now - last))
            raise ProblemError(
                429,
                "Too Many Requests",
                f"refresh is limited to one per {self.min_interval:g} s",
                headers={"Retry-After": str(wait)},
            )
        self._last[tenant] = now


REFRESHER = web.AppKey("wfa_refresher", Refresher)


async def refresh(request: web.Request) -> web.Response:
    """POST /workflows/{id}/analytics/refresh: ingest now and refresh the rollups."""
    principal = require_scope(request, "read")
    parse_query(request.query, NoQuery)
    body = await parse_body(request, RefreshBody)
    wid = workflow_id_of(request)
    await load_workflow(request, principal, wid)
    service = service_of(request.app)
    if service is None or service.store is None or service.backend is None:
        raise ProblemError(
            503,
            "Service Unavailable",
            "refresh needs the exporter in this process: run `wfa run`",
        )
    refresher = request.app[REFRESHER]
    refresher.admit(principal.tenant)
    started = time.monotonic()
    async with refresher.lock:
        try:
            result = await service.poll_once(refresh=False)
        except Exception as exc:
            log.warning("refresh poll failed: %s", exc)
            raise ProblemError(
                503, "Service Unavailable", "the ingest cycle failed; try again later"
            ) from None
        if result is None:
            raise ProblemError(
                503, "Service Unavailable", "another exporter replica holds the poll lock"
            )
        refreshed = False
        if body.rollups:
            await service.refresh_rollups()
            refreshed = True
    touched = wid in result.touched
    if result.touched:
        request.app[HUB].bump(sorted(result.touched))
    out = models.RefreshResult(
        workflow_id=wid,
        ingested=True,
        workflow_changed=touched,
        rollups_refreshed=refreshed,
        seconds=round(time.monotonic() - started, 3),
    )
    # The cycle's totals cover every tenant: a tenant's answer never carries them.
    return json_body(out.json_bytes())


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: the process answers."""
    parse_query(request.query, NoQuery)
    return json_body(models.Status(status="alive").json_bytes())


async def readyz(request: web.Request) -> web.Response:
    """GET /readyz: store reachable, schema current, source reachable, ingest lag bounded."""
    parse_query(request.query, NoQuery)
    app = request.app
    service = service_of(app)
    if service is not None and not service.opened:
        raise _not_ready("the exporter is still starting: waiting for the store")
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with app[POOL].acquire() as conn:
                state = await check_store(
                    conn,
                    max_lag=app[CONFIG].exporter.ready_max_lag,
                    health=service.state.health if service is not None else None,
                )
    except SchemaError as exc:
        raise _not_ready(str(exc)) from None
    except Exception as exc:
        if is_unreachable(exc):
            await app[POOL].expire_connections()
        app[OUTAGES].note(request, describe(exc))
        raise _not_ready("the store is not reachable") from None
    if not state.ready:
        raise _not_ready(state.reason or "not ready", **state.to_json())
    ready = models.Ready.model_validate({"status": "ready", **state.to_json()})
    return json_body(ready.json_bytes())


def _not_ready(detail: str, **extra: Any) -> ProblemError:
    return ProblemError(
        503,
        "Service Unavailable",
        detail,
        headers={"Retry-After": str(READY_RETRY_AFTER_S)},
        **extra,
    )


async def openapi(request: web.Request) -> web.Response:
    """GET /openapi.json: the OpenAPI 3.1 document of this API."""
    parse_query(request.query, NoQuery)
    return json_body(request.app[OPENAPI])


OPENAPI = web.AppKey("wfa_openapi", bytes)


def register(app: web.Application) -> None:
    """Add the analytics, health and OpenAPI routes."""
    app[WORKFLOWS] = WorkflowCache(app[SETTINGS].cache_ttl)
    app[REFRESHER] = Refresher(app[CONFIG].api.refresh_min_interval.total_seconds())
    app[OPENAPI] = dumps(openapi_document())
    p = API_PREFIX
    wf = f"{p}/workflows/{{workflow_id}}/analytics"
    get = app.router.add_get
    get(f"{p}/workflows", list_workflows)
    get(wf, get_summary)
    get(f"{wf}/funnel", get_funnel)
    get(f"{wf}/actions", get_actions)
    get(f"{wf}/stream", stream)
    app.router.add_post(f"{wf}/refresh", refresh)
    for prefix in (p, ""):
        get(f"{prefix}/healthz", healthz)
        get(f"{prefix}/readyz", readyz)
    get(f"{p}/openapi.json", openapi)
