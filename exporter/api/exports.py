"""Export endpoints: stream a dataset now, or run it as a stored job and download the file."""

from __future__ import annotations

import json
import logging
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any, Literal

import asyncpg
from aiohttp import web
from pydantic import ValidationError

from exporter.api.accept import negotiate
from exporter.api.app import API_PREFIX, CONFIG, POOL, SETTINGS
from exporter.api.auth import Principal, require_scope
from exporter.api.errors import ProblemError
from exporter.api.pages import PageQuery, decode_cursor, page_of
from exporter.api.params import (
    MAX_ID_CHARS,
    NoQuery,
    TimeQuery,
    json_object,
    parse_query,
    read_body,
)
from exporter.api.routes import (
    DATA_AS_OF_HEADER,
    dumps,
    json_body,
    load_workflow,
    time_range,
    workflow_id_of,
)
from exporter.db import describe, is_unreachable
from exporter.exports import (
    ExportJobs,
    ExportSpec,
    JobSettings,
    Progress,
    TooManyJobs,
    render,
)
from exporter.exports.formats import FORMATS
from exporter.health import data_as_of, iso
from exporter.queries import Workflow

log = logging.getLogger(__name__)

SCOPE = "export"
JOBS = web.AppKey("wfa_export_jobs", ExportJobs)
STREAMS = web.AppKey("wfa_export_streams", Counter)
RETRY_AFTER_S = 5


class ExportQuery(TimeQuery):
    """What to export: format, dataset, funnel mode, and the analytics time filter."""

    format: Literal["csv", "json", "ndjson", "pdf"] | None = None
    """None: chosen by the `Accept` header of a GET (csv without one), csv for a job."""
    dataset: Literal["summary", "funnel", "actions", "executions"] = "summary"
    mode: Literal["cohort", "activity"] = "cohort"


async def _spec(
    request: web.Request, principal: Principal, q: ExportQuery, *, negotiated: bool = False
) -> tuple[ExportSpec, Workflow]:
    fmt = q.format
    if fmt is None:
        accept = request.headers.get("Accept") if negotiated else None
        fmt = negotiate(accept, {f: FORMATS[f][0].split(";")[0] for f in FORMATS}, "csv")
    tr = time_range(request, q)
    wid = workflow_id_of(request)
    wf = await load_workflow(request, principal, wid)
    spec = ExportSpec(
        tenant=principal.tenant,
        workflow_id=wid,
        dataset=q.dataset,
        format=fmt,
        start=tr.start,
        end=tr.end,
        granularity=tr.granularity,
        tz=tr.tz,
        mode=q.mode,
    )
    if spec.format == "pdf" and spec.dataset == "executions":
        raise ProblemError(
            400,
            "Invalid parameter",
            "the executions dataset has no PDF form: use csv, json or ndjson",
            param="format",
        )
    return spec, wf


async def _query_of_post(request: web.Request) -> ExportQuery:
    """The POST's parameters: from the query string, or a JSON object body (not both)."""
    raw = await read_body(request)
    if not raw.strip():
        return parse_query(request.query, ExportQuery)
    if request.query:
        raise ProblemError(
            400, "Invalid parameter", "give the parameters in the query or the body, not both",
            param="body",
        )
    data = json_object(raw)
    if not all(isinstance(v, str) for v in data.values()):
        raise ProblemError(
            400, "Invalid parameter", "must be a JSON object of string values", param="body"
        )
    try:
        return ExportQuery.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        loc = ".".join(str(p) for p in err["loc"]) or "body"
        msg = "unknown parameter" if err["type"] == "extra_forbidden" else err["msg"]
        raise ProblemError(400, "Invalid parameter", msg, param=f"body.{loc}") from None


def _attachment(spec: ExportSpec) -> str:
    """A Content-Disposition value whose file name is chosen here, never by the caller."""
    return f'attachment; filename="{spec.download_name()}"'


# streaming ----------------------------------------------------------------------------------


