"""Keyset reads of changed rows from the source tables, with configurable names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

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
"""Columns of the default source executions table (DESIGN §2), in order."""
EXECUTION_FIELDS = (
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
    "failed_at",
    "current_step_id",
    "step_progress",
    "updated_at",
)
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
    parts.append(f"{quote_ident(columns['id'])} AS _key")
    return ", ".join(parts)


class KeysetQuery:
    """Pages of a table ordered by (updated_at, id): the first from a time, the next after a key."""

    def __init__(self, table: str, fields: Sequence[str], columns: Mapping[str, str | None]):
        sel = _select_list(fields, columns)
        upd, key = quote_ident(columns["updated_at"]), quote_ident(columns["id"])
        base = f"SELECT {sel} FROM {quote_ident(table)}"
        order = f"ORDER BY {upd}, {key}"
        self.first_sql = f"{base} WHERE {upd} >= $1 {order} LIMIT $2"
        self.next_sql = f"{base} WHERE ({upd}, {key}) > ($1, $2) {order} LIMIT $3"
        self.newest_sql = f"SELECT max({upd}) FROM {quote_ident(table)}"

    async def first(
        self, conn: asyncpg.Connection, since: datetime, limit: int
    ) -> list[asyncpg.Record]:
        """Rows with updated_at >= since."""
        return await conn.fetch(self.first_sql, since, limit)

    async def after(
        self, conn: asyncpg.Connection, updated_at: datetime, key: Any, limit: int
    ) -> list[asyncpg.Record]:
        """Rows strictly after (updated_at, key)."""
        return await conn.fetch(self.next_sql, updated_at, key, limit)


def execution_query(table: str, columns: Mapping[str, str | None]) -> KeysetQuery:
    """Keyset query over the executions table."""
    return KeysetQuery(table, EXECUTION_FIELDS, columns)


def workflow_query(table: str, columns: Mapping[str, str | None]) -> KeysetQuery:
    """Keyset query over the workflows table."""
    return KeysetQuery(table, WORKFLOW_FIELDS, columns)
