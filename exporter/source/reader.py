"""Keyset reads of changed rows from the source tables, with configurable names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import asyncpg

from exporter.cursor import Bounds, Key

EXECUTION_COLUMNS = (
    "id",
    "tenant_id",
    "workflow_id",
    "contact_id",
    "status",
    "enrolled_at",
    "completed_at",
    "converted_at",
    "exited_at",
    "exit_reason",
    "current_step_id",
    "step_progress",
    "updated_at",
)
"""Columns of the default source executions table (the source contract), in order."""
@dataclass(frozen=True, slots=True)
class SourceExecution:
    """One row of the source executions table, ids as text."""

    id: str
    tenant_id: str
    workflow_id: str
    contact_id: str
    status: str
    enrolled_at: datetime
    completed_at: datetime | None
    converted_at: datetime | None
    exited_at: datetime | None
    exit_reason: str | None
    failed_at: datetime | None
    current_step_id: str | None
    step_progress: str | None
    updated_at: datetime

    @classmethod
    def from_record(cls, r: Sequence[Any]) -> SourceExecution:
        """A row read by `execution_query` (its columns are this class's fields, in order)."""
        return cls(*r)


EXECUTION_FIELDS = tuple(f.name for f in fields(SourceExecution))
"""What an executions page selects, in order: the fields of SourceExecution."""
WORKFLOW_FIELDS = ("id", "tenant_id", "name", "steps", "updated_at")
_TEXT = {
    "id",
    "tenant_id",
    "workflow_id",
    "contact_id",
    "status",
    "exit_reason",
    "current_step_id",
    "step_progress",
    "name",
    "steps",
}


def quote_ident(name: str) -> str:
    """Quote a (possibly schema-qualified) identifier."""
    return ".".join('"' + part.replace('"', '""') + '"' for part in name.split("."))


def _select_list(fields: Sequence[str], columns: Mapping[str, str | None]) -> str:
    parts = []
    for f in fields:
        col = columns.get(f)
        if col is None:
            parts.append(f"NULL::timestamptz AS {f}")
        elif f in _TEXT:
            parts.append(f"{quote_ident(col)}::text AS {f}")
        elif f.endswith("_at"):
            parts.append(f"{quote_ident(col)}::timestamptz AS {f}")
        else:
            parts.append(f"{quote_ident(col)} AS {f}")
    return ", ".join(parts)


async def source_clock(conn: asyncpg.Connection) -> datetime:
    """The source's clock now (before a read, so no row it misses is older than this)."""
    return await conn.fetchval("SELECT clock_timestamp()")


class KeysetQuery:
    """Pages of a table in (updated_at, id) order within `Bounds`, ids given as text.

    Keys are compared by the source in its own order: the text of an id is cast back to the
    id column's type, found once by preparing a query over it.
    """

    def __init__(self, table: str, fields: Sequence[str], columns: Mapping[str, str | None]):
        self.table = quote_ident(table)
        self.upd, self.key = quote_ident(columns["updated_at"]), quote_ident(columns["id"])
        self.select = f"SELECT {_select_list(fields, columns)} FROM {self.table}"
        self._cast: str | None = None
        self._sql: dict[tuple[bool, bool, bool], str] = {}

    async def key_cast(self, conn: asyncpg.Connection) -> str:
        """`::text::<type of the id column>`, the cast that turns an id's text into a key."""
        if self._cast is None:
            stmt = await conn.prepare(f"SELECT {self.key} FROM {self.table} LIMIT 0")
            t = stmt.get_attributes()[0].type
            self._cast = "::text::" + ".".join(
                '"' + part.replace('"', '""') + '"' for part in (t.schema, t.name)
            )
        return self._cast

    def page_sql(self, cast: str, since: bool, after: bool, upto: bool) -> str:
        """The page query with a lower bound on updated_at, an after-key and an up-to-key as
        asked, then the row limit (parameters in that order)."""
        sql = self._sql.get((since, after, upto))
        if sql is None:
            conds, n = [], 0
            if since:
                n += 1
                conds.append(f"{self.upd} >= ${n}")
            if after:
                conds.append(f"({self.upd}, {self.key}) > (${n + 1}, ${n + 2}{cast})")
                n += 2
            if upto:
                conds.append(f"({self.upd}, {self.key}) <= (${n + 1}, ${n + 2}{cast})")
                n += 2
            where = f" WHERE {' AND '.join(conds)}" if conds else ""
            sql = f"{self.select}{where} ORDER BY {self.upd}, {self.key} LIMIT ${n + 1}"
            self._sql[(since, after, upto)] = sql
        return sql

    async def page(
        self,
        conn: asyncpg.Connection,
        bounds: Bounds,
        after: Key | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        """Up to `limit` rows of `bounds`, after `after` (default: the bounds' own start)."""
        after = after or bounds.after
        sql = self.page_sql(
            await self.key_cast(conn),
            bounds.since is not None,
            after is not None,
            bounds.upto is not None,
        )
        args: list[Any] = []
        if bounds.since is not None:
            args.append(bounds.since)
        if after is not None:
            args += [after.updated_at, after.id]
        if bounds.upto is not None:
            args += [bounds.upto.updated_at, bounds.upto.id]
        return await conn.fetch(sql, *args, limit)


def execution_query(table: str, columns: Mapping[str, str | None]) -> KeysetQuery:
    """Keyset query over the executions table."""
    return KeysetQuery(table, EXECUTION_FIELDS, columns)


def workflow_query(table: str, columns: Mapping[str, str | None]) -> KeysetQuery:
    """Keyset query over the workflows table."""
    return KeysetQuery(table, WORKFLOW_FIELDS, columns)


DAY_HASH_FORMAT = "YYYY-MM-DD HH24:MI:SS.US"
"""to_char format of `updated_at` (in UTC) in a row's fingerprint, the same on both sides."""


class DayQueries:
    """Per (workflow, UTC day of enrolled_at): a fingerprint of the executions table, and the
    rows of chosen days, both limited to rows enrolled since $1 and updated until $2."""

    def __init__(self, table: str, select: str, columns: Mapping[str, str | None]):
        t = quote_ident(table)
        wf = f"{quote_ident(columns['workflow_id'])}::text"
        enrolled = f"{quote_ident(columns['enrolled_at'])}::timestamptz"
        upd_raw = quote_ident(columns["updated_at"])
        upd, key = f"{upd_raw}::timestamptz", quote_ident(columns["id"])
        day = f"date_trunc('day', {enrolled} AT TIME ZONE 'UTC')"
        scope = f"{enrolled} >= $1 AND {upd} <= $2"
        days = f"({wf}, {day}) IN (SELECT * FROM unnest($3::text[], $4::timestamp[]))"
        fingerprint = (
            f"SELECT {wf} AS workflow_id, {day} AS day, count(*) AS n, "
            f"sum(hashtextextended({key}::text || '/' || "
            f"to_char({upd} AT TIME ZONE 'UTC', '{DAY_HASH_FORMAT}'), 0)) AS h FROM {t}"
        )
        self.fingerprint_sql = f"{fingerprint} WHERE {scope} GROUP BY 1, 2"
        self.fingerprint_days_sql = f"{fingerprint} WHERE {scope} AND {days} GROUP BY 1, 2"
        self.rows_sql = f"{select} WHERE {scope} AND {days} ORDER BY {upd_raw}, {key}"
