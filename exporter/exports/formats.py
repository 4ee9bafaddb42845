"""Cell and document encoders: RFC 4180 CSV (formula-safe), JSON and NDJSON."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

FORMATS: dict[str, tuple[str, str]] = {
    "csv": ("text/csv; charset=utf-8; header=present", "csv"),
    "json": ("application/json", "json"),
    "ndjson": ("application/x-ndjson", "ndjson"),
    "pdf": ("application/pdf", "pdf"),
}
"""Format -> (content type, file extension)."""

FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet read a text cell as a formula."""


def iso(t: datetime) -> str:
    """RFC 3339 UTC text with a `Z`, as the API writes times."""
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def neutralise(text: str) -> str:
    """Prefix a text cell that a spreadsheet would run as a formula with a quote."""
    return "'" + text if text.startswith(FORMULA_PREFIXES) else text


def csv_cell(value: Any) -> Any:
    """One value as a CSV cell: text neutralised, times RFC 3339, booleans lower case."""
    if value is None:
        return ""
    if isinstance(value, str):
        return neutralise(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, float) and not math.isfinite(value):
        return ""
    return value


def csv_rows(rows: Iterable[Sequence[Any]], *, safe: bool = False) -> bytes:
    """CSV records with CRLF line ends; `safe` rows are already text cells."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\r\n")
    if safe:
        writer.writerows(rows)
    else:
        writer.writerows([csv_cell(v) for v in row] for row in rows)
    return buf.getvalue().encode()


def _default(value: Any) -> Any:
    if isinstance(value, datetime):
        return iso(value)
    raise TypeError(f"cannot serialize {type(value).__name__}")


def finite(data: Any) -> Any:
    """`data` with non-finite floats replaced by null."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: finite(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [finite(v) for v in data]
    return data


def json_text(data: Any, *, indent: int | None = None) -> str:
    """JSON text (times as RFC 3339 UTC, non-finite floats as null)."""
    separators = (",", ":") if indent is None else (",", ": ")
    return json.dumps(
        finite(data), default=_default, separators=separators, ensure_ascii=False, indent=indent
    )


def ndjson_rows(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    """One JSON object per line."""
    return "".join(
        json_text(dict(zip(columns, row, strict=True))) + "\n" for row in rows
    ).encode()