async def stream_export(request: web.Request) -> web.StreamResponse:
    """GET /workflows/{id}/analytics/export: the export streamed in the response."""
    principal = require_scope(request, SCOPE)
    q = parse_query(request.query, ExportQuery)
    spec, wf = await _spec(request, principal, q, negotiated=True)
    if request.method == "HEAD":
        return web.Response(headers=_headers(spec))
    limit = request.app[CONFIG].exports.max_concurrent_per_tenant
    streams = request.app[STREAMS]
    if streams[principal.tenant] >= limit:
        raise ProblemError(
            429,
            "Too Many Requests",
            f"at most {limit} export streams per tenant at once",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )
    streams[principal.tenant] += 1
    try:
        return await _stream(request, spec, wf)
    finally:
        streams[principal.tenant] -= 1


def _headers(spec: ExportSpec) -> dict[str, str]:
    return {
        "Content-Type": FORMATS[spec.format][0],
        "Content-Disposition": _attachment(spec),
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "Vary": "Accept",
    }


async def _stream(request: web.Request, spec: ExportSpec, wf: Workflow) -> web.StreamResponse:
    now = datetime.now(UTC)
    response = web.StreamResponse(headers=_headers(spec))
    progress = Progress()
    async with request.app[POOL].acquire() as conn:
        as_of = iso(await data_as_of(conn))
        if as_of is not None:
            response.headers[DATA_AS_OF_HEADER] = as_of
        chunks = render(conn, wf, spec, progress, now)
        try:
            first = await anext(chunks, b"")
            if spec.format == "pdf":
                response.content_length = len(first)
            else:
                response.enable_chunked_encoding()
            try:
                await response.prepare(request)
                await response.write(first)
                async for chunk in chunks:
                    await response.write(chunk)
                await response.write_eof()
            except ConnectionError as exc:
                # The client went away (or its connection was cut): nothing to answer.
                log.info("export stream ended early after %d rows: %s", progress.rows, exc)
                _abandon(conn)
            except Exception as exc:
                if not response.prepared:
                    raise
                # Headers are sent: cut the connection so the client sees a truncated body.
                if is_unreachable(exc) or isinstance(exc, asyncpg.PostgresError):
                    log.warning(
                        "export stream failed after %d rows: %s", progress.rows, describe(exc)
                    )
                else:
                    log.exception("export stream failed after %d rows", progress.rows)
                _abandon(conn)
                if request.transport is not None:
                    request.transport.abort()
        finally:
            try:
                await chunks.aclose()
            except Exception as exc:
                log.debug("closing the export query failed: %s", describe(exc))
    return response


def _abandon(conn: Any) -> None:
    """Give up a connection whose export query may still run: the pool replaces it."""
    conn.terminate()


# jobs ---------------------------------------------------------------------------------------


def _status(job: Any, now: datetime | None = None) -> str:
    """The job's status, `expired` from the moment its file expires (cleanup comes later)."""
    status = job["status"]
    if status == "succeeded" and job["expires_at"] <= (now or datetime.now(UTC)):
        return "expired"
    return status


def _job_json(job: Any) -> dict[str, Any]:
    params = json.loads(job["params"])
    jid = str(job["job_id"])
    status = _status(job)
    out: dict[str, Any] = {
        "job_id": jid,
        "status": status,
        "workflow_id": job["workflow_id"],
        "dataset": job["dataset"],
        "format": job["format"],
        "range": {k: params[k] for k in ("from", "to", "granularity", "tz")},
        "created_at": job["created_at"],
        "started_at": job["started_at"],
        "finished_at": job["finished_at"],
        "expires_at": job["expires_at"],
        "attempts": job["attempts"],
        "rows": job["rows"],
        "bytes": job["bytes"],
        "error": job["error"],
        "status_url": f"{API_PREFIX}/exports/{jid}",
        "download_url": f"{API_PREFIX}/exports/{jid}/download" if status == "succeeded" else None,
    }
    if job["dataset"] == "funnel":
        out["mode"] = params.get("mode", "cohort")
    return out


