"""TimescaleDB backend: hypertables, hierarchical real-time continuous aggregates, drop_chunks."""

from __future__ import annotations

import logging
from collections.abc import Iterable
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
    MAX_WINDOWS,
    day_floor,
    hour_floor,
    merge_windows,
    partition_ceil,
)
from exporter.store.rollups import (
    ROLLUPS,
    ReadSource,
    Rollup,
    daily_select,
    hourly_select,
)

log = logging.getLogger(__name__)

HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
_LOW = datetime(1, 1, 1, tzinfo=UTC)
_WATERMARKS = """
SELECT view, CASE WHEN wm < '1900-01-01 00:00:00+00' THEN NULL ELSE wm END AS wm
  FROM (SELECT format('%I.%I', user_view_schema, user_view_name) AS view,
               _timescaledb_functions.to_timestamp(
                   _timescaledb_functions.cagg_watermark(mat_hypertable_id)) AS wm
          FROM _timescaledb_catalog.continuous_agg
         WHERE user_view_schema = 'wfa') w"""
_DROP_BUCKET_INDEX = """
DO $$
DECLARE idx regclass;
BEGIN
    FOR idx IN
        SELECT i.indexrelid::regclass
          FROM timescaledb_information.continuous_aggregates c
          JOIN pg_index i ON i.indrelid = format('%I.%I', c.materialization_hypertable_schema,
                                                 c.materialization_hypertable_name)::regclass
         WHERE c.view_schema = 'wfa' AND c.view_name = '{view}' AND i.indnatts = 1
    LOOP
        EXECUTE format('DROP INDEX %s', idx);
    END LOOP;
END
$$"""
_DROP_INDEX = """
DO $$
DECLARE idx regclass;
BEGIN
    SELECT to_regclass(format('%I.%I', c.materialization_hypertable_schema, '{index}')) INTO idx
      FROM timescaledb_information.continuous_aggregates c
     WHERE c.view_schema = 'wfa' AND c.view_name = '{view}';
    IF idx IS NOT NULL THEN
        EXECUTE format('DROP INDEX %s', idx);
    END IF;
END
$$"""
_CHUNKS = """
SELECT format('%I.%I', chunk_schema, chunk_name) AS chunk, range_start, range_end, is_compressed
  FROM timescaledb_information.chunks
 WHERE hypertable_schema = 'wfa' AND hypertable_name = $1 AND range_end <= $2
 ORDER BY range_start"""
# Chunks that may still change: an execution enrolled in them is active, or an attempt runs.
# Events are written when they happen, so old event chunks are settled.
_BUSY: dict[str, str | None] = {
    "executions": "SELECT EXISTS (SELECT 1 FROM wfa.executions WHERE status = 'active' "
    "AND enrolled_at >= $1 AND enrolled_at < $2)",
    "execution_steps": "SELECT EXISTS (SELECT 1 FROM wfa.executions WHERE status = 'active' "
    "AND enrolled_at >= $1 AND enrolled_at < $2)",
    "step_runs": "SELECT EXISTS (SELECT 1 FROM wfa.step_runs WHERE status = 'running' "
    "AND entered_at >= $1 AND entered_at < $2)",
    "workflow_events": None,
}
_SEGMENT_BY = "workflow_id"
# Real-time caggs answer for any time themselves: reads take them whole, raw rows only at the
# ragged edges of a range. Read from a PL/pgSQL function, their watermark is a constant in
# the plan (an inlined SQL function would leave it a per-row call), chunks are excluded when
# the cached plan starts, and TimescaleDB invalidates that plan when a refresh moves it.
READ_SOURCE = ReadSource(hourly="wfa.{name}_1h", daily="wfa.{name}_1d", watermarks=None)


def _interval(d: timedelta) -> str:
    return f"INTERVAL '{int(d.total_seconds())} seconds'"


