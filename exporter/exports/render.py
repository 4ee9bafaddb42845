"""An export spec as a stream of bytes; executions rows stream from COPY with backpressure."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from exporter import queries
from exporter.exports.datasets import COLUMNS, ExportSpec, document, report, table
from exporter.exports.formats import csv_cell, csv_rows, iso, json_text, ndjson_rows
from exporter.exports.pdf import render_pdf
from exporter.store.sqlfiles import named

Q = named("exports.sql")
COPY_QUEUE = 8
"""COPY chunks buffered between the database and the writer: memory stays flat."""
COPY_CHUNK = 1 << 16
"""Bytes gathered into one chunk: the server sends about 8 KiB at a time, and every chunk
costs a queue hand-over, a conversion and a socket write."""
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


class CsvLines:
    """Turns PostgreSQL COPY CSV into RFC 4180 (CRLF line ends), chunk by chunk.

    Line feeds outside quoted cells end records and become CRLF; those inside quoted cells
    are data and stay. Whether a chunk starts inside quotes is carried over from the
    previous one (an escaped quote `""` keeps the parity). Chunks are cut after their last
    line feed, so each output chunk holds whole records.
    """

    def __init__(self) -> None:
        self.inside = False
        self.rows = 0
        self._tail = b""

    def feed(self, data: bytes) -> bytes:
        """The converted complete lines of `data` (the rest waits for the next chunk)."""
        data = self._tail + data
        cut = data.rfind(b"\n") + 1
        self._tail = data[cut:]
        data = data[:cut]
        if not self.inside and b'"' not in data:
            self.rows += data.count(b"\n")
            return data.replace(b"\n", b"\r\n")
        parts = data.split(b'"')
        for i in range(1 if self.inside else 0, len(parts), 2):
            part = parts[i]
            if b"\n" in part:
                self.rows += part.count(b"\n")
                parts[i] = part.replace(b"\n", b"\r\n")
        if len(parts) % 2 == 0:
            self.inside = not self.inside
        return b'"'.join(parts)

    def close(self) -> None:
        """Raise if COPY ended inside a record (it never does)."""
        if self._tail or self.inside:
            raise ExportError("CSV output ended inside a record")


async def copy_chunks(
    conn: asyncpg.Connection, query: str, *args: Any, **options: Any
) -> AsyncIterator[bytes]:
    """The output of `COPY (query) TO STDOUT` in chunks of about `COPY_CHUNK` bytes, with
    backpressure (bounded queue)."""
    queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=COPY_QUEUE)
    gathered = bytearray()

    async def sink(data: bytes) -> None:
        gathered.extend(data)
        if len(gathered) >= COPY_CHUNK:
            await queue.put(bytes(gathered))
            gathered.clear()

    async def produce() -> None:
        try:
            await conn.copy_from_query(query, *args, output=sink, **options)
            if gathered:
                await queue.put(bytes(gathered))
        finally:
            await queue.put(None)

    task = asyncio.create_task(produce())
    try:
        while (chunk := await queue.get()) is not None:
            yield chunk
        await task
    finally:
        # Also when the COPY already failed (its connection was terminated by a reader that
        # gave up): its outcome is retrieved here, not reported as never retrieved.
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def _executions(
    conn: asyncpg.Connection,
    wf: queries.Workflow,
    spec: ExportSpec,
    progress: Progress,
    generated_at: datetime,
) -> AsyncIterator[bytes]:
    columns = COLUMNS["executions"]
    args = (spec.tenant, wf.workflow_id, spec.start, spec.end)
    if spec.format == "csv":
        yield csv_rows([columns])
    elif spec.format == "json":
        head = json_text({**_meta(wf, spec, generated_at), "columns": list(columns)})
        yield (head[:-1] + ',"rows":[\n').encode()
    async with conn.transaction(readonly=True):
        for setting in (f"statement_timeout = '{STATEMENT_TIMEOUT}'", "TimeZone = 'UTC'",
                        "DateStyle = 'ISO'"):
            await conn.execute(f"SET LOCAL {setting}")
        if spec.format == "csv":
            lines = CsvLines()
            safe_id = csv_cell(wf.workflow_id)
            query = Q["executions_csv"]
            async for chunk in copy_chunks(conn, query, *args, safe_id, format="csv"):
                out = lines.feed(chunk)
                progress.rows = lines.rows
                if out:
                    yield out
            lines.close()
        else:
            # JSON text has no raw control characters: with these as quote and delimiter,
            # COPY writes each document as it is, one per line.
            first, tail = True, b""
            async for chunk in copy_chunks(
                conn, Q["executions_json"], *args, format="csv", quote="\x01", delimiter="\x02"
            ):
                data = tail + chunk
                cut = data.rfind(b"\n") + 1
                body, tail = data[:cut], data[cut:]
                if not body:
                    continue
                progress.rows += body.count(b"\n")
                if spec.format == "ndjson":
                    yield body
                else:
                    text = body[:-1].replace(b"\n", b",\n")
                    yield text if first else b",\n" + text
                    first = False
            if tail:
                raise ExportError("JSON output ended without a line feed")
    if spec.format == "json":
        yield f'\n],"row_count":{progress.rows}}}\n'.encode()
