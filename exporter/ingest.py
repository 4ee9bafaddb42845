"""The poll loop body: read changed source rows by keyset, write them to the store in batches.

Every write transaction is fenced (the writer proves it still leads), validated rows only
reach the store, and a batch the database still refuses is split down to the row at fault,
which is quarantined with the database's error; the rest goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import asyncpg

from exporter.cursor import CursorState, Key, Part, Pass
from exporter.source.reader import (
    EXECUTION_COLUMNS,
    WORKFLOW_FIELDS,
    KeysetQuery,
    SourceExecution,
    execution_query,
    source_clock,
    workflow_query,
)
from exporter.store.backend import Backend
from exporter.store.rows import CounterDelta, RejectedRow
from exporter.store.sqlfiles import named
from exporter.storeio import (
    NOTIFY_CHANNEL,
    bump_counters,
    notify,
    old_states,
    reject,
    reject_record,
    save_cursor,
    write_batch,
)
from exporter.transform import (
    EVENTS,
    Batch,
    OldExecution,
    Plausible,
    Rejected,
    WorkflowInfo,
    apply_execution,
    bounded_text,
    parse_workflow,
)

log = logging.getLogger(__name__)
Q = named("ingest.sql")
ROW_FAULT_CLASSES = frozenset({"22", "23", "54", "P0"})
"""SQLSTATE classes a single row can cause (data exception, integrity constraint, program
limit, PL/pgSQL raise). Anything else (connection, timeout, lock, resources) is not the row's
fault: the batch is retried by the next poll."""
STORE_ERROR = "store_error"
"""Reason of a row the store refused although it passed validation."""
HEAL_REASONS = ("missing", "stale", "set_back")
"""Why reconcile rewrote a row: not in the store, older there, or newer there (set back)."""
_EXPORTER = ("", "", "", "", "")
TRANSFORM_SLICE = 25
"""Rows transformed between two turns of the event loop while the previous chunk writes."""


def is_row_fault(exc: BaseException) -> bool:
    """Whether a failed write may be caused by one of its rows (then split and retry)."""
    if isinstance(exc, asyncpg.PostgresError):
        return (exc.sqlstate or "")[:2] in ROW_FAULT_CLASSES
    return isinstance(exc, OverflowError)


class Fence(Protocol):
    """Proof of leadership checked in every write transaction (see exporter.leadership)."""

    def check(self) -> None:
        """Raise when leadership is known to be lost, without a round trip."""

    async def fence(self, conn: asyncpg.Connection) -> None:
        """Inside a transaction: raise unless this writer still leads."""


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
    valid_from: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    valid_until: timedelta = timedelta(days=1)

    def plausible(self, source_now: datetime) -> Plausible:
        """The plausible-time window at a source clock reading."""
        return Plausible(self.valid_from, source_now + self.valid_until)


@dataclass(slots=True)
class PollResult:
    """What one poll cycle (or one reconcile) did."""

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
    late: int = 0
    healed: dict[str, int] = field(default_factory=dict)

    def add_rows(self, table: str, n: int) -> None:
        """Count rows written to a store table."""
        if n:
            self.rows[table] = self.rows.get(table, 0) + n


@dataclass(slots=True)
class _Ctx:
    """One cycle's store connection, fence, plausible window and result; `keep_from`: the
    oldest `updated_at` a later pass may re-read (None: remember nothing, as reconcile)."""

    store: asyncpg.Connection
    fence: Fence | None
    window: Plausible
    res: PollResult
    keep_from: datetime | None = None


@dataclass(slots=True)
class _Chunk:
    """Source rows written in one transaction, and what that transaction also records."""

    rows: list[asyncpg.Record]
    olds: dict[str, OldExecution]
    stored: list[Key]  # rows the store holds once committed
    position: Callable[[Key], CursorState] | None = None  # None: the cursor stays
    late: bool = False  # rows behind the head: first-seen ones are late commits
    heal: bool = False  # reconcile: count rewritten rows by reason


def _cols(defaults: tuple[str, ...], mapping: Mapping[str, str | None]) -> dict[str, str | None]:
    out: dict[str, str | None] = {f: f for f in defaults}
    out.update(mapping)
    return out


class Ingestor:
    """Incremental, idempotent copy of the source tables into the store."""

    def __init__(self, settings: IngestSettings, backend: Backend):
        self.s = settings
        self.backend = backend
        ex_cols = _cols(EXECUTION_COLUMNS, settings.columns)
        ex_cols.setdefault("failed_at", None)
        self.executions: KeysetQuery = execution_query(settings.executions_table, ex_cols)
        self.workflow_q: KeysetQuery = workflow_query(
            settings.workflows_table,
            _cols(WORKFLOW_FIELDS, settings.workflow_columns),
        )
        self.workflows: dict[str, WorkflowInfo] = {}
        self._versions: dict[str, datetime] = {}
        self._stored = _Stored()

    def reset(self) -> None:
        """Forget what was learnt of the store (after a takeover another writer may have run)."""
        self.workflows = {}
        self._versions = {}
        self._stored = _Stored()

    async def load_workflows(self, store: asyncpg.Connection) -> None:
        """Read the mirrored workflow definitions into memory."""
        acc: dict[str, tuple[str, dict[str, str]]] = {}
        versions: dict[str, datetime] = {}
        for r in await store.fetch(Q["load_workflows"]):
            _tenant, steps = acc.setdefault(r["workflow_id"], (r["tenant_id"], {}))
            versions[r["workflow_id"]] = r["source_updated_at"]
            if r["step_id"] is not None:
                steps[r["step_id"]] = r["action_type"]
        self.workflows = {k: WorkflowInfo(k, t, s) for k, (t, s) in acc.items()}
        self._versions = versions

    async def poll(
        self,
        source: asyncpg.Connection,
        store: asyncpg.Connection,
        lookup: asyncpg.Connection | None = None,
        fence: Fence | None = None,
    ) -> PollResult:
        """One cycle: workflows, then executions until a short page; each batch one transaction.

        With a second store connection `lookup`, batch N+1 is read and transformed while batch N
        is being written, so Python and the database work at the same time. With `fence`,
        every write transaction first proves this writer still leads.
        """
        started = time.perf_counter()
        res = PollResult()
        if not self.workflows:
            await self.load_workflows(store)
        # Both cursors and the source clock in one round trip's time. One clock reading
        # serves both passes: an earlier `now` only widens the next re-read.
        states, now = await asyncio.gather(
            self._load_states(store, ("workflows", "executions")), source_clock(source)
        )
        await self._workflow_pass(source, store, fence, res, states["workflows"], now)
        await self._execution_pass(source, store, lookup, fence, res, states["executions"], now)
        res.seconds = time.perf_counter() - started
        return res

    async def reingest(
        self,
        pages: AsyncIterator[list[asyncpg.Record]],
        store: asyncpg.Connection,
        window: Plausible,
        fence: Fence | None = None,
    ) -> PollResult:
        """Write `pages` of source execution rows through the normal path, cursor untouched;
        rewritten rows are counted by heal reason (reconcile)."""
        started = time.perf_counter()
        res = PollResult()
        await self.load_workflows(store)
        ctx = _Ctx(store, fence, window, res)
        async for rows in pages:
            if not rows:
                continue
            res.read += len(rows)
            olds = await old_states(store, rows)
            batch, rejected, stored = self._transform(rows, olds, window, None)
            await self._commit(ctx, _Chunk(rows, olds, stored, heal=True), batch, rejected)
        res.seconds = time.perf_counter() - started
        return res

    # cursor ----------------------------------------------------------------------------------

    async def _load_states(
        self, store: asyncpg.Connection, names: tuple[str, ...]
    ) -> dict[str, CursorState]:
        states = dict.fromkeys(names, CursorState())
        for r in await store.fetch(Q["load_cursors"], list(names)):
            head = Key(r["updated_at"], r["id"])
            if r["read_at"] is None:
                states[r["name"]] = CursorState.legacy(head, self.s.overlap)
                continue
            checked = None
            if r["checked_updated_at"] is not None:
                checked = Key(r["checked_updated_at"], r["checked_id"])
            states[r["name"]] = CursorState(head, checked, r["read_at"], r["rest_from"])
        return states

    async def _save_state(self, ctx: _Ctx, name: str, state: CursorState) -> None:
        if state.head is None:
            return
        async with self._writing(ctx):
            # Losing this write in a crash only widens the next re-read.
            await ctx.store.execute("SET LOCAL synchronous_commit = off")
            await save_cursor(ctx.store, name, state)

    async def _idle(self, ctx: _Ctx, source, q: KeysetQuery, p: Pass, name: str) -> bool:
        """Whether pass `p` has no row to read, proven by one probe instead of its reads; an
        idle pass still moves its re-read window on when that is due."""
        probe = p.probe()
        if probe is None or await q.page(source, probe, None, 1):
            return False
        await self._close_window(ctx, name, p, False)
        return True

    async def _close_window(self, ctx: _Ctx, name: str, p: Pass, reread: bool) -> None:
        """Save that nothing behind the head is pending, when that is due (see Pass)."""
        if p.window_due(reread):
            await self._save_state(ctx, name, p.window_done())

    @contextlib.asynccontextmanager
    async def _writing(self, ctx: _Ctx) -> AsyncIterator[None]:
        if ctx.fence is not None:
            ctx.fence.check()
        async with ctx.store.transaction():
            if ctx.fence is not None:
                await ctx.fence.fence(ctx.store)
            yield

    # workflows -------------------------------------------------------------------------------

    async def _workflow_pass(
        self, source, store, fence: Fence | None, res: PollResult, state: CursorState, now: datetime
    ) -> None:
        ctx = _Ctx(store, fence, self.s.plausible(now), res)
        p, limit = Pass(state, now, self.s.overlap), self.s.batch_size
        if await self._idle(ctx, source, self.workflow_q, p, "workflows"):
            return
        reread = False
        for bounds in p.reads():
            if bounds.part is Part.FORWARD:
                await self._close_window(ctx, "workflows", p, reread)
            rows = await self.workflow_q.page(source, bounds, None, limit)
            while rows:
                reread = reread or bounds.part is not Part.FORWARD
                await self._write_workflows(ctx, rows, _positioner(p, bounds.part))
                last = _last_key(rows)
                if len(rows) < limit or last is None:
                    break
                rows = await self.workflow_q.page(source, bounds, last, limit)

    async def _write_workflows(self, ctx: _Ctx, rows, position) -> None:
        """Write a page of workflow rows; when the database refuses it, split it."""
        try:
            await self._write_workflow_rows(ctx, rows, position)
        except Exception as exc:
            if not is_row_fault(exc):
                raise
            if len(rows) == 1:
                rec = reject_record("workflows", rows[0], _store_error(exc))
                async with self._writing(ctx):
                    await self._finish(ctx, "workflows", rows, [rec], {}, position)
                return
            mid = len(rows) // 2
            await self._write_workflows(ctx, rows[:mid], position)
            await self._write_workflows(ctx, rows[mid:], position)

    async def _write_workflow_rows(self, ctx: _Ctx, rows, position) -> None:
        rejected: list[RejectedRow] = []
        changed = [r for r in rows if self._versions.get(r["id"]) != r["updated_at"]]
        store = ctx.store
        updates: dict[str, WorkflowInfo] = {}
        async with self._writing(ctx):
            for r in changed:
                try:
                    steps = parse_workflow(r, ctx.window)
                except Rejected as exc:
                    rejected.append(reject_record("workflows", r, exc))
                    continue
                await store.execute(
                    Q["upsert_workflow"],
                    r["id"],
                    r["tenant_id"],
                    bounded_text(r["name"] or r["id"]),
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
                before = self.workflows.get(r["id"])
                known = dict(before.action_types) if before is not None else {}
                known.update({s[0]: s[2] for s in steps})
                updates[r["id"]] = WorkflowInfo(r["id"], r["tenant_id"], known)
            await self._finish(ctx, "workflows", rows, rejected, {}, position)
        # Only what committed is remembered.
        ctx.res.workflows += len(updates)
        self.workflows.update(updates)
        for r in changed:
            self._versions[r["id"]] = r["updated_at"]

    # executions ------------------------------------------------------------------------------

    async def _execution_pass(
        self, source, store, lookup, fence, res: PollResult, state: CursorState, now: datetime
    ) -> None:
        ctx = _Ctx(store, fence, self.s.plausible(now), res, now - self.s.overlap)
        p, limit = Pass(state, now, self.s.overlap), self.s.batch_size
        self._stored.forget_before(p.reread_from())
        if await self._idle(ctx, source, self.executions, p, "executions"):
            return
        pending: asyncio.Task | None = None
        pending_ids: set[str] = set()
        try:
            reread = False
            for bounds in p.reads():
                if bounds.part is Part.FORWARD and p.window_due(reread):
                    if pending:  # the re-read's last chunk commits before the window closes
                        await pending
                        pending = None
                    await self._close_window(ctx, "executions", p, reread)
                rows = await self.executions.page(source, bounds, None, limit)
                while rows:
                    reread = reread or bounds.part is not Part.FORWARD
                    ids = {r["id"] for r in rows}
                    if pending and (lookup is None or not ids.isdisjoint(pending_ids)):
                        await pending
                        pending = None
                    known = self._stored.known
                    fresh = [r for r in rows if not known(r["id"], r["updated_at"])]
                    olds = await old_states(lookup or store, fresh) if fresh else {}
                    batch, rejected, stored = await self._transform_sliced(
                        rows, olds, ctx.window, known
                    )
                    res.read += len(rows)
                    if pending:
                        await pending
                    behind = bounds.part is not Part.FORWARD
                    position = _positioner(p, bounds.part)
                    chunk = _Chunk(rows, olds, stored, position, behind)
                    pending = asyncio.create_task(self._commit(ctx, chunk, batch, rejected))
                    pending_ids = ids
                    last = _last_key(rows)
                    if last is not None:
                        res.newest = max(res.newest or last.updated_at, last.updated_at)
                    if len(rows) < limit or last is None:
                        break
                    rows = await self.executions.page(source, bounds, last, limit)
            if pending:
                await pending
                pending = None
        finally:
            if pending and not pending.done():
                pending.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await pending

    def _transform(
        self,
        rows,
        olds: dict[str, OldExecution],
        window: Plausible,
        known: Callable[[str, datetime], bool] | None,
    ) -> tuple[Batch, list[RejectedRow], list[Key]]:
        """The store changes of `rows`, the rows rejected, and the keys of the rows the store
        holds once the batch commits. A row `known` to be stored as read is skipped."""
        out: tuple[Batch, list[RejectedRow], list[Key]] = (Batch(), [], [])
        self._transform_into(out, rows, olds, window, known)
        return out

    async def _transform_sliced(
        self,
        rows,
        olds: dict[str, OldExecution],
        window: Plausible,
        known: Callable[[str, datetime], bool] | None,
    ) -> tuple[Batch, list[RejectedRow], list[Key]]:
        """`_transform`, giving the event loop a turn after every slice of rows, so that the
        previous chunk's write, which runs meanwhile, sends its next statement without waiting
        for the whole transform."""
        out: tuple[Batch, list[RejectedRow], list[Key]] = (Batch(), [], [])
        for i in range(0, len(rows), TRANSFORM_SLICE):
            if i:
                await asyncio.sleep(0)
            self._transform_into(out, rows[i : i + TRANSFORM_SLICE], olds, window, known)
        return out

    def _transform_into(
        self,
        out: tuple[Batch, list[RejectedRow], list[Key]],
        rows,
        olds: dict[str, OldExecution],
        window: Plausible,
        known: Callable[[str, datetime], bool] | None,
    ) -> None:
        batch, rejected, stored = out
        windows, default_window = self.s.conversion_windows, self.s.conversion_window
        for r in rows:
            if known is not None and known(r["id"], r["updated_at"]):
                batch.skipped += 1
                continue
            try:
                srow = SourceExecution.from_record(r)
                if srow.enrolled_at is None or srow.updated_at is None:
                    raise Rejected("invalid_row", "enrolled_at and updated_at are required")
                apply_execution(
                    batch,
                    srow,
                    self.workflows.get(srow.workflow_id),
                    olds.get(srow.id),
                    windows.get(srow.workflow_id, default_window),
                    window,
                )
                stored.append(Key(srow.updated_at, srow.id))
            except Rejected as exc:
                rejected.append(reject_record("executions", r, exc))
            except (ValueError, TypeError, OverflowError) as exc:
                # A value no rule foresaw: the row is quarantined, the stream goes on.
                rejected.append(reject_record("executions", r, Rejected("invalid_row", repr(exc))))

    async def _commit(
        self, ctx: _Ctx, chunk: _Chunk, batch: Batch, rejected: list[RejectedRow]
    ) -> None:
        """Write one chunk; when the database refuses it for a row's sake, split it."""
        try:
            await self._write_chunk(ctx, chunk, batch, rejected)
        except Exception as exc:
            if not is_row_fault(exc):
                raise
            if len(chunk.rows) == 1:
                await self._quarantine(ctx, chunk, exc)
                return
            mid = len(chunk.rows) // 2
            log.warning("batch of %d rows refused (%s): splitting", len(chunk.rows), exc)
            for rows in (chunk.rows[:mid], chunk.rows[mid:]):
                known = None if ctx.keep_from is None else self._stored.known
                sub_batch, sub_rejected, stored = self._transform(
                    rows, chunk.olds, ctx.window, known
                )
                part = _Chunk(rows, chunk.olds, stored, chunk.position, chunk.late, chunk.heal)
                await self._commit(ctx, part, sub_batch, sub_rejected)

    async def _write_chunk(
        self, ctx: _Ctx, chunk: _Chunk, batch: Batch, rejected: list[RejectedRow]
    ) -> None:
        res = ctx.res
        if not batch.executions and not rejected:
            res.skipped += batch.skipped
            if chunk.position is not None:
                state = _position_of(chunk.rows, chunk.position, ctx.window)
                if state is not None:
                    await self._save_state(ctx, "executions", state)
            self._stored.remember(chunk.stored, ctx.keep_from)
            return
        if batch.spans:
            await self.backend.prepare_write(
                ctx.store, {k: (v[0], v[1]) for k, v in batch.spans.items()}
            )
        counters = batch.deltas()
        healed = _heal_reasons(batch, chunk.olds) if chunk.heal else Counter()
        for reason, n in healed.items():
            counters[("reconciled_rows", *_EXPORTER[:4], reason)] += n
        async with self._writing(ctx):
            await write_batch(ctx.store, batch)
            late = await self._finish(
                ctx,
                "executions",
                chunk.rows,
                rejected,
                counters,
                chunk.position,
                batch.touched,
                late=len(batch.executions) if chunk.late else None,
            )
        # Counted and remembered once the transaction committed.
        self._stored.remember(chunk.stored, ctx.keep_from)
        res.skipped += batch.skipped
        res.late += late
        res.touched |= batch.touched
        _count_batch(res, batch)
        for reason, n in healed.items():
            res.healed[reason] = res.healed.get(reason, 0) + n

    async def _quarantine(self, ctx: _Ctx, chunk: _Chunk, exc: BaseException) -> None:
        """Put one row the store refused into the quarantine, with the database's error."""
        row = chunk.rows[0]
        rec = reject_record("executions", row, _store_error(exc))
        log.error("row %s refused by the store, quarantined: %s", rec.source_id, rec.detail)
        async with self._writing(ctx):
            late = await self._finish(
                ctx,
                "executions",
                chunk.rows,
                [rec],
                {},
                chunk.position,
                late=0 if chunk.late else None,
            )
        ctx.res.late += late

    async def _finish(
        self,
        ctx: _Ctx,
        name: str,
        rows,
        rejected: list[RejectedRow],
        counters: Mapping[tuple, int],
        position: Callable[[Key], CursorState] | None,
        touched: set[str] | None = None,
        late: int | None = None,
    ) -> int:
        """Quarantine, counters, cursor and notification of a write transaction.

        With `late` (rows written behind the head), those and the rows newly quarantined
        are counted as late commits; returns that count.
        """
        store, res = ctx.store, ctx.res
        counters = Counter(counters)
        new_rejects = 0
        for reason in await reject(store, rejected):
            counters[("rejected_rows", *_EXPORTER[:4], reason)] += 1
            res.rejected[reason] = res.rejected.get(reason, 0) + 1
            new_rejects += 1
        n_late = 0 if late is None else late + new_rejects
        if n_late:
            counters[("late_commits", *_EXPORTER)] += n_late
        if counters:
            await bump_counters(store, [CounterDelta(*k, v) for k, v in counters.items()])
        if position is not None:
            state = _position_of(rows, position, ctx.window)
            if state is not None:
                await save_cursor(store, name, state)
        res.batches += 1
        if touched:
            await notify(store, sorted(touched))
        return n_late


