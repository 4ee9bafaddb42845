"""Retention endpoints: policies in force, changes (audited), and runs on demand (dry or real).

Every route needs the `admin` scope. Dataset-wide periods and store-wide runs concern every
tenant: only an operator token (tenant "*") changes or starts them, and it sees every
workflow's period and the whole audit. A tenant's token sets and resets the periods of its
own workflows (never longer than the dataset's), runs retention over its own rows only,
and sees only the changes of its own workflows and its own runs. No answer to a tenant
carries a count of another tenant's rows.
"""

from __future__ import annotations

import asyncio
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from exporter import retention
from exporter.api.app import API_PREFIX, CONFIG, POOL, service_of
from exporter.api.auth import Principal, require_scope
from exporter.api.errors import ProblemError
from exporter.api.params import MAX_ID_CHARS, NoQuery, QueryModel, parse_body, parse_query
from exporter.api.routes import dumps, json_body
from exporter.config.durations import format_duration, parse_duration
from exporter.config.schema import DATASETS
from exporter.store import Backend, backend_for
from exporter.store.backend import retention_cutoffs

SCOPE = "admin"
MAX_AUDIT = 500


class BackendHolder:
    """The store backend the API uses for runs: the exporter's, or one made on first use."""

    def __init__(self) -> None:
        self.backend: Backend | None = None
        self.lock = asyncio.Lock()


BACKEND = web.AppKey("wfa_retention_backend", BackendHolder)


class PolicyBody(BaseModel):
    """PUT body: the new period (null: back to the config's), optionally for one workflow."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    period: str | None = Field(..., max_length=32)
    workflow_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS)


class ResetQuery(QueryModel):
    """DELETE /retention/{dataset}: back to the configured period, optionally of one workflow."""

    workflow_id: str | None = Field(None, min_length=1, max_length=MAX_ID_CHARS)


class RunQuery(QueryModel):
    """POST /retention/run: `dry_run` defaults to true."""

    dry_run: Literal["true", "false"] = "true"


class AuditQuery(QueryModel):
    """GET /retention/audit: how many changes, newest first."""

    limit: int = Field(50, ge=1, le=MAX_AUDIT)


async def _backend(request: web.Request) -> Backend:
    service = service_of(request.app)
    if service is not None and service.backend is not None:
        return service.backend
    holder = request.app[BACKEND]
    async with holder.lock:
        if holder.backend is None:
            async with request.app[POOL].acquire() as conn:
                holder.backend = await backend_for(conn, request.app[CONFIG].store)
        return holder.backend


def _dataset(request: web.Request) -> str:
    dataset = request.match_info["dataset"]
    if dataset not in DATASETS:
        raise ProblemError(
            404,
            "Not Found",
            f"no such retention dataset; one of {', '.join(DATASETS)}",
            param="dataset",
        )
    return dataset


async def _own_workflows(request: web.Request, principal: Principal, ids: list[str]) -> set[str]:
    """The ids among `ids` the principal may manage: its tenant's, or any known (operator)."""
    async with request.app[POOL].acquire() as conn:
        tenants = await retention.workflow_tenants(conn, ids)
    return {w for w, t in tenants.items() if principal.operator or t == principal.tenant}


def _tenant(principal: Principal) -> str | None:
    """The tenant a principal's retention actions are confined to; None for the operator."""
    return None if principal.operator else principal.tenant


async def get_policies(request: web.Request) -> web.Response:
    """GET /retention: each dataset's period in force, own workflow periods, last run."""
    principal = require_scope(request, SCOPE)
    parse_query(request.query, NoQuery)
    cfg = request.app[CONFIG]
    backend = await _backend(request)
    async with request.app[POOL].acquire() as conn:
        policies = await retention.load(conn, cfg)
        cutoffs = await retention_cutoffs(conn)
        last = await retention.last_run(conn, _tenant(principal))
    ids = sorted({w for per in policies.workflows.values() for w in per})
    own = set(ids) if principal.operator else await _own_workflows(request, principal, ids)
    datasets = []
    for d in DATASETS:
        p = policies.datasets[d]
        overrides = [
            v.to_json() for w, v in sorted(policies.workflows.get(d, {}).items()) if w in own
        ]
        datasets.append({**p.to_json(), "dropped_before": cutoffs.get(d), "workflows": overrides})
    minimum = retention.minimum_period(cfg, backend)
    body = {
        "backend": backend.name,
        "minimum_period": format_duration(minimum),
        "minimum_applies_to": list(retention.REFRESH_BOUND),
        "run_interval": format_duration(cfg.retention.run_interval),
        "datasets": datasets,
        "last_run": last,
    }
    return json_body(dumps(body))


