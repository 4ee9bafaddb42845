"""The rows ingestion writes, one type per store table: their fields are the table's columns.

A row type's field order is the COPY column list, and its upsert (one `unnest` array per
column) is generated from it, so adding a column is one edit here plus the migration.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from datetime import datetime
from functools import cached_property
from typing import Any, NamedTuple

ATTEMPTS_SEP = "\x1e"
"""Joins an execution's attempt signatures into one text for `unnest` (arrays of arrays are
not possible there); split back with `string_to_array` in the upsert."""


class ExecutionRow(NamedTuple):
    """wfa.executions: the mirror of one source execution, keyed by (id, enrolled_at)."""

    execution_id: str
    enrolled_at: datetime
    tenant_id: str
    workflow_id: str
    contact_id: str
    status: str
    completed_at: datetime | None
    converted_at: datetime | None
    converted_in_window: bool
    exited_at: datetime | None
    exit_reason: str | None
    failed_at: datetime | None
    current_step_id: str | None
    attempts: list[str]
    source_updated_at: datetime


class ExecutionStepRow(NamedTuple):
    """wfa.execution_steps: a step an execution reached (the cohort funnel)."""

    execution_id: str
    step_id: str
    enrolled_at: datetime
    tenant_id: str
    workflow_id: str


class EventRow(NamedTuple):
    """wfa.workflow_events: enrolled, completed, converted, exited or failed, when."""

    execution_id: str
    event: str
    occurred_at: datetime
    tenant_id: str
    workflow_id: str
    reason: str | None
    duration_ms: int | None
    duration_le: float | None


class StepRunRow(NamedTuple):
    """wfa.step_runs: one attempt of a step."""

    execution_id: str
    step_id: str
    entered_at: datetime
    tenant_id: str
    workflow_id: str
    action_type: str
    status: str
    finished_at: datetime | None
    duration_ms: int | None
    duration_le: float | None
    error: str | None


class RejectedRow(NamedTuple):
    """wfa.rejected_rows: a quarantined source row with the reason and the raw row as JSON."""

    source_table: str
    source_id: str
    source_updated_at: datetime
    reason: str
    detail: str
    raw: str


class CounterDelta(NamedTuple):
    """An increment of one persisted counter of wfa.counters."""

    metric: str
    tenant_id: str
    workflow_id: str
    step_id: str
    action_type: str
    label: str
    value: int


_SQL_TYPES: dict[Any, str] = {
    str: "text",
    datetime: "timestamptz",
    bool: "bool",
    int: "bigint",
    float: "float8",
}


def _sql_type(hint: Any) -> str:
    if isinstance(hint, types.UnionType):
        (hint,) = (a for a in typing.get_args(hint) if a is not type(None))
    if typing.get_origin(hint) is list:
        # Bound joined by ATTEMPTS_SEP: see the upsert's select list.
        return "text"
    return _SQL_TYPES[hint]


@dataclass(frozen=True)
class Table:
    """A store table written from rows of type `row`, upserted on `key`.

    `fixed` columns keep their first value on conflict (they never change for the key).
    """

    name: str
    row: type[tuple]
    key: tuple[str, ...]
    fixed: tuple[str, ...] = ()

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns, in the row's field order (the COPY column list)."""
        return self.row._fields  # type: ignore[attr-defined]

    @cached_property
    def upsert_sql(self) -> str:
        """INSERT ... SELECT FROM unnest(one array per column) ON CONFLICT (key) DO UPDATE."""
        hints = typing.get_type_hints(self.row)
        cols = self.columns
        arrays = ", ".join(f"${i}::{_sql_type(hints[c])}[]" for i, c in enumerate(cols, 1))
        select = ", ".join(
            f"string_to_array(u.{c}, chr({ord(ATTEMPTS_SEP)}))"
            if typing.get_origin(hints[c]) is list
            else f"u.{c}"
            for c in cols
        )
        updates = ", ".join(
            f"{c} = excluded.{c}" for c in cols if c not in self.key and c not in self.fixed
        )
        return (
            f"INSERT INTO wfa.{self.name} ({', '.join(cols)})\n"
            f"SELECT {select}\n  FROM unnest({arrays}) AS u({', '.join(cols)})\n"
            f"ON CONFLICT ({', '.join(self.key)}) DO UPDATE SET {updates}"
        )

    @cached_property
    def _joined(self) -> tuple[int, ...]:
        hints = typing.get_type_hints(self.row)
        return tuple(
            i for i, c in enumerate(self.columns) if typing.get_origin(hints[c]) is list
        )

    def bind(self, rows: list[Any]) -> list[list[Any]]:
        """`rows` as one list per column, list fields joined, ready for `upsert_sql`."""
        out = [list(col) for col in zip(*rows, strict=True)]
        for i in self._joined:
            out[i] = [ATTEMPTS_SEP.join(v) for v in out[i]]
        return out


EXECUTIONS = Table("executions", ExecutionRow, ("execution_id", "enrolled_at"))
EXECUTION_STEPS = Table(
    "execution_steps", ExecutionStepRow, ("execution_id", "step_id", "enrolled_at")
)
WORKFLOW_EVENTS = Table(
    "workflow_events", EventRow, ("execution_id", "event", "occurred_at"),
    fixed=("tenant_id", "workflow_id"),
)
STEP_RUNS = Table(
    "step_runs", StepRunRow, ("execution_id", "step_id", "entered_at"),
    fixed=("tenant_id", "workflow_id"),
)
