"""A set-based first import beside the exporter's: how fast the store itself can turn source
rows into store rows, and whether that would reach the ingest target.

The source is filled and ingested by the exporter (`wfa exporter --once`), whose raw tables
and counters are kept as the reference. The raw tables and counters are then emptied and the
same source rows imported again by the statements of bench/setbased.sql: each page is copied
from the source into a stage table of one store session, then validated, parsed and written
by INSERT … SELECT, with no row passing through Python. Pages run on one session, then on
two side by side (one per core). The figures: rows per second of each, beside COPY of the
same rows, where the store's time goes per page, and the number of store rows that differ
from the exporter's (it must be 0).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from bench.bench_ingest import _copy_rate, ingested
from bench.common import Figure, markdown
from exporter.cursor import Key
from exporter.histogram import BOUNDS
from exporter.ingest import Ingestor, IngestSettings
from exporter.store.sqlfiles import split_named
from exporter.transform import LE_LABELS, WorkflowInfo

Q = split_named((Path(__file__).parent / "setbased.sql").read_text())
ISO_TAILS = [
    f"{frac}{tz}"
    for frac in ("", *("." + "0" * n for n in range(1, 7)))
    for tz in ("", "Z", "+00:00", "-00:00")
]
"""What may follow YYYY-MM-DDThh:mm:ss (digits written as 0) in a timestamp the set-based path
parses: up to six fractional digits, then Z, an offset hh:mm or nothing (UTC). Python's
fromisoformat and PostgreSQL read these as the same instant."""
_BOUNDS = [float(b) for b in BOUNDS]
_LABELS = [LE_LABELS[b] for b in BOUNDS]
PARSE = {"attempts": "wfa_bulk_a", "executions": "wfa_bulk_x", "events": "wfa_bulk_e"}
"""Statements that validate and shape the staged rows, and the table each one fills."""
WRITE = ("write_executions", "write_execution_steps", "write_events", "write_step_runs",
         "counters", "invalidate")
_ARGS = {
    "events": (_BOUNDS,), "write_events": (_BOUNDS,), "write_step_runs": (_BOUNDS,),
    "counters": (_LABELS,),
}
MAX_EXECUTIONS = 1_000_000
RAW = ("executions", "execution_steps", "workflow_events", "step_runs", "counters")
_SIG = "array(SELECT regexp_replace(a, E'\\x1f[^\\x1f]*$', '') FROM unnest(attempts) a)"
"""An execution's attempt signatures without the error digest (crc32 here, md5 there)."""


@dataclass(frozen=True, slots=True)
class Maps:
    """Statement arguments that do not change from page to page."""

    steps: list[list[str]]
    workflows: list[list[Any]]
    earliest: Any
    latest: Any


def maps(workflows: dict[str, WorkflowInfo], settings: IngestSettings, now: Any) -> Maps:
    """The known steps and workflows as arrays, and the plausible window at `now`."""
    steps: list[list[str]] = [[], [], []]
    wfs: list[list[Any]] = [[], [], []]
    for wid, wf in workflows.items():
        wfs[0].append(wid)
        wfs[1].append(wf.tenant_id)
        wfs[2].append(settings.conversion_windows.get(wid, settings.conversion_window))
        for sid, action in wf.action_types.items():
            steps[0].append(wid)
            steps[1].append(sid)
            steps[2].append(action)
    window = settings.plausible(now)
    return Maps(steps, wfs, window.earliest, window.latest)


async def stage(source: asyncpg.Connection, store: asyncpg.Connection, sql: str,
                args: Sequence[Any], latest: Any) -> tuple[int, Key | None]:
    """Copy one keyset page into the session's stage table; its size and last key."""
    await store.execute(Q["create"])
    await store.execute(Q["clear"])
    buf = io.BytesIO()
    await source.copy_from_query(
        f"SELECT row_number() OVER () AS seq, p.* FROM ({sql}) AS p", *args, output=buf
    )
    buf.seek(0)
    await store.copy_to_table("wfa_stage", source=buf)
    r = await store.fetchrow(Q["page"], latest)
    last = None if r["last_id"] is None else Key(r["last_updated_at"], r["last_id"])
    return r["n"], last


async def import_page(store: asyncpg.Connection, m: Maps, took: Counter) -> None:
    """Parse, validate and write the staged page in one transaction; time each statement."""
    args = {
        "attempts": (ISO_TAILS, *m.steps, _BOUNDS),
        "executions": (m.earliest, m.latest, *m.workflows),
        **_ARGS,
    }
    async with store.transaction():
        await store.execute(
            "SET LOCAL TimeZone = 'UTC'; SET LOCAL jit = off; SET LOCAL work_mem = '64MB'"
        )
        await store.execute("ANALYZE wfa_stage")
        for name in (*PARSE, *WRITE):
            t = time.perf_counter()
            await store.execute(Q[name], *args.get(name, ()))
            if name in PARSE:  # the next statement plans on what this one wrote
                await store.execute(f"ANALYZE {PARSE[name]}")
            took[name] += time.perf_counter() - t


