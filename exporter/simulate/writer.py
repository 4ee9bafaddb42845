"""Write simulated data into the source tables (the source contract) with asyncpg."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources
from json.encoder import encode_basestring_ascii
from operator import attrgetter
from typing import Any

import asyncpg

from exporter.simulate.model import SimAttempt, SimData, SimExecution, SimWorkflow, iso
from exporter.source.reader import EXECUTION_COLUMNS, WORKFLOW_FIELDS, quote_ident

EXECUTIONS_TABLE = "workflow_executions"
WORKFLOWS_TABLE = "workflows"
WORKFLOW_COLUMNS = WORKFLOW_FIELDS
_JSON = {"separators": (",", ":")}


def schema_sql(
    executions_table: str = EXECUTIONS_TABLE, workflows_table: str = WORKFLOWS_TABLE
) -> str:
    """The demo source DDL with the given (possibly schema-qualified) table names."""
    text = resources.files("exporter.source").joinpath("demo_schema.sql").read_text("utf-8")
    return text.format(
        executions=quote_ident(executions_table), workflows=quote_ident(workflows_table)
    )


async def create_source_schema(
    conn: asyncpg.Connection,
    executions_table: str = EXECUTIONS_TABLE,
    workflows_table: str = WORKFLOWS_TABLE,
) -> None:
    """Create the source tables if they do not exist."""
    await conn.execute(schema_sql(executions_table, workflows_table))


def _split(table: str) -> tuple[str | None, str]:
    """(schema, name) of a possibly schema-qualified table name, for COPY."""
    schema, _, name = table.rpartition(".")
    return (schema or None), name


def workflow_record(wf: SimWorkflow) -> tuple[Any, ...]:
    """A workflow as a row in WORKFLOW_COLUMNS order."""
    return (wf.id, wf.tenant_id, wf.name, json.dumps(wf.steps_json(), **_JSON), wf.updated_at)


class RecordEncoder:
    """Turns executions into rows, with `step_progress` JSON built by hand (the hot path)."""

    def __init__(self) -> None:
        self._minutes: dict[int, str] = {}
        self._texts: dict[str, str] = {}

    def timestamp(self, t: datetime) -> str:
        """ISO-8601 text with milliseconds and offset, like `model.iso`."""
        if t.tzinfo is not UTC:
            return t.isoformat(timespec="milliseconds")
        key = t.toordinal() * 1440 + t.hour * 60 + t.minute
        prefix = self._minutes.get(key)
        if prefix is None:
            prefix = t.replace(second=0, microsecond=0, tzinfo=None).isoformat()[:-2]
            self._minutes[key] = prefix
        return f"{prefix}{t.second:02d}.{t.microsecond // 1000:03d}+00:00"

    def text(self, value: str | None) -> str:
        """A JSON string literal (or null)."""
        if value is None:
            return "null"
        out = self._texts.get(value)
        if out is None:
            out = self._texts[value] = encode_basestring_ascii(value)
        return out

    def progress(self, attempts: Sequence[SimAttempt]) -> str:
        """The `step_progress` JSON text."""
        parts = []
        last: datetime | None = None
        last_text = ""
        text, timestamp = self.text, self.timestamp
        for a in attempts:
            entered = a.entered_at
            if entered is not last:
                last, last_text = entered, timestamp(entered)
            entered_text = last_text
            if a.finished_at is None:
                finished_text = "null"
            else:
                if a.finished_at is not last:
                    last, last_text = a.finished_at, timestamp(a.finished_at)
                finished_text = f'"{last_text}"'
            parts.append(
                f'{{"step_id":{text(a.step_id)},"entered_at":"{entered_text}",'
                f'"finished_at":{finished_text},"status":{text(a.status)},'
                f'"error":{text(a.error)}}}'
            )
        return "[" + ",".join(parts) + "]"

    def execution(self, ex: SimExecution) -> tuple[Any, ...]:
        """An execution as a row in EXECUTION_COLUMNS order (step_progress as JSON text)."""
        return (
            ex.id,
            ex.tenant_id,
            ex.workflow_id,
            ex.contact_id,
            ex.status,
            ex.enrolled_at,
            ex.completed_at,
            ex.converted_at,
            ex.exited_at,
            ex.exit_reason,
            ex.current_step_id,
            self.progress(ex.step_progress),
            ex.updated_at,
        )


def execution_record(ex: SimExecution) -> tuple[Any, ...]:
    """An execution as a row in EXECUTION_COLUMNS order (step_progress as JSON text)."""
    return RecordEncoder().execution(ex)


def _chunks(items: Sequence[SimExecution], size: int) -> Iterator[Sequence[SimExecution]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


async def upsert_workflows(
    conn: asyncpg.Connection,
    workflows: Iterable[SimWorkflow],
    *,
    workflows_table: str = WORKFLOWS_TABLE,
) -> int:
    """Insert or update workflow definitions; returns how many were written."""
    rows = [workflow_record(wf) for wf in workflows]
    cols = ", ".join(WORKFLOW_COLUMNS)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in WORKFLOW_COLUMNS[1:])
    await conn.executemany(
        f"INSERT INTO {quote_ident(workflows_table)} ({cols}) VALUES ($1, $2, $3, $4, $5) "
        f"ON CONFLICT (id) DO UPDATE SET {sets}",
        rows,
    )
    return len(rows)


async def write(
    conn: asyncpg.Connection,
    data: SimData | tuple[Sequence[SimWorkflow], Sequence[SimExecution]],
    *,
    executions_table: str = EXECUTIONS_TABLE,
    workflows_table: str = WORKFLOWS_TABLE,
    batch_size: int = 50_000,
) -> tuple[int, int]:
    """Upsert the workflows, then COPY the (new) executions; returns (workflows, executions).

    Executions go in (updated_at, id) order, one COPY per batch, so a poller running
    meanwhile never sees a row appear behind its keyset cursor. Wrap the call in a
    transaction to make it all-or-nothing.
    """
    workflows, executions = (data.workflows, data.executions) if isinstance(data, SimData) else data
    n_wf = await upsert_workflows(conn, workflows, workflows_table=workflows_table)
    ordered = sorted(executions, key=attrgetter("updated_at", "id"))
    schema, name = _split(executions_table)
    encoder = RecordEncoder()
    for chunk in _chunks(ordered, batch_size):
        await conn.copy_records_to_table(
            name,
            schema_name=schema,
            columns=EXECUTION_COLUMNS,
            records=[encoder.execution(ex) for ex in chunk],
        )
    return n_wf, len(ordered)


async def has_executions(
    conn: asyncpg.Connection, executions_table: str = EXECUTIONS_TABLE
) -> bool:
    """Whether the source holds any execution."""
    table = quote_ident(executions_table)
    return bool(await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"))


async def free_id_prefix(
    conn: asyncpg.Connection, executions_table: str = EXECUTIONS_TABLE, base: str = "ex-"
) -> str:
    """An execution id prefix no source row uses yet: `ex-`, else `ex-r2-`, `ex-r3-`, ..."""
    table = quote_ident(executions_table)
    for k in range(1, 10_000):
        prefix = base if k == 1 else f"{base}r{k}-"
        if not await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {table} WHERE starts_with(id::text, $1))", prefix
        ):
            return prefix
    raise RuntimeError(f"no free execution id prefix left in {executions_table}")


async def reset_source(
    conn: asyncpg.Connection,
    executions_table: str = EXECUTIONS_TABLE,
    workflows_table: str = WORKFLOWS_TABLE,
) -> int:
    """Empty the source tables; returns how many executions were removed."""
    removed = await conn.fetchval(f"SELECT count(*) FROM {quote_ident(executions_table)}")
    await conn.execute(
        f"TRUNCATE {quote_ident(executions_table)}, {quote_ident(workflows_table)}"
    )
    return removed


async def upsert_executions(
    conn: asyncpg.Connection,
    executions: Iterable[SimExecution],
    *,
    executions_table: str = EXECUTIONS_TABLE,
) -> int:
    """Insert or update executions (COPY into a temp table, then INSERT … ON CONFLICT)."""
    encoder = RecordEncoder()
    records = [encoder.execution(ex) for ex in executions]
    if not records:
        return 0
    table = quote_ident(executions_table)
    cols = ", ".join(EXECUTION_COLUMNS)
    sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in EXECUTION_COLUMNS[1:])
    async with conn.transaction():
        await conn.execute(
            f"CREATE TEMP TABLE wfa_sim_upsert (LIKE {table} INCLUDING DEFAULTS) ON COMMIT DROP"
        )
        await conn.copy_records_to_table(
            "wfa_sim_upsert", columns=EXECUTION_COLUMNS, records=records
        )
        await conn.execute(
            f"INSERT INTO {table} ({cols}) SELECT {cols} FROM wfa_sim_upsert "
            f"ORDER BY updated_at, id ON CONFLICT (id) DO UPDATE SET {sets}"
        )
    return len(records)


async def insert_bad_rows(
    conn: asyncpg.Connection,
    workflow_ids: Sequence[str],
    *,
    executions_table: str = EXECUTIONS_TABLE,
    workflows_table: str = WORKFLOWS_TABLE,
    at: datetime | None = None,
    id_prefix: str = "bad-",
) -> dict[str, str]:
    """Insert one source row per kind of defect; returns {row id: expected rejection reason}.

    Each row has exactly one defect. Rows use the tenant and first step of
    `workflow_ids[0]` (read from the workflows table) and are stamped `at`
    (default: the server's now()).
    """
    if not workflow_ids:
        raise ValueError("need at least one existing workflow id")
    wf_id = workflow_ids[0]
    row = await conn.fetchrow(
        f"SELECT tenant_id, steps::text AS steps FROM {quote_ident(workflows_table)} "
        "WHERE id::text = $1",
        wf_id,
    )
    if row is None:
        raise ValueError(f"workflow {wf_id!r} is not in {workflows_table}")
    tenant = row["tenant_id"]
    steps = json.loads(row["steps"])
    step_id = steps[0]["id"] if steps else "step-1"
    if at is None:
        at = await conn.fetchval("SELECT now()")
    at = at - timedelta(microseconds=at.microsecond % 1000)
    enrolled = at - timedelta(hours=1)
    missing = f"{id_prefix}missing-workflow"
    while missing in workflow_ids:
        missing += "-x"

    def attempt(entered: datetime, finished: datetime | None, status: str) -> dict[str, Any]:
        return {
            "step_id": step_id,
            "entered_at": iso(entered),
            "finished_at": iso(finished),
            "status": status,
            "error": None,
        }

    running = json.dumps([attempt(enrolled, None, "running")])
    bad_time = json.dumps([{**attempt(enrolled, None, "running"), "entered_at": "not a time"}])
    reversed_ = json.dumps(
        [attempt(at - timedelta(minutes=30), at - timedelta(minutes=40), "succeeded")]
    )
    active = ("active", None, None, step_id)
    exited = ("exited", at, "manual_removal", None)
    rows: list[tuple[str, str, str, tuple, str]] = [
        (f"{id_prefix}progress-string", wf_id, '"oops"', active, "invalid_step_progress"),
        (f"{id_prefix}progress-numbers", wf_id, "[1, 2]", active, "invalid_step_progress"),
        (f"{id_prefix}progress-timestamp", wf_id, bad_time, active, "invalid_step_progress"),
        (f"{id_prefix}status", wf_id, running, ("paused", *active[1:]), "unknown_status"),
        (f"{id_prefix}finished", wf_id, reversed_, exited, "finished_before_entered"),
        (f"{id_prefix}workflow", missing, running, active, "unknown_workflow"),
    ]
    records = []
    contact = f"{id_prefix}contact"
    for rid, wid, progress, (status, exited_at, reason, current), _ in rows:
        fields = (status, enrolled, None, None, exited_at, reason, current, progress, at)
        records.append((rid, tenant, wid, contact, *fields))
    cols = ", ".join(EXECUTION_COLUMNS)
    params = ", ".join(f"${i}" for i in range(1, len(EXECUTION_COLUMNS) + 1))
    await conn.executemany(
        f"INSERT INTO {quote_ident(executions_table)} ({cols}) VALUES ({params})", records
    )
    return {rid: expected for rid, _, _, _, expected in rows}