def _cagg_ddl(r: Rollup, chunk_interval: timedelta) -> list[str]:
    opts = (
        "timescaledb.continuous, timescaledb.materialized_only = false, "
        "timescaledb.create_group_indexes = false"
    )
    out = []
    # Hourly chunks as long as the raw ones, so hourly retention is as fine-grained.
    for level, select, chunk in (
        ("1h", hourly_select(r, "time_bucket"), chunk_interval),
        ("1d", daily_select(r, r.relation("1h"), "time_bucket"), 10 * chunk_interval),
    ):
        rel = r.relation(level)
        out += [
            f"CREATE MATERIALIZED VIEW IF NOT EXISTS {rel} WITH ({opts}) AS {select} WITH NO DATA",
            f"SELECT set_chunk_time_interval('{rel}', {_interval(chunk)})",
            f"CREATE INDEX IF NOT EXISTS {r.name}_{level}_workflow_idx "
            f"ON {rel} (workflow_id, bucket)",
        ]
    # Reads of the daily level span months for a few workflows; a generic plan would pick the
    # default bucket-only index and filter every workflow's rows. Refreshes of a daily cagg
    # touch few rows, so it goes without one.
    out.append(_DROP_BUCKET_INDEX.format(view=f"{r.name}_1d"))
    return out


def _clip(
    windows: Iterable[tuple[datetime, datetime]], lo: datetime, hi: datetime
) -> list[tuple[datetime, datetime]]:
    return [(max(a, lo), min(b, hi)) for a, b in windows if max(a, lo) < min(b, hi)]


def _read_index_ddl(r: Rollup) -> list[str]:
    """Covering (workflow_id, bucket) indexes on both aggregates, replacing the plain ones, so
    reads of a few workflows scan only the index."""
    cols = r.covered
    out = []
    for level in ("1h", "1d"):
        out += [
            f"CREATE INDEX IF NOT EXISTS {r.name}_{level}_read_idx ON {r.relation(level)} "
            f"(workflow_id, bucket) INCLUDE ({cols})",
            _DROP_INDEX.format(view=f"{r.name}_{level}", index=f"{r.name}_{level}_workflow_idx"),
        ]
    return out


