"""The poll loop body: read changed source rows by keyset, write them to the store in batches."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from exporter.source.reader import (
    EXECUTION_COLUMNS,
    WORKFLOW_FIELDS,
    KeysetQuery,
    execution_query,
    workflow_query,
)
from exporter.store.backend import Backend
from exporter.store.sqlfiles import named
from exporter.transform import (
    EVENTS,
    Batch,
    OldExecution,
    Rejected,
    SourceExecution,
    WorkflowInfo,
    apply_execution,
    hour_start,
)

log = logging.getLogger(__name__)
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


@dataclass(frozen=True, slots=True)
class IngestSettings:
    """What the ingest loop needs from the config."""

    executions_table: str = "workflow_executions"
    workflows_table: str = "workflows"
    columns: Mapping[str, str | None] = field(default_factory=dict)
    workflow_columns: Mapping[str, str] = field(default_factory=dict)
    batch_size: int = 5000
    overlap: timedelta = timedelta(seconds=30)
    conversion_window: timedelta | None = None
    conversion_windows: Mapping[str, timedelta] = field(default_factory=dict)


@dataclass(slots=True)
class PollResult:
    """What one poll cycle did."""

    batches: int = 0
    read: int = 0
    written: int = 0
    skipped: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)
    workflows: int = 0
    touched: set[str] = field(default_factory=set)
    newest: datetime | None = None
    seconds: float = 0.0

    def add_rows(self, table: str, n: int) -> None:
        """Count rows written to a store table."""
        if n:
            self.rows[table] = self.rows.get(table, 0) + n


def _cols(defaults: tuple[str, ...], mapping: Mapping[str, str | None]) -> dict[str, str | None]:
    out: dict[str, str | None] = {f: f for f in defaults}
    out.update(mapping)
    return out


class Ingestor:
    """Incremental, idempotent copy of the source tables into the store."""

    def __init__(self, settings: IngestSettings, backend: Backend):
        self.s = settings
        self.backend = backend
        ex_cols = _cols(
            EXECUTION_COLUMNS,
            settings.columns,
        )
        ex_cols.setdefault("failed_at", None)
        self.executions: KeysetQuery = execution_query(settings.executions_table, ex_cols)
        self.workflow_q: KeysetQuery = workflow_query(
            settings.workflows_table,
            _cols(WORKFLOW_FIELDS, settings.workflow_columns),
        )
        self.workflows: dict[str, WorkflowInfo] = {}
        self._versions: dict[str, datetime] = {}

    async def load_workflows(self, store: asyncpg.Connection) -> None:
        """Read the mirrored workflow definitions into memory."""
        acc: dict[str, tuple[str, dict[str, str]]] = {}
        for r in await store.fetch(Q["load_workflows"]):
            _tenant, steps = acc.setdefault(r["workflow_id"], (r["tenant_id"], {}))
            self._versions[r["workflow_id"]] = r["source_updated_at"]
            if r["step_id"] is not None:
                steps[r["step_id"]] = r["action_type"]
        self.workflows = {k: WorkflowInfo(k, t, s) for k, (t, s) in acc.items()}

    async def poll(
        self,
        source: asyncpg.Connection,
        store: asyncpg.Connection,
        lookup: asyncpg.Connection | None = None,
    ) -> PollResult:
        """One cycle: workflows, then executions until a short page; each batch one transaction.

        With a second store connection `lookup`, batch N+1 is read and transformed while batch N
        is being written, so Python and the database work at the same time.
        """
        started = time.perf_counter()
        res = PollResult()
        if not self.workflows:
            await self.load_workflows(store)
        since, limit = await self._since(store, "workflows"), self.s.batch_size
        rows = await self.workflow_q.first(source, since, limit)
        while rows:
            await self._write_workflows(store, rows, res)
            if len(rows) < limit:
                break
            rows = await self.workflow_q.after(source, *_key(rows[-1]), limit)
        await self._execution_cycle(source, store, lookup, res)
        res.seconds = time.perf_counter() - started
        return res

    async def _since(self, store: asyncpg.Connection, name: str) -> datetime:
        cur = await store.fetchrow(Q["get_cursor"], name)
        return (cur["updated_at"] - self.s.overlap) if cur else _MIN_TIME

    async def _execution_cycle(self, source, store, lookup, res: PollResult) -> None:
        since, limit = await self._since(store, "executions"), self.s.batch_size
        rows = await self.executions.first(source, since, limit)
        pending: asyncio.Task | None = None
        pending_ids: set[str] = set()
        try:
            while rows:
                ids = {r["id"] for r in rows}
                if pending and (lookup is None or not ids.isdisjoint(pending_ids)):
                    await pending
                    pending = None
                olds = await self._old_states(lookup or store, rows)
                batch, rejected = self._transform(rows, olds)
                res.read += len(rows)
                if pending:
                    await pending
                pending = asyncio.create_task(self._commit(store, rows, batch, rejected, res))
                pending_ids = ids
                last = rows[-1]
                res.newest = max(res.newest or last["updated_at"], last["updated_at"])
                if len(rows) < limit:
                    break
                rows = await self.executions.after(source, *_key(last), limit)
            if pending:
                await pending
                pending = None
        finally:
            if pending and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending

    # workflows -----------------------------------------------------------------------------

    async def _write_workflows(self, store: asyncpg.Connection, rows, res: PollResult) -> None:
        rejected: list[tuple] = []
        rows_changed = [r for r in rows if self._versions.get(r["id"]) != r["updated_at"]]
        if not rows_changed:
            return
        async with store.transaction():
            for r in rows_changed:
                try:
                    steps = _parse_steps(r["steps"])
                except Rejected as exc:
                    rejected.append(_reject_rec("workflows", r, exc))
                    continue
                await store.execute(
                    Q["upsert_workflow"],
                    r["id"],
                    r["tenant_id"],
                    r["name"] or r["id"],
                    r["updated_at"],
                )
                ids = [s[0] for s in steps]
                await store.execute(
                    Q["upsert_steps"],
                    r["id"],
                    ids,
                    list(range(len(steps))),
                    [s[1] for s in steps],
                    [s[2] for s in steps],
                )
                await store.execute(Q["remove_steps"], r["id"], ids)
                known = (
                    dict(self.workflows[r["id"]].action_types) if r["id"] in self.workflows else {}
                )
                known.update({s[0]: s[2] for s in steps})
                self.workflows[r["id"]] = WorkflowInfo(r["id"], r["tenant_id"], known)
                res.workflows += 1
            for r in rows_changed:
                self._versions[r["id"]] = r["updated_at"]
            await self._finish(store, "workflows", rows, rejected, {}, res)

    # executions ----------------------------------------------------------------------------

    def _transform(self, rows, olds: dict[str, OldExecution]) -> tuple[Batch, list[tuple]]:
        batch = Batch()
        rejected: list[tuple] = []
        windows, default_window = self.s.conversion_windows, self.s.conversion_window
        for r in rows:
            try:
                srow = SourceExecution(*tuple(r)[:14])
                if srow.enrolled_at is None or srow.updated_at is None:
                    raise Rejected("invalid_row", "enrolled_at and updated_at are required")
                apply_execution(
                    batch,
                    srow,
                    self.workflows.get(srow.workflow_id),
                    olds.get(srow.id),
                    windows.get(srow.workflow_id, default_window),
                )
            except Rejected as exc:
                rejected.append(_reject_rec("executions", r, exc))
        return batch, rejected

    async def _commit(self, store, rows, batch: Batch, rejected: list[tuple], res) -> None:
        res.skipped += batch.skipped
        if not batch.executions and not rejected:
            return
        if batch.spans:
            await self.backend.prepare_write(
                store, {k: (v[0], v[1]) for k, v in batch.spans.items()}
            )
        async with store.transaction():
            await self._write_batch(store, batch, res)
            await self._finish(
                store, "executions", rows, rejected, batch.counters, res, batch.touched
            )
        res.touched |= batch.touched

    async def _old_states(self, store: asyncpg.Connection, rows) -> dict[str, OldExecution]:
        ids = [r["id"] for r in rows if r["enrolled_at"] is not None]
        enrolled = [r["enrolled_at"] for r in rows if r["enrolled_at"] is not None]
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

    async def _write_batch(self, store: asyncpg.Connection, b: Batch, res: PollResult) -> None:
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
        await _unnest(store, "upsert_executions", upd_exec, len(_EXEC_COLS))
        await _unnest(store, "upsert_events", b.events_upd, len(_EVENT_COLS))
        await _unnest(store, "upsert_step_runs", b.runs_upd, len(_RUN_COLS))
        invalid = [(name, hour_start(h)) for name, h in sorted(b.invalid)]
        await _unnest(store, "invalidate", invalid, 2)
        res.add_rows("executions", len(b.executions))
        res.add_rows("execution_steps", len(b.steps_new))
        res.add_rows("workflow_events", len(b.events_new) + len(b.events_upd))
        res.add_rows("step_runs", len(b.runs_new) + len(b.runs_upd))
        res.written += len(b.executions)

    async def _finish(
        self,
        store,
        name,
        rows,
        rejected,
        counters,
        res: PollResult,
        touched: set[str] | None = None,
    ) -> None:
        counters = dict(counters)
        if rejected:
            for r in await store.fetch(Q["reject"], *map(list, zip(*rejected, strict=True))):
                key = ("rejected_rows", "", "", "", "", r["reason"])
                counters[key] = counters.get(key, 0) + 1
                res.rejected[r["reason"]] = res.rejected.get(r["reason"], 0) + 1
        if counters:
            recs = [(*k, v) for k, v in counters.items()]
            await _unnest(store, "bump_counters", recs, 7)
        last = rows[-1]
        await store.execute(Q["set_cursor"], name, last["updated_at"], str(last["_key"]))
        res.batches += 1
        if touched:
            await _notify(store, sorted(touched))


async def _copy(store: asyncpg.Connection, table: str, cols: tuple[str, ...], recs: list) -> None:
    if recs:
        await store.copy_records_to_table(table, schema_name="wfa", columns=cols, records=recs)


async def _unnest(store: asyncpg.Connection, name: str, recs: list, width: int) -> None:
    if recs:
        columns = [list(c) for c in zip(*recs, strict=True)]
        assert len(columns) == width
        await store.execute(Q[name], *columns)


async def _notify(store: asyncpg.Connection, workflow_ids: list[str]) -> None:
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


def _key(row: Mapping[str, Any]) -> tuple[datetime, Any]:
    return row["updated_at"], row["_key"]


def _parse_steps(raw: str | None) -> list[tuple[str, str, str]]:
    try:
        data = json.loads(raw) if raw is not None else None
    except ValueError:
        raise Rejected("invalid_steps", "steps is not valid JSON") from None
    if not isinstance(data, list):
        raise Rejected("invalid_steps", "steps is not a JSON array")
    out = []
    seen = set()
    for i, s in enumerate(data):
        if not isinstance(s, dict) or s.get("id") is None:
            raise Rejected("invalid_steps", f"step {i} has no id")
        sid = str(s["id"])
        if sid in seen:
            raise Rejected("invalid_steps", f"step id {sid!r} repeats")
        seen.add(sid)
        out.append((sid, str(s.get("name") or sid), str(s.get("action_type") or "unknown")))
    return out


def _reject_rec(table: str, r: Mapping[str, Any], exc: Rejected) -> tuple:
    raw = {
        k: (v.isoformat() if isinstance(v, datetime) else v)
        for k, v in dict(r).items()
        if k != "_key"
    }
    updated = r["updated_at"] or _MIN_TIME
    return (table, str(r["id"]), updated, exc.reason, exc.detail, json.dumps(raw, default=str))


__all__ = ["EVENTS", "NOTIFY_CHANNEL", "IngestSettings", "Ingestor", "PollResult"]
