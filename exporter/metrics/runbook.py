"""The runbook, served by the exporter at /runbook and /runbook/<alert> (plain text).

The alerts' `runbook_url` points here by default (`monitoring.runbook_url`), so a link in a
notification opens the section of the alert that fired.
"""

from __future__ import annotations

import re
from functools import cache
from importlib import resources

from aiohttp import web

_HEADING = re.compile(r"^## (\S+)\s*$", re.MULTILINE)
_TEXT = "text/plain"


@cache
def runbook() -> str:
    """The whole runbook (Markdown)."""
    return resources.files("exporter.metrics").joinpath("runbook.md").read_text(encoding="utf-8")


def sections() -> dict[str, str]:
    """Alert name -> its section (from its `## Name` heading to the next one)."""
    text = runbook()
    heads = list(_HEADING.finditer(text))
    out = {}
    for i, m in enumerate(heads):
        end = heads[i + 1].start() if i + 1 < len(heads) else len(text)
        out[m.group(1)] = text[m.start() : end].rstrip() + "\n"
    return out


async def _whole(request: web.Request) -> web.Response:
    return web.Response(text=runbook(), content_type=_TEXT, charset="utf-8")


async def _section(request: web.Request) -> web.Response:
    alert = request.match_info["alert"]
    found = sections().get(alert) or sections().get(
        next((k for k in sections() if k.lower() == alert.lower()), "")
    )
    if found is None:
        raise web.HTTPNotFound(text=f"no runbook section for {alert[:100]!r}\n")
    return web.Response(text=found, content_type=_TEXT, charset="utf-8")


def runbook_routes() -> list[web.RouteDef]:
    """GET /runbook and /runbook/{alert}."""
    return [web.get("/runbook", _whole), web.get("/runbook/{alert}", _section)]