async def import_all(
    source_dsn: str, store_dsn: str, sessions: int, page: int
) -> tuple[float, Counter]:
    """Import every source row set-based with `sessions` store sessions; seconds, split."""
    source = await asyncpg.connect(source_dsn)
    stores = [await asyncpg.connect(store_dsn) for _ in range(sessions)]
    took: Counter = Counter()
    try:
        ing = Ingestor(IngestSettings(), backend=None)  # type: ignore[arg-type]
        await ing.load_workflows(stores[0])
        m = maps(ing.workflows, ing.s, await source.fetchval("SELECT clock_timestamp()"))
        q = ing.executions
        cast = await q.key_cast(source)
        running: list[asyncio.Task | None] = [None] * sessions
        after: Key | None = None
        started = time.perf_counter()
        k = 0
        while True:
            slot = k % sessions
            if running[slot] is not None:
                await running[slot]
            sql = q.page_sql(cast, False, after is not None, False)
            args = ([after.updated_at, after.id] if after else []) + [page]
            t = time.perf_counter()
            n, last = await stage(source, stores[slot], sql, args, m.latest)
            took["stage"] += time.perf_counter() - t
            running[slot] = asyncio.create_task(import_page(stores[slot], m, took))
            k += 1
            if n < page or last is None:
                break
            after = last
        await asyncio.gather(*(t for t in running if t is not None))
        return time.perf_counter() - started, took
    finally:
        await source.close()
        for s in stores:
            await s.close()


async def keep_reference(dsn: str) -> None:
    """Keep the exporter's raw tables and counters in schema ref."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("CREATE SCHEMA ref")
        for t in RAW:
            await conn.execute(f"CREATE TABLE ref.{t} AS SELECT * FROM wfa.{t}")
    finally:
        await conn.close()


async def empty_store(dsn: str) -> None:
    """Empty what the import writes (partitions and workflow definitions stay)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"TRUNCATE {', '.join(f'wfa.{t}' for t in RAW)}, wfa.invalidations")
    finally:
        await conn.close()


async def differing(dsn: str) -> tuple[int, int]:
    """Store rows of the import not in the reference or the other way round, and the number
    of reference rows compared."""
    cols = {t: "*" for t in RAW}
    cols["executions"] = (
        "execution_id, enrolled_at, tenant_id, workflow_id, contact_id, status, completed_at, "
        "converted_at, converted_in_window, exited_at, exit_reason, failed_at, current_step_id, "
        f"{_SIG}, source_updated_at"
    )
    conn = await asyncpg.connect(dsn)
    try:
        n = compared = 0
        for t, c in cols.items():
            compared += await conn.fetchval(f"SELECT count(*) FROM ref.{t}")
            for a, b in (("wfa", "ref"), ("ref", "wfa")):
                n += await conn.fetchval(
                    f"SELECT count(*) FROM (SELECT {c} FROM {a}.{t} "
                    f"EXCEPT ALL SELECT {c} FROM {b}.{t}) AS d"
                )
        return n, compared
    finally:
        await conn.close()


def run(executions: int, page: int = 5000, quick: bool = False) -> list[Figure]:
    """Measure the set-based import at `executions` source rows."""
    if executions > MAX_EXECUTIONS:
        raise SystemExit(f"runs up to {MAX_EXECUTIONS:,} executions (it imports them 3 times)")
    scale = f"{executions:,} executions"
    with ingested(executions, page) as i:
        src, store, exporter_s = i.source, i.store, i.seconds
        asyncio.run(keep_reference(store))
        runs = {}
        for sessions in (1, 2):
            asyncio.run(empty_store(store))
            runs[sessions] = asyncio.run(import_all(src, store, sessions, page))
        wrong, compared = asyncio.run(differing(store))
        copy = asyncio.run(_copy_rate(src, store))
    pages = -(-executions // page)
    one_s, took = runs[1]
    figs = [
        Figure("ingest set-based", scale, "exporter's first ingest (Python path, incl. refresh)",
               executions / exporter_s, "rows/s", "PostgreSQL COPY of the same rows", copy),
        Figure("ingest set-based", scale, "set-based import, one store session",
               executions / one_s, "rows/s", "PostgreSQL COPY of the same rows", copy),
        Figure("ingest set-based", scale, "set-based import, two sessions side by side",
               executions / runs[2][0], "rows/s", "PostgreSQL COPY of the same rows", copy,
               target="≥ 25 % of COPY"),
        Figure("ingest set-based", scale, "store rows differing from the exporter's", wrong,
               "rows", "store rows compared", compared, target="0"),
    ]
    for name in ("stage", *PARSE, *WRITE):
        figs.append(Figure("ingest set-based", scale, f"one session, per page of {page}: {name}",
                           1000 * took[name] / pages, "ms"))
    return figs


def main() -> None:
    """Command line: `python -m bench.bench_setbased --executions 100000`."""
    p = argparse.ArgumentParser()
    p.add_argument("--executions", type=int, nargs="+", default=[100_000])
    p.add_argument("--page", type=int, default=5000)
    args = p.parse_args()
    print(markdown([f for n in args.executions for f in run(n, args.page)]))


if __name__ == "__main__":
    main()