class _Stored:
    """The source versions this writer committed lately, so that the re-reads of the overlap
    window skip them without asking the store. Only versions a later pass may re-read are
    kept (updated at or after its earliest re-read time), in commit order."""

    __slots__ = ("_at", "_order")

    def __init__(self) -> None:
        self._at: dict[str, datetime] = {}
        self._order: deque[Key] = deque()

    def known(self, execution_id: str, updated_at: datetime) -> bool:
        """Whether the store holds this version of the execution, committed by this writer."""
        t = self._at.get(execution_id)
        return t is not None and t == updated_at

    def remember(self, keys: list[Key], keep_from: datetime | None) -> None:
        """Record committed versions, those a later pass may re-read."""
        if keep_from is None:
            return
        for k in keys:
            if k.updated_at >= keep_from:
                self._at[k.id] = k.updated_at
                self._order.append(k)

    def forget_before(self, t: datetime | None) -> None:
        """Drop versions updated before `t`, or all with None (no pass re-reads them)."""
        order, at = self._order, self._at
        while order and (t is None or order[0].updated_at < t):
            k = order.popleft()
            if at.get(k.id) == k.updated_at:
                del at[k.id]


def _count_batch(res: PollResult, b: Batch) -> None:
    res.add_rows("executions", len(b.executions))
    res.add_rows("execution_steps", len(b.steps_new))
    res.add_rows("workflow_events", len(b.events_new) + len(b.events_upd))
    res.add_rows("step_runs", len(b.runs_new) + len(b.runs_upd))
    res.written += len(b.executions)


