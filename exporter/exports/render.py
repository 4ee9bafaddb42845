"""An export spec as a stream of bytes; executions rows come from a server-side cursor."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from exporter import queries
from exporter.exports.datasets import COLUMNS, ExportSpec, document, report, table
from exporter.exports.formats import csv_rows, iso, json_text, ndjson_rows
from exporter.exports.pdf import render_pdf
from exporter.store.sqlfiles import named

Q = named("exports.sql")
FETCH_ROWS = 5000
"""Rows per cursor fetch: memory stays at one batch and one encoded chunk."""
STATEMENT_TIMEOUT = "15min"
"""Bound on the export transaction's statements (the pool's default is shorter)."""


class ExportError(ValueError):
    """The spec cannot be exported (for example executions as a PDF)."""


@dataclass(slots=True)
class Progress:
    """Rows and bytes written so far."""

    rows: int = 0
    bytes: int = 0


def check(spec: ExportSpec) -> None:
    """Raise ExportError for a combination that has no output form."""
    if spec.format == "pdf" and spec.dataset == "executions":
        raise ExportError("the executions dataset has no PDF form: use csv, json or ndjson")


def _meta(wf: queries.Workflow, spec: ExportSpec, generated_at: datetime) -> dict[str, Any]:
    return {
        "workflow_id": wf.workflow_id,
        "workflow_name": wf.name,
        "dataset": spec.dataset,
        "range": spec.range_json(),
        "generated_at": iso(generated_at),
    }


async def render(
    conn: asyncpg.Connection,
    wf: queries.Workflow,
    spec: ExportSpec,
    progress: Progress,
    generated_at: datetime,
) -> AsyncIterator[bytes]:
    """The export's bytes in chunks; `progress` counts rows and bytes as they go."""
    check(spec)
    if spec.dataset == "executions":
        chunks = _executions(conn, wf, spec, progress, generated_at)
    elif spec.format == "pdf":
        chunks = _pdf(conn, wf, spec, progress, generated_at)
    else:
        chunks = _small(conn, wf, spec, progress, generated_at)
    async for chunk in chunks:
        progress.bytes += len(chunk)
        yield chunk


async def _pdf(
    conn: asyncpg.Connection,
    wf: queries.Workflow,
    spec: ExportSpec,
    progress: Progress,
    generated_at: datetime,
) -> AsyncIterator[bytes]:
    data = await report(conn, wf, spec)
    progress.rows = len(data["funnel"]["steps"]) + len(data["actions"]["actions"])
    yield await asyncio.to_thread(render_pdf, wf, spec, data, generated_at)


async def _small(
    conn: asyncpg.Connection,
    wf: queries.Workflow,
    spec: ExportSpec,
    progress: Progress,
    generated_at: datetime,
) -> AsyncIterator[bytes]:
    doc = await document(conn, wf, spec)
    rows = table(spec, doc)
    progress.rows = len(rows)
    if spec.format == "json":
        yield json_text({**_meta(wf, spec, generated_at), **doc}).encode()
    elif spec.format == "ndjson":
        yield ndjson_rows(COLUMNS[spec.dataset], rows)
    else:
        yield csv_rows([COLUMNS[spec.dataset], *rows])


async def _executions(
    conn: asyncpg.Connection,
    wf: queries.Workflow,
    spec: ExportSpec,
    progress: Progress,
    generated_at: datetime,
) -> AsyncIterator[bytes]:
    columns = COLUMNS["executions"]
    query = Q["executions_csv" if spec.format == "csv" else "executions_json"]
    args = (spec.tenant, wf.workflow_id, spec.start, spec.end)
    if spec.format == "csv":
        yield csv_rows([columns])
    elif spec.format == "json":
        head = json_text({**_meta(wf, spec, generated_at), "columns": list(columns)})
        yield (head[:-1] + ',"rows":[\n').encode()
    first = True
    async with conn.transaction(readonly=True):
        await conn.execute(f"SET LOCAL statement_timeout = '{STATEMENT_TIMEOUT}'")
        cursor = await conn.cursor(query, *args)
        while batch := await cursor.fetch(FETCH_ROWS):
            progress.rows += len(batch)
            if spec.format == "csv":
                yield csv_rows(batch, safe=True)
            elif spec.format == "ndjson":
                yield ("\n".join(r[0] for r in batch) + "\n").encode()
            else:
                text = ",\n".join(r[0] for r in batch)
                yield (text if first else ",\n" + text).encode()
                first = False
    if spec.format == "json":
        yield f'\n],"row_count":{progress.rows}}}\n'.encode()