async def put_policy(request: web.Request) -> web.Response:
    """PUT /retention/{dataset}: set or reset a dataset's (or one workflow's) period."""
    principal = require_scope(request, SCOPE)
    parse_query(request.query, NoQuery)
    dataset = _dataset(request)
    body = await parse_body(request, PolicyBody)
    return await _change(request, principal, dataset, body.period, body.workflow_id, "body.")


async def reset_policy(request: web.Request) -> web.Response:
    """DELETE /retention/{dataset}: back to the configured period (of one workflow)."""
    principal = require_scope(request, SCOPE)
    q = parse_query(request.query, ResetQuery)
    dataset = _dataset(request)
    return await _change(request, principal, dataset, None, q.workflow_id, "")


async def _change(
    request: web.Request,
    principal: Principal,
    dataset: str,
    text: str | None,
    workflow_id: str | None,
    where: str,
) -> web.Response:
    """Authorize, then store (or remove) one policy; the policy now in force and the change."""
    if workflow_id is None and not principal.operator:
        raise ProblemError(
            403,
            "Forbidden",
            "a dataset-wide period concerns every tenant: only an operator token "
            '(tenant "*") may change it; name one of your workflows in workflow_id',
            param=f"{where}workflow_id",
        )
    period = None
    if text is not None:
        try:
            period = parse_duration(text)
        except ValueError:
            raise ProblemError(
                400,
                "Invalid parameter",
                "must be a duration such as 90d, 400d or 2w, or null for the configured value",
                param=f"{where}period",
            ) from None
    if workflow_id is not None and not await _own_workflows(request, principal, [workflow_id]):
        raise ProblemError(404, "Not Found", "no such workflow", param=f"{where}workflow_id")
    cfg = request.app[CONFIG]
    backend = await _backend(request)
    try:
        async with request.app[POOL].acquire() as conn:
            change = await retention.set_policy(
                conn,
                cfg,
                backend,
                dataset=dataset,
                workflow_id=workflow_id,
                period=period,
                actor=principal.name,
                tenant=principal.tenant,
                capped=not principal.operator,
            )
            policies = await retention.load(conn, cfg)
    except retention.PolicyError as exc:
        raise ProblemError(
            400, "Invalid parameter", str(exc), param=f"{where}{exc.param}"
        ) from None
    if workflow_id is None:
        policy: Any = policies.datasets[dataset].to_json()
    else:
        own = policies.workflows.get(dataset, {}).get(workflow_id)
        policy = own.to_json() if own is not None else None
    return json_body(dumps({"policy": policy, "change": _change_json(change)}))


def _change_json(row: dict[str, Any]) -> dict[str, Any]:
    def fmt(p: Any) -> str | None:
        return format_duration(p) if p is not None else None

    return {
        "id": row["id"],
        "changed_at": row["changed_at"],
        "actor": row["actor"],
        "dataset": row["dataset"],
        "workflow_id": row["workflow_id"] or None,
        "old_period": fmt(row["old_period"]),
        "new_period": fmt(row["new_period"]),
        "old_source": row["old_source"],
        "new_source": row["new_source"],
    }


async def get_audit(request: web.Request) -> web.Response:
    """GET /retention/audit: policy changes, newest first."""
    principal = require_scope(request, SCOPE)
    q = parse_query(request.query, AuditQuery)
    async with request.app[POOL].acquire() as conn:
        rows = await retention.audit(conn, _tenant(principal), q.limit)
    return json_body(dumps({"changes": [_change_json(r) for r in rows]}))


async def run_now(request: web.Request) -> web.Response:
    """POST /retention/run: apply every policy now, or with dry_run=true say what it would do."""
    principal = require_scope(request, SCOPE)
    q = parse_query(request.query, RunQuery)
    cfg = request.app[CONFIG]
    backend = await _backend(request)
    try:
        async with request.app[POOL].acquire() as conn:
            result = await retention.run(
                conn,
                cfg,
                backend,
                dry_run=q.dry_run == "true",
                trigger="api",
                actor=principal.name,
                tenant=_tenant(principal),
            )
    except retention.RetentionBusy as exc:
        raise ProblemError(409, "Conflict", str(exc), headers={"Retry-After": "10"}) from None
    return json_body(dumps(result.to_json()))


def register(app: web.Application) -> None:
    """Add the retention routes."""
    app[BACKEND] = BackendHolder()
    p = f"{API_PREFIX}/retention"
    app.router.add_get(p, get_policies)
    app.router.add_get(f"{p}/audit", get_audit)
    app.router.add_post(f"{p}/run", run_now)
    app.router.add_put(f"{p}/{{dataset}}", put_policy)
    app.router.add_delete(f"{p}/{{dataset}}", reset_policy)