class TimescaleBackend(Backend):
    """Hypertables and continuous aggregates; refresh, retention and compression driven here."""

    name = "timescaledb"
    read_source = READ_SOURCE

    def __init__(
        self,
        chunk_interval: timedelta = timedelta(days=7),
        use_policies: bool = False,
        compress_after: timedelta | None = None,
        max_windows: int = MAX_WINDOWS,
        policy_lookback: timedelta = timedelta(days=30),
    ):
        self.chunk_interval = chunk_interval
        self.use_policies = use_policies
        self.compress_after = compress_after
        self.max_windows = max_windows
        self.policy_lookback = policy_lookback

    @property
    def policy_reach(self) -> timedelta | None:
        """With policies, TimescaleDB refreshes `policy_lookback` back on its own schedule."""
        return self.policy_lookback if self.use_policies else None

    # schema ---------------------------------------------------------------------------------

    def migration(self, version: int) -> list[str]:
        """Statements of `version` for TimescaleDB (all of them run inside one transaction)."""
        if version == 7:
            return [ddl for r in ROLLUPS for ddl in _read_index_ddl(r)]
        if version != 1:
            return []
        out = raw_tables_ddl(partitioned=False)
        for table, column in RAW_TABLES.items():
            out.append(f"CREATE INDEX IF NOT EXISTS {table}_time_idx ON wfa.{table} ({column})")
        for table, column in RAW_TABLES.items():
            out.append(
                f"SELECT create_hypertable('wfa.{table}', by_range('{column}', "
                f"{_interval(self.chunk_interval)}), create_default_indexes => false, "
                "if_not_exists => true)"
            )
        for r in ROLLUPS:
            out += _cagg_ddl(r, self.chunk_interval)
        return out

    async def prepare_write(
        self, conn: asyncpg.Connection, spans: dict[str, tuple[datetime, datetime]]
    ) -> None:
        """Nothing to do: hypertables create their chunks on insert."""

    # refresh --------------------------------------------------------------------------------

    async def watermarks(self, conn: asyncpg.Connection) -> dict[str, datetime | None]:
        """Each cagg's watermark: buckets below it are read from its materialization."""
        return {r["view"]: r["wm"] for r in await conn.fetch(_WATERMARKS)}

    # storage, as retention sees it ----------------------------------------------------------

    async def _materializations(self, conn: asyncpg.Connection, level: str) -> list[Any]:
        mats = {r["view"]: r for r in await conn.fetch(STORAGE["ts_materializations"])}
        return [mats[r.relation(level)] for r in ROLLUPS if r.relation(level) in mats]

    async def _rollup_tables(self, conn: asyncpg.Connection, level: str) -> list[tuple[str, str]]:
        return [
            (f'"{m["schema"]}"."{m["name"]}"', "bucket")
            for m in await self._materializations(conn, level)
        ]

    async def pieces(self, conn: asyncpg.Connection, dataset: str) -> list[dict[str, Any]]:
        """Chunks of the raw hypertables, or of the caggs' materializations."""
        if dataset in RETENTION_RAW:
            rows = await conn.fetch(STORAGE["ts_chunks"], "wfa", list(RETENTION_RAW[dataset]))
            return [dict(r) for r in rows]
        found = await self._materializations(conn, dataset.removeprefix("rollups_"))
        out: list[dict[str, Any]] = []
        for schema in {m["schema"] for m in found}:
            names = [m["name"] for m in found if m["schema"] == schema]
            out += [dict(r) for r in await conn.fetch(STORAGE["ts_chunks"], schema, names)]
        return out

    async def retention_settings(self, conn: asyncpg.Connection) -> None:
        """Rows leave only after the aggregates hold them: record no cagg invalidation."""
        await conn.execute("SET LOCAL timescaledb.skip_cagg_invalidation = on")

    async def refresh(self, conn: asyncpg.Connection, now: datetime | None = None) -> RefreshResult:
        """Refresh the 1h caggs over the invalidated windows and up to `now`, then the 1d caggs."""
        if conn.is_in_transaction():
            raise RuntimeError("refresh_continuous_aggregate cannot run inside a transaction")
        now = now or datetime.now(UTC)
        result = RefreshResult()
        await conn.execute("SELECT pg_advisory_lock($1)", locks.REFRESH)
        try:
            cutoffs = await retention_cutoffs(conn)
            marks = await self.watermarks(conn)
            days: dict[str, list[tuple[datetime, datetime]]] = {}
            for r in ROLLUPS:
                # Read, refresh, then forget: a crash in between only repeats the refresh.
                hours = [
                    row["bucket"]
                    for row in await conn.fetch(
                        "SELECT bucket FROM wfa.invalidations WHERE rollup = $1", r.name
                    )
                ]
                if self.use_policies:
                    # The policies refresh on their own: the weeks within their reach are
                    # summed again each time.
                    wm_d = marks.get(r.relation("1d"))
                    result.buckets[r.name] = 0
                    days[r.name] = [(wm_d - self.policy_lookback, wm_d)] if wm_d else []
                else:
                    result.buckets[r.name], days[r.name] = await self._refresh_one(
                        conn, r, hours, hour_floor(now), marks, cutoffs
                    )
                await conn.execute(
                    "DELETE FROM wfa.invalidations WHERE rollup = $1 "
                    "AND bucket = ANY($2::timestamptz[])",
                    r.name,
                    hours,
                )
            marks = await self.watermarks(conn)
            for r in ROLLUPS:
                async with conn.transaction():
                    settled = marks.get(r.relation("1d")) or _LOW
                    await weekly.advance(conn, r, self.daily(r), settled, days[r.name])
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", locks.REFRESH)
        for r in ROLLUPS:
            wm = marks.get(r.relation("1h"))
            if wm is not None:
                result.watermarks[r.name] = wm
        return result

    async def _refresh_one(
        self,
        conn: asyncpg.Connection,
        r: Rollup,
        hours: list[datetime],
        new_h: datetime,
        marks: dict[str, datetime | None],
        cutoffs: dict[str, datetime],
    ) -> tuple[int, list[tuple[datetime, datetime]]]:
        """Refresh one rollup's aggregates; the buckets recomputed and the daily windows."""
        raw_floor = cutoffs.get(dataset_of(r.raw), _LOW)
        wm_h = marks.get(r.relation("1h")) or _LOW
        stale = sorted(h for h in set(hours) if h < wm_h)
        hourly = [(h, h + HOUR) for h in stale]
        if wm_h < new_h:
            if wm_h == _LOW:
                hourly += await self._initial_windows(conn, r, new_h)
            else:
                hourly.append((wm_h, new_h))
        windows_h = merge_windows(_clip(hourly, raw_floor, new_h), self.max_windows)
        for lo, hi in windows_h:
            await self._refresh_window(conn, r.relation("1h"), lo, hi)

        new_d = day_floor(new_h)
        cut_h = cutoffs.get("rollups_1h")
        hour_floor_1d = partition_ceil(cut_h, DAY) if cut_h is not None else _LOW
        wm_d = marks.get(r.relation("1d")) or _LOW
        daily = [(day_floor(lo), partition_ceil(hi, DAY)) for lo, hi in windows_h]
        if wm_d < new_d:
            first = wm_d if wm_d > _LOW else day_floor(windows_h[0][0]) if windows_h else new_d
            daily.append((first, new_d))
        windows_d = merge_windows(_clip(daily, hour_floor_1d, new_d), self.max_windows)
        for lo, hi in windows_d:
            await self._refresh_window(conn, r.relation("1d"), lo, hi)
        return len(stale) + len({day_floor(h) for h in stale if h < wm_d}), windows_d

    async def _initial_windows(
        self, conn: asyncpg.Connection, r: Rollup, new_h: datetime
    ) -> list[tuple[datetime, datetime]]:
        """First refresh: the raw table's span cut into chunk-sized windows."""
        first = await conn.fetchval(f"SELECT min({r.time}) FROM {r.raw}")
        if first is None or hour_floor(first) >= new_h:
            return []
        out, lo = [], hour_floor(first)
        while lo < new_h:
            hi = min(lo + max(self.chunk_interval, HOUR), new_h)
            out.append((lo, hi))
            lo = hi
        return out

    async def _refresh_window(
        self, conn: asyncpg.Connection, cagg: str, lo: datetime, hi: datetime
    ) -> None:
        """One refresh call over [lo, hi), long windows in pieces of a bounded size."""
        step = max(self.chunk_interval, DAY) * (10 if cagg.endswith("_1d") else 1)
        while lo < hi:
            end = min(lo + step, hi)
            await conn.execute(
                "CALL refresh_continuous_aggregate($1::regclass, $2::timestamptz, $3::timestamptz)",
                cagg,
                lo,
                end,
            )
            lo = end

    # upkeep ---------------------------------------------------------------------------------

    async def maintain(self, conn: asyncpg.Connection, now: datetime) -> None:
        """Keep policies in line with the config and compress chunks old enough to be final."""
        await self._sync_policies(conn)
        if self.compress_after is not None:
            await self._enable_compression(conn)
            if not self.use_policies:
                await self.compress(conn, now)

    async def _sync_policies(self, conn: asyncpg.Connection) -> None:
        for r in ROLLUPS:
            for level, width in (("1h", HOUR), ("1d", DAY)):
                rel = r.relation(level)
                if self.use_policies:
                    await conn.execute(
                        "SELECT add_continuous_aggregate_policy($1::regclass, "
                        "start_offset => $2::interval, end_offset => $3::interval, "
                        "schedule_interval => $4::interval, if_not_exists => true)",
                        rel,
                        self.policy_lookback,
                        width,
                        width if level == "1d" else timedelta(minutes=5),
                    )
                else:
                    await conn.execute(
                        "SELECT remove_continuous_aggregate_policy($1::regclass, "
                        "if_exists => true)",
                        rel,
                    )
        if self.use_policies and self.compress_after is not None:
            await self._enable_compression(conn)
        for table in RAW_TABLES:
            if self.use_policies and self.compress_after is not None:
                await conn.execute(
                    "SELECT add_compression_policy($1::regclass, compress_after => $2::interval, "
                    "if_not_exists => true)",
                    f"wfa.{table}",
                    self.compress_after,
                )
            else:
                await conn.execute(
                    "SELECT remove_compression_policy($1::regclass, if_exists => true)",
                    f"wfa.{table}",
                )

    async def _enable_compression(self, conn: asyncpg.Connection) -> None:
        enabled = {
            r["hypertable_name"]
            for r in await conn.fetch(
                "SELECT hypertable_name FROM timescaledb_information.hypertables "
                "WHERE hypertable_schema = 'wfa' AND compression_enabled"
            )
        }
        for table, column in RAW_TABLES.items():
            if table not in enabled:
                await conn.execute(
                    f"ALTER TABLE wfa.{table} SET (timescaledb.compress, "
                    f"timescaledb.compress_segmentby = '{_SEGMENT_BY}', "
                    f"timescaledb.compress_orderby = '{column}')"
                )

    async def compress(self, conn: asyncpg.Connection, now: datetime) -> list[str]:
        """Compress raw chunks that ended `compress_after` ago and hold nothing still changing."""
        if self.compress_after is None:
            return []
        done = []
        for table in RAW_TABLES:
            for c in await conn.fetch(_CHUNKS, table, now - self.compress_after):
                if c["is_compressed"]:
                    continue
                busy = _BUSY[table]
                if busy and await conn.fetchval(busy, c["range_start"], c["range_end"]):
                    continue
                await conn.execute("SELECT compress_chunk($1::regclass)", c["chunk"])
                done.append(c["chunk"])
        return done

    # retention ------------------------------------------------------------------------------

    async def drop_before(
        self, conn: asyncpg.Connection, dataset: str, older_than: datetime
    ) -> list[str]:
        """drop_chunks older than the cutoff, held at what the next level has rolled up; names."""
        relations = _relations(dataset)
        marks = await self.watermarks(conn)
        for r in ROLLUPS:
            # An aggregate with nothing materialized protects nothing when its source is empty.
            if marks.get(r.relation("1h")) is None and not await conn.fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {r.raw})"
            ):
                marks[r.relation("1h")] = marks[r.relation("1d")] = older_than
        safe = _safe_cutoff(dataset, marks)
        if safe is None:
            log.warning("retention of %s skipped: nothing is rolled up from it yet", dataset)
            return []
        if older_than > safe:
            log.warning(
                "retention of %s held at %s, the aggregates above it end there",
                dataset,
                safe.isoformat(),
            )
            older_than = safe
        dropped: list[str] = []
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", locks.REFRESH)
            # The dropped range must stay in the aggregates: record no invalidation for it.
            await conn.execute("SET LOCAL timescaledb.skip_cagg_invalidation = on")
            for rel in relations:
                rows = await conn.fetch(
                    "SELECT drop_chunks($1::regclass, older_than => $2::timestamptz)::text",
                    rel,
                    older_than,
                )
                dropped += [row[0] for row in rows]
            if dataset == "rollups_1d":
                await self.resum_weeks(conn, older_than, "true")
            await record_cutoff(conn, dataset, older_than)
        return dropped


def _relations(dataset: str) -> list[str]:
    """The hypertables or caggs holding a retention dataset."""
    if dataset in RETENTION_RAW:
        return [f"wfa.{t}" for t in RETENTION_RAW[dataset]]
    if dataset in ("rollups_1h", "rollups_1d"):
        return [r.relation(dataset[-2:]) for r in ROLLUPS]
    raise RetentionError(f"unknown retention dataset {dataset!r}")


def _safe_cutoff(dataset: str, marks: dict[str, datetime | None]) -> datetime | None:
    """Latest cutoff that drops only data already materialized in the next level up."""
    if dataset == "rollups_1d":
        return datetime.max.replace(tzinfo=UTC)
    if dataset == "rollups_1h":
        above = [marks.get(r.relation("1d")) for r in ROLLUPS]
    else:
        above = [marks.get(r.relation("1h")) for r in ROLLUPS if dataset_of(r.raw) == dataset]
    if any(m is None for m in above):
        return None
    return min(m for m in above if m is not None)
