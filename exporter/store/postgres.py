"""Plain PostgreSQL backend: partitioned raw tables, rollup tables and real-time views."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg

from exporter.store import locks, weekly
from exporter.store.backend import (
    RAW_TABLES,
    RETENTION_RAW,
    STORAGE,
    Backend,
    RefreshResult,
    RetentionError,
    dataset_of,
    raw_tables_ddl,
    record_cutoff,
    retention_cutoffs,
)
from exporter.store.partitions import (
    day_floor,
    hour_floor,
    partition_name,
    partition_start,
    partition_starts,
)
from exporter.store.rollups import (
    ORIGIN,
    ROLLUPS,
    ReadSource,
    Rollup,
    daily_select,
    hourly_select,
)
from exporter.store.sqlfiles import sql, statements

_WM = "(SELECT watermark FROM wfa.watermarks WHERE rollup = '{key}')"
REFRESH_WINDOW = timedelta(days=7)
# Reads take the rollup tables below the watermarks and aggregate raw rows above them.
READ_SOURCE = ReadSource(
    hourly="wfa.{name}_1h_mat",
    daily="wfa.{name}_1d_mat",
    watermarks="SELECT max(watermark) FILTER (WHERE rollup = '{name}_1h'), "
    "max(watermark) FILTER (WHERE rollup = '{name}_1d') INTO wm_h, wm_d "
    "FROM wfa.watermarks WHERE rollup IN ('{name}_1h', '{name}_1d');",
)


def _mat_ddl(r: Rollup) -> list[str]:
    cols = r.table_columns
    out = []
    for level in ("1h", "1d"):
        out += [
            f"CREATE TABLE IF NOT EXISTS wfa.{r.name}_{level}_mat ({cols})",
            f"CREATE INDEX IF NOT EXISTS {r.name}_{level}_mat_idx "
            f"ON wfa.{r.name}_{level}_mat (workflow_id, bucket)",
            f"CREATE INDEX IF NOT EXISTS {r.name}_{level}_mat_bucket_idx "
            f"ON wfa.{r.name}_{level}_mat (bucket)",
            f"INSERT INTO wfa.watermarks VALUES ('{r.name}_{level}', '1900-01-01 00:00:00+00') "
            "ON CONFLICT DO NOTHING",
        ]
    wm_h = _WM.format(key=f"{r.name}_1h")
    wm_d = _WM.format(key=f"{r.name}_1d")
    out.append(
        f"CREATE OR REPLACE VIEW {r.relation('1h')} AS "
        f"SELECT * FROM wfa.{r.name}_1h_mat WHERE bucket < {wm_h} UNION ALL "
        + hourly_select(r, "date_bin", f"{r.time} >= {wm_h}")
    )
    out.append(
        f"CREATE OR REPLACE VIEW {r.relation('1d')} AS "
        f"SELECT * FROM wfa.{r.name}_1d_mat WHERE bucket < {wm_d} UNION ALL "
        + daily_select(r, r.relation("1h"), "date_bin", f"bucket >= {wm_d}")
    )
    return out


def _read_index_ddl(r: Rollup) -> list[str]:
    """Covering (workflow_id, bucket) indexes, so reads of a few workflows scan only the index.

    They replace the plain (workflow_id, bucket) indexes. The daily tables lose their
    bucket-only index too: a generic plan would take it for a month-long read and filter
    every workflow's rows, and a refresh touches few daily rows. The hourly tables keep
    theirs for the refresh.
    """
    cols = r.covered
    out = []
    for level in ("1h", "1d"):
        table = f"wfa.{r.name}_{level}_mat"
        out += [
            f"CREATE INDEX IF NOT EXISTS {r.name}_{level}_mat_read_idx ON {table} "
            f"(workflow_id, bucket) INCLUDE ({cols})",
            f"DROP INDEX IF EXISTS wfa.{r.name}_{level}_mat_idx",
        ]
    out.append(f"DROP INDEX IF EXISTS wfa.{r.name}_1d_mat_bucket_idx")
    return out


class PostgresBackend(Backend):
    """Range-partitioned raw tables; rollups kept by the exporter from an invalidation log."""

    name = "postgres"
    read_source = READ_SOURCE

    def __init__(self, partition_interval: timedelta = timedelta(days=7), premake: int = 4):
        self.interval = partition_interval
        self.premake = premake
        self._known: dict[str, set[datetime]] = {}

    def migration(self, version: int) -> list[str]:
        """Statements of `version` for plain PostgreSQL."""
        out: list[str] = []
        if version == 1:
            out = raw_tables_ddl(partitioned=True) + statements(sql("postgres/001_watermarks.sql"))
            for r in ROLLUPS:
                out += _mat_ddl(r)
        elif version == 7:
            for r in ROLLUPS:
                out += _read_index_ddl(r)
        return out

    def reset(self) -> None:
        """Forget the known partitions; they are read again before the next write."""
        self._known = {}

    async def _load_known(self, conn: asyncpg.Connection) -> None:
        rows = await conn.fetch(
            """SELECT parent.relname AS parent,
                      (regexp_match(pg_get_expr(child.relpartbound, child.oid),
                                    'FROM \\(''([^'']+)''\\)'))[1]::timestamptz AS start
                 FROM pg_inherits i
                 JOIN pg_class parent ON parent.oid = i.inhparent
                 JOIN pg_class child ON child.oid = i.inhrelid
                 JOIN pg_namespace n ON n.oid = parent.relnamespace
                WHERE n.nspname = 'wfa' AND parent.relname = ANY($1::text[])""",
            list(RAW_TABLES),
        )
        self._known = {t: set() for t in RAW_TABLES}
        for row in rows:
            self._known[row["parent"]].add(row["start"])

    async def prepare_write(
        self, conn: asyncpg.Connection, spans: dict[str, tuple[datetime, datetime]]
    ) -> None:
        """Create the missing partitions for each table's [min, max] (its own short transaction)."""
        if not self._known:
            await self._load_known(conn)
        missing = [
            (table, start)
            for table, (lo, hi) in spans.items()
            for start in partition_starts(lo, hi, self.interval)
            if start not in self._known[table]
        ]
        if not missing:
            return
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", locks.PARTITIONS)
            for table, start in missing:
                end = start + self.interval
                await conn.execute(
                    f"CREATE TABLE IF NOT EXISTS wfa.{partition_name(table, start)} "
                    f"PARTITION OF wfa.{table} FOR VALUES FROM ('{start.isoformat()}') "
                    f"TO ('{end.isoformat()}')"
                )
        for table, start in missing:
            self._known[table].add(start)

    async def maintain(self, conn: asyncpg.Connection, now: datetime) -> None:
        """Create partitions from the current one to `premake` intervals ahead."""
        lo = partition_start(now, self.interval)
        hi = lo + self.premake * self.interval
        await self.prepare_write(conn, {t: (lo, hi) for t in RAW_TABLES})

    async def refresh(self, conn: asyncpg.Connection, now: datetime | None = None) -> RefreshResult:
        """Recompute invalidated hour/day buckets and materialize completed hours and days."""
        now = now or datetime.now(UTC)
        result = RefreshResult()
        for r in ROLLUPS:
            done, total = False, 0
            while not done:
                # A first refresh of a large history goes in bounded windows, one transaction
                # (and statement timeout) each, so none outlasts the pool's statement timeout.
                async with conn.transaction():
                    await conn.execute("SELECT pg_advisory_xact_lock($1)", locks.REFRESH)
                    n, done = await self._refresh_one(conn, r, now, result)
                total += n
            result.buckets[r.name] = total
        return result

    async def drop_before(
        self, conn: asyncpg.Connection, dataset: str, older_than: datetime
    ) -> list[str]:
        """Drop raw partitions ending by `older_than`, or delete older rollup rows; names."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", locks.REFRESH)
            marks = dict(await conn.fetch("SELECT rollup, watermark FROM wfa.watermarks"))
            if dataset in RETENTION_RAW:
                above = [marks[f"{r.name}_1h"] for r in ROLLUPS if dataset_of(r.raw) == dataset]
            elif dataset == "rollups_1h":
                above = [marks[f"{r.name}_1d"] for r in ROLLUPS]
            elif dataset == "rollups_1d":
                above = [older_than]
            else:
                raise RetentionError(f"unknown retention dataset {dataset!r}")
            cutoff = min([older_than, *above])
            dropped: list[str] = []
            if dataset in RETENTION_RAW:
                await self._load_known(conn)
                for table in RETENTION_RAW[dataset]:
                    for start in sorted(self._known[table]):
                        if start + self.interval <= cutoff:
                            name = partition_name(table, start)
                            await conn.execute(f"DROP TABLE IF EXISTS wfa.{name}")
                            self._known[table].discard(start)
                            dropped.append(f"wfa.{name}")
            else:
                level = dataset[-2:]
                for r in ROLLUPS:
                    n = await conn.execute(
                        f"DELETE FROM wfa.{r.name}_{level}_mat WHERE bucket < $1", cutoff
                    )
                    if n != "DELETE 0":
                        dropped.append(f"wfa.{r.name}_{level}_mat")
                if level == "1d":
                    await self.resum_weeks(conn, cutoff, "true")
            await record_cutoff(conn, dataset, cutoff)
        return dropped

    async def watermarks(self, conn: asyncpg.Connection) -> dict[str, datetime | None]:
        """Each rollup table's watermark (the view reads the raw tail from there)."""
        rows = await conn.fetch(STORAGE["pg_watermarks"])
        return {f"wfa.{r['rollup']}": r["watermark"] for r in rows}

    async def _rollup_tables(self, conn: asyncpg.Connection, level: str) -> list[tuple[str, str]]:
        return [(f"wfa.{r.name}_{level}_mat", "bucket") for r in ROLLUPS]

    async def pieces(self, conn: asyncpg.Connection, dataset: str) -> list[dict[str, Any]]:
        """Raw partitions; the rollup tables are not partitioned (rows are deleted)."""
        if dataset not in RETENTION_RAW:
            return []
        tables = list(RETENTION_RAW[dataset])
        return [dict(r) for r in await conn.fetch(STORAGE["pg_partitions"], tables)]

    def drop_deletes_rows(self, dataset: str) -> bool:
        """Rollup rows are deleted by bucket; raw partitions are dropped whole."""
        return dataset not in RETENTION_RAW

    async def _refresh_one(
        self, conn: asyncpg.Connection, r: Rollup, now: datetime, result: RefreshResult
    ) -> tuple[int, bool]:
        marks = dict(
            await conn.fetch(
                "SELECT rollup, watermark FROM wfa.watermarks WHERE rollup = ANY($1::text[]) "
                "FOR UPDATE",
                [f"{r.name}_1h", f"{r.name}_1d"],
            )
        )
        old_h, old_d = marks[f"{r.name}_1h"], marks[f"{r.name}_1d"]
        target = max(hour_floor(now), old_h)
        if not self._known:
            await self._load_known(conn)
        starts = self._known.get(r.raw.removeprefix("wfa."))
        base = max(old_h, min(starts)) if starts else target
        new_h = min(target, max(old_h, hour_floor(base) + REFRESH_WINDOW))
        new_d = max(day_floor(new_h), old_d)
        invalid = [
            row["bucket"]
            for row in await conn.fetch(
                "DELETE FROM wfa.invalidations WHERE rollup = $1 RETURNING bucket", r.name
            )
        ]
        # Never recompute buckets whose source rows were dropped by retention.
        cutoffs = await retention_cutoffs(conn)
        raw_cut = cutoffs.get(dataset_of(r.raw), datetime.min.replace(tzinfo=UTC))
        hours = sorted(b for b in invalid if raw_cut <= b < old_h)
        if hours or new_h > old_h:
            lo, hi = (hours[0], hours[-1] + timedelta(hours=1)) if hours else (new_h, new_h)
            await conn.execute(
                f"DELETE FROM wfa.{r.name}_1h_mat WHERE bucket = ANY($1::timestamptz[])", hours
            )
            where = (
                f"({r.time} >= $2 AND {r.time} < $3) OR ({r.time} >= $4 AND {r.time} < $5 "
                f"AND date_bin('1 hour', {r.time}, {ORIGIN}) = ANY($1::timestamptz[]))"
            )
            await conn.execute(
                f"INSERT INTO wfa.{r.name}_1h_mat " + hourly_select(r, "date_bin", where),
                hours,
                old_h,
                new_h,
                lo,
                hi,
            )
            await conn.execute(
                "UPDATE wfa.watermarks SET watermark = $2 WHERE rollup = $1", f"{r.name}_1h", new_h
            )
        h_cut = cutoffs.get("rollups_1h", datetime.min.replace(tzinfo=UTC))
        days = sorted({day_floor(h) for h in hours if h_cut <= day_floor(h) < old_d})
        if days or new_d > old_d:
            lo_d, hi_d = (days[0], days[-1] + timedelta(days=1)) if days else (new_d, new_d)
            day_match = (
                f"(bucket >= $4 AND bucket < $5 "
                f"AND date_bin('1 day', bucket, {ORIGIN}) = ANY($1::timestamptz[]))"
            )
            await conn.execute(
                f"DELETE FROM wfa.{r.name}_1d_mat WHERE bucket = ANY($1::timestamptz[])", days
            )
            await conn.execute(
                f"INSERT INTO wfa.{r.name}_1d_mat "
                + daily_select(
                    r,
                    f"wfa.{r.name}_1h_mat",
                    "date_bin",
                    f"(bucket >= $2 AND bucket < $3) OR {day_match}",
                ),
                days,
                old_d,
                new_d,
                lo_d,
                hi_d,
            )
            await conn.execute(
                "UPDATE wfa.watermarks SET watermark = $2 WHERE rollup = $1", f"{r.name}_1d", new_d
            )
        await weekly.advance(
            conn, r, self.daily(r), new_d, [(d, d + timedelta(days=1)) for d in days]
        )
        result.watermarks[r.name] = new_h
        return len(hours) + len(days), new_h >= target
