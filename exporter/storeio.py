"""The store side of ingestion: stored states read back, and what a write transaction writes
(raw rows, quarantine records, cursor state, notifications). SQL lives in ingest.sql."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import asyncpg

from exporter.cursor import CursorState, Key
from exporter.store.sqlfiles import named
from exporter.transform import Batch, OldExecution, Rejected, bounded_key, bounded_text, hour_start

Q = named("ingest.sql")
NOTIFY_CHANNEL = "wfa_ingest"
_NOTIFY_MAX = 7000
_EXEC_COLS = (
    "execution_id",
    "enrolled_at",
    "tenant_id",
    "workflow_id",
    "contact_id",
    "status",
    "completed_at",
    "converted_at",
    "converted_in_window",
    "exited_at",
    "exit_reason",
    "failed_at",
    "current_step_id",
    "attempts",
    "source_updated_at",
)
_EVENT_COLS = (
    "execution_id",
    "event",
    "occurred_at",
    "tenant_id",
    "workflow_id",
    "reason",
    "duration_ms",
    "duration_le",
)
_RUN_COLS = (
    "execution_id",
    "step_id",
    "entered_at",
    "tenant_id",
    "workflow_id",
    "action_type",
    "status",
    "finished_at",
    "duration_ms",
    "duration_le",
    "error",
)
_STEP_COLS = ("execution_id", "step_id", "enrolled_at", "tenant_id", "workflow_id")
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
    new_exec = [e for e in b.executions if e[0] in b.executions_new]
    upd_exec = [
        (*e[:13], "\x1e".join(e[13]), *e[14:])
        for e in b.executions
        if e[0] not in b.executions_new
    ]
    await _copy(store, "executions", _EXEC_COLS, new_exec)
    await _copy(store, "execution_steps", _STEP_COLS, b.steps_new)
    await _copy(store, "workflow_events", _EVENT_COLS, b.events_new)
    await _copy(store, "step_runs", _RUN_COLS, b.runs_new)
    for name, recs in (
        ("delete_events", b.events_del),
        ("delete_step_runs", b.runs_del),
        ("delete_execution_steps", b.steps_del),
    ):
        if recs:
            await store.executemany(Q[name], recs)
    await unnest(store, "upsert_executions", upd_exec, len(_EXEC_COLS))
    await unnest(store, "upsert_events", b.events_upd, len(_EVENT_COLS))
    await unnest(store, "upsert_step_runs", b.runs_upd, len(_RUN_COLS))
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


async def _copy(store: asyncpg.Connection, table: str, cols: tuple[str, ...], recs: list) -> None:
    if recs:
        await store.copy_records_to_table(table, schema_name="wfa", columns=cols, records=recs)


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


def reject_record(table: str, r: Mapping[str, Any], exc: Rejected) -> tuple:
    """A `wfa.rejected_rows` record of source row `r` (bounded key and detail, raw as JSON)."""
    raw = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in dict(r).items()}
    updated = r["updated_at"] or _MIN_TIME
    return (
        table,
        bounded_key(str(r["id"])),
        updated,
        exc.reason,
        bounded_text(exc.detail) or "",
        json.dumps(raw, default=str),
    )