def _store_error(exc: BaseException) -> Rejected:
    state = getattr(exc, "sqlstate", None) or type(exc).__name__
    return Rejected(STORE_ERROR, f"{state}: {exc}")


def _positioner(p: Pass, part: Part) -> Callable[[Key], CursorState]:
    def position(key: Key) -> CursorState:
        return p.after(part, key)

    return position


def _position_of(
    rows: Iterable[Mapping[str, Any]],
    position: Callable[[Key], CursorState],
    window: Plausible,
) -> CursorState | None:
    """The cursor after `rows`: at the last row not stamped in the future (those are re-read,
    so one bad clock cannot push the cursor past every row to come)."""
    last = None
    for r in rows:
        t = r["updated_at"]
        if t is None or t > window.latest:
            break
        last = r
    return None if last is None else position(Key(last["updated_at"], last["id"]))


def _last_key(rows: list[asyncpg.Record]) -> Key | None:
    last = rows[-1]
    if last["updated_at"] is None or last["id"] is None:
        return None
    return Key(last["updated_at"], last["id"])


def _heal_reasons(batch: Batch, olds: Mapping[str, OldExecution]) -> Counter:
    out: Counter = Counter()
    for e in batch.executions:
        old = olds.get(e.execution_id)
        if old is None:
            out["missing"] += 1
        elif old.source_updated_at < e.source_updated_at:
            out["stale"] += 1
        else:
            out["set_back"] += 1
    return out


__all__ = [
    "EVENTS",
    "HEAL_REASONS",
    "NOTIFY_CHANNEL",
    "Fence",
    "IngestSettings",
    "Ingestor",
    "PollResult",
    "is_row_fault",
]