async def create_job(request: web.Request) -> web.Response:
    """POST /workflows/{id}/analytics/export: start a stored export job (202)."""
    principal = require_scope(request, SCOPE)
    q = await _query_of_post(request)
    spec, _ = await _spec(request, principal, q)
    try:
        job = await request.app[JOBS].submit(spec, principal.name)
    except TooManyJobs as exc:
        raise ProblemError(
            429,
            "Too Many Requests",
            str(exc),
            headers={"Retry-After": str(RETRY_AFTER_S)},
        ) from None
    body = _job_json(job)
    response = json_body(dumps(body), status=202)
    response.headers["Location"] = body["status_url"]
    return response


def _job_id(request: web.Request) -> uuid.UUID:
    text = request.match_info["job_id"]
    try:
        if len(text) > MAX_ID_CHARS:
            raise ValueError
        return uuid.UUID(text)
    except ValueError:
        raise _no_job() from None


def _no_job() -> ProblemError:
    return ProblemError(404, "Not Found", "no such export job", param="job_id")


async def _job(request: web.Request) -> Any:
    principal = require_scope(request, SCOPE)
    parse_query(request.query, NoQuery)
    job = await request.app[JOBS].get(principal.tenant, _job_id(request))
    if job is None:
        raise _no_job()
    return job


JOBS_PER_PAGE = 50
"""Export jobs per page without `limit`."""


async def list_jobs(request: web.Request) -> web.Response:
    """GET /exports: the tenant's export jobs, newest first, a page at a time."""
    principal = require_scope(request, SCOPE)
    q = parse_query(request.query, PageQuery)
    limit = q.limit or JOBS_PER_PAGE
    after = decode_cursor(q.cursor, (datetime.fromisoformat, uuid.UUID)) if q.cursor else None
    jobs = await request.app[JOBS].page(principal.tenant, *(after or (None, None)), limit + 1)
    page = page_of(request, jobs, limit, lambda j: (j["created_at"].isoformat(), str(j["job_id"])))
    body = {"jobs": [_job_json(j) for j in page.items], "next": page.next}
    return page.link(json_body(dumps(body)))


async def get_job(request: web.Request) -> web.Response:
    """GET /exports/{job_id}: status, row count and size of a job."""
    return json_body(dumps(_job_json(await _job(request))))


async def download(request: web.Request) -> web.StreamResponse:
    """GET /exports/{job_id}/download: the finished file."""
    job = await _job(request)
    status = _status(job)
    if status in ("queued", "running"):
        raise ProblemError(
            409,
            "Conflict",
            f"the export is {status}; poll its status URL",
            headers={"Retry-After": "2"},
        )
    if status == "failed":
        raise ProblemError(409, "Conflict", f"the export failed: {job['error']}")
    jobs = request.app[JOBS]
    path = jobs.path(job)
    if status == "expired" or not path.is_file():
        raise ProblemError(410, "Gone", "the export file has expired; request a new export")
    spec = ExportSpec.from_job(job, json.loads(job["params"]))
    return web.FileResponse(
        path,
        headers={
            "Content-Type": FORMATS[job["format"]][0],
            "Content-Disposition": _attachment(spec),
            "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff",
        },
    )


# lifecycle ----------------------------------------------------------------------------------


async def _start_jobs(app: web.Application) -> None:
    await app[JOBS].start()


async def _stop_jobs(app: web.Application) -> None:
    await app[JOBS].close(app[SETTINGS].shutdown_grace)


def register(app: web.Application) -> None:
    """Add the export routes and the job runner's lifecycle."""
    cfg = app[CONFIG]
    app[STREAMS] = Counter()
    app[JOBS] = ExportJobs(cfg.exports, app[POOL], cfg.store_dsn, JobSettings())
    app.on_startup.append(_start_jobs)
    app.on_shutdown.append(_stop_jobs)
    wf = f"{API_PREFIX}/workflows/{{workflow_id}}/analytics/export"
    app.router.add_get(wf, stream_export)
    app.router.add_post(wf, create_job)
    app.router.add_get(f"{API_PREFIX}/exports", list_jobs)
    app.router.add_get(f"{API_PREFIX}/exports/{{job_id}}", get_job)
    app.router.add_get(f"{API_PREFIX}/exports/{{job_id}}/download", download)
