"""The store side of ingestion: stored states read back, and what a write transaction writes
(raw rows, quarantine records, cursor state, notifications). SQL lives in ingest.sql."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

from exporter.cursor import CursorState, Key
from exporter.store.rows import (
    EXECUTION_STEPS,
    EXECUTIONS,
    STEP_RUNS,
    WORKFLOW_EVENTS,
    CounterDelta,
    RejectedRow,
    Table,
)
from exporter.store.sqlfiles import named
from exporter.transform import Batch, OldExecution, Rejected, bounded_key, bounded_text, hour_start

Q = named("ingest.sql")
NOTIFY_CHANNEL = "wfa_ingest"
_NOTIFY_MAX = 7000
_MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)


async def old_states(store: asyncpg.Connection, rows) -> dict[str, OldExecution]:
    """The stored state of the executions of `rows` (by id and enrolled_at), by id."""
    keyed = [r for r in rows if r["enrolled_at"] is not None and r["id"] is not None]
    ids = [r["id"] for r in keyed]
    enrolled = [r["enrolled_at"] for r in keyed]
    out = {}
    for o in await store.fetch(Q["old_executions"], ids, enrolled):
        times = {
            "enrolled": o["enrolled_at"],
            "completed": o["completed_at"],
            "converted": o["converted_at"],
            "exited": o["exited_at"],
            "failed": o["failed_at"],
        }
        out[o["execution_id"]] = OldExecution(
            o["enrolled_at"],
            o["source_updated_at"],
            times,
            o["exit_reason"],
            o["failed_at"],
            list(o["attempts"]),
        )
    return out


async def write_batch(store: asyncpg.Connection, b: Batch) -> None:
    """Write a batch's raw rows and invalidated buckets (inside the caller's transaction)."""
    new_exec = [e for e in b.executions if e.execution_id in b.executions_new]
    upd_exec = [e for e in b.executions if e.execution_id not in b.executions_new]
    await _copy(store, EXECUTIONS, new_exec)
    await _copy(store, EXECUTION_STEPS, b.steps_new)
    await _copy(store, WORKFLOW_EVENTS, b.events_new)
    await _copy(store, STEP_RUNS, b.runs_new)
    for name, recs in (
        ("delete_events", b.events_del),
        ("delete_step_runs", b.runs_del),
        ("delete_execution_steps", b.steps_del),
    ):
        if recs:
            await store.executemany(Q[name], recs)
    await _upsert(store, EXECUTIONS, upd_exec)
    await _upsert(store, WORKFLOW_EVENTS, b.events_upd)
    await _upsert(store, STEP_RUNS, b.runs_upd)
    invalid = [(name, hour_start(h)) for name, h in sorted(b.invalid)]
    await unnest(store, "invalidate", invalid, 2)


async def save_cursor(store: asyncpg.Connection, name: str, s: CursorState) -> None:
    """Persist the read position of a source table."""
    assert s.head is not None
    checked = s.checked or Key(None, None)  # type: ignore[arg-type]
    await store.execute(
        Q["save_cursor"],
        name,
        s.head.updated_at,
        s.head.id,
        checked.updated_at,
        checked.id,
        s.read_at,
        s.rest_from,
    )


async def _copy(store: asyncpg.Connection, table: Table, rows: list) -> None:
    if rows:
        await store.copy_records_to_table(
            table.name, schema_name="wfa", columns=table.columns, records=rows
        )


async def _upsert(store: asyncpg.Connection, table: Table, rows: list) -> None:
    if rows:
        await store.execute(table.upsert_sql, *table.bind(rows))


async def unnest(store: asyncpg.Connection, name: str, recs: list, width: int) -> None:
    """Run statement `name` with `recs` bound as one array per column."""
    if recs:
        columns = [list(c) for c in zip(*recs, strict=True)]
        assert len(columns) == width
        await store.execute(Q[name], *columns)


async def notify(store: asyncpg.Connection, workflow_ids: list[str]) -> None:
    """NOTIFY the touched workflows, in payloads under the size limit."""
    chunk: list[str] = []
    size = 0
    for wid in workflow_ids:
        if size + len(wid) + 4 > _NOTIFY_MAX and chunk:
            await store.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, json.dumps(chunk))
            chunk, size = [], 0
        chunk.append(wid)
        size += len(wid) + 4
    if chunk:
        await store.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, json.dumps(chunk))


async def reject(store: asyncpg.Connection, rows: list[RejectedRow]) -> list[str]:
    """Quarantine `rows` (a row already there is kept); the reasons of those newly added."""
    if not rows:
        return []
    columns = [list(c) for c in zip(*rows, strict=True)]
    return [r["reason"] for r in await store.fetch(Q["reject"], *columns)]


async def bump_counters(store: asyncpg.Connection, deltas: list[CounterDelta]) -> None:
    """Add `deltas` to the persisted counters."""
    await unnest(store, "bump_counters", deltas, len(CounterDelta._fields))


def reject_record(table: str, r: Mapping[str, Any], exc: Rejected) -> RejectedRow:
    """A `wfa.rejected_rows` record of source row `r` (bounded key and detail, raw as JSON)."""
    raw = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(r).items()}
    updated = r["updated_at"] or _MIN_TIME
    return RejectedRow(
        table,
        bounded_key(str(r["id"])),
        updated,
        exc.reason,
        bounded_text(exc.detail) or "",
        json.dumps(raw, default=str),
    )
