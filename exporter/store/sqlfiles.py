"""SQL files of the package, read once."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def sql(path: str) -> str:
    """Return the text of `exporter/store/sql/<path>`."""
    return resources.files("exporter.store").joinpath("sql", path).read_text(encoding="utf-8")


def statements(text: str) -> list[str]:
    """Split a DDL script on lines that end with ';' (no dollar-quoted bodies in such files)."""
    out: list[str] = []
    current: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("--") and not current:
            continue
        current.append(line)
        if line.rstrip().endswith(";"):
            out.append("\n".join(current).strip())
            current = []
    tail = "\n".join(current).strip()
    if tail:
        out.append(tail)
    return out


@cache
def named(path: str) -> dict[str, str]:
    """Statements of a file split on `-- name: <name>` headers."""
    return split_named(sql(path))


def split_named(text: str) -> dict[str, str]:
    """Statements of an SQL text split on `-- name: <name>` headers."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("-- name:"):
            current = out.setdefault(line.split(":", 1)[1].strip(), [])
        elif current is not None:
            current.append(line)
    return {k: "\n".join(v).strip().rstrip(";") for k, v in out.items()}
