"""GET /api/v1/problems[/{kind}]: what each problem `type` URI of the API means."""

from __future__ import annotations

from aiohttp import web

from exporter.api.app import API_PREFIX
from exporter.api.errors import KINDS, PROBLEM_BASE, Kind, ProblemError
from exporter.api.params import NoQuery, parse_query

assert f"{API_PREFIX}/problems/" == PROBLEM_BASE


def describe(name: str, kind: Kind) -> dict[str, object]:
    """The description of one kind of problem."""
    return {
        "type": PROBLEM_BASE + name,
        "status": kind.status,
        "title": kind.title,
        "when": kind.when,
    }


async def list_kinds(request: web.Request) -> web.Response:
    """GET /problems: every kind of error this API answers."""
    parse_query(request.query, NoQuery)
    body = {"problems": [describe(name, kind) for name, kind in KINDS.items()]}
    return web.json_response(body)


async def get_kind(request: web.Request) -> web.Response:
    """GET /problems/{kind}: what one problem `type` means."""
    parse_query(request.query, NoQuery)
    name = request.match_info["kind"]
    if name not in KINDS:
        raise ProblemError(404, "Not Found", "no such problem type", param="kind")
    return web.json_response(describe(name, KINDS[name]))


def register(app: web.Application) -> None:
    """Add the problem-type routes (no token needed, like the OpenAPI document)."""
    app.router.add_get(f"{API_PREFIX}/problems", list_kinds)
    app.router.add_get(f"{API_PREFIX}/problems/{{kind}}", get_kind)
