"""Throwaway PostgreSQL clusters for tests and benchmarks, over the demo's private cluster."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from exporter import localdb
from exporter.localdb import (
    DevDBError,
    find_bindir,
    free_port,
    port_is_free,
    quote_ident,
    version_key,
)

__all__ = [
    "FAST_SETTINGS",
    "DevCluster",
    "DevDBError",
    "find_bindir",
    "free_port",
    "port_is_free",
    "quote_ident",
    "replace_dbname",
    "version_key",
]

FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
"""Durability traded for speed: a test cluster is thrown away after the run."""


class DevCluster(localdb.DevCluster):
    """The demo's cluster, optionally `fast` (no fsync), with a database drop for tests."""

    def __init__(self, datadir: Path, port: int | None = None, fast: bool = False) -> None:
        super().__init__(datadir, port, FAST_SETTINGS if fast else None)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, terminating its connections."""
        self.psql(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")


def replace_dbname(dsn: str, dbname: str) -> str:
    """Return ``dsn`` (URL or ``key=value`` form) pointing at ``dbname``."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        return urlunsplit(parts._replace(path="/" + dbname))
    words = [w for w in dsn.split() if not w.startswith("dbname=")]
    return " ".join([*words, f"dbname={dbname}"])
