"""The exporter process: pools, single-poller lock, scheduled poll, refresh and upkeep jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter import retention
from exporter.config import Config
from exporter.db import CONNECT_ERRORS, create_pool
from exporter.ingest import Ingestor, IngestSettings, PollResult
from exporter.leadership import Leadership, NotLeader
from exporter.reconcile import ReconcileResult, reconcile
from exporter.store import Backend, RefreshResult, make_backend
from exporter.store.migrate import migrate

log = logging.getLogger(__name__)

RETENTION_FIRST_RUN = timedelta(minutes=5)
"""Delay of the first scheduled retention run after start; then every retention.run_interval."""


def ingest_settings(cfg: Config) -> IngestSettings:
    """The ingest loop's view of the config."""
    s, e = cfg.source, cfg.exporter
    return IngestSettings(
        executions_table=s.executions_table,
        workflows_table=s.workflows_table,
        columns=s.columns.model_dump(),
        workflow_columns=s.workflow_columns.model_dump(),
        batch_size=e.batch_size,
        overlap=e.overlap,
        conversion_window=e.conversion_window,
        conversion_windows=dict(e.conversion_windows),
        valid_from=s.valid_from,
        valid_until=s.valid_until,
    )


def store_dsn(cfg: Config) -> str:
    """The store DSN, defaulting to the source's."""
    return cfg.store.dsn or cfg.source.dsn


def error_reason(exc: BaseException) -> str:
    """A stable label for a poll error."""
    if isinstance(exc, asyncpg.QueryCanceledError):
        return "statement_timeout"
    if isinstance(exc, (*CONNECT_ERRORS, asyncpg.InterfaceError, ConnectionError)):
        return "unreachable"
    if isinstance(exc, asyncpg.PostgresError):
        return "database_error"
    return "internal"


@dataclass(slots=True)
class ExporterState:
    """What the exporter knows about itself, for self-metrics and health."""

    started_at: float = field(default_factory=time.time)
    last_success: float | None = None
    last_result: PollResult | None = None
    last_refresh: RefreshResult | None = None
    errors: Counter = field(default_factory=Counter)
    rows: Counter = field(default_factory=Counter)
    newest_updated_at: datetime | None = None
    is_leader: bool = False
    store_up: bool = False


class ExporterService:
    """Owns the store and source pools and runs ingestion on a schedule."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.state = ExporterState()
        self.store: asyncpg.Pool | None = None
        self.source: asyncpg.Pool | None = None
        self.backend: Backend | None = None
        self.ingestor: Ingestor | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.leadership = Leadership(
            store_dsn(cfg),
            cfg.exporter.lock_id,
            self._leader_changed,
            cfg.store.statement_timeout,
        )
        self._epoch: int | None = None
        self._last_refresh = 0.0
        self._poll_lock = asyncio.Lock()
        self.listeners: list[Callable[[PollResult | None, BaseException | None], None]] = []

    async def open(self) -> None:
        """Connect (with bounded retries), pick the backend and migrate the schema."""
        st = self.cfg.store
        kw = {"retries": st.connect_retries, "retry_delay": st.connect_retry_delay}
        self.store = await create_pool(
            store_dsn(self.cfg),
            min_size=st.pool_min_size,
            max_size=st.pool_max_size,
            statement_timeout=st.statement_timeout,
            application_name="wfa-exporter",
            **kw,
        )
        self.source = await create_pool(
            self.cfg.source.dsn,
            min_size=1,
            max_size=2,
            statement_timeout=self.cfg.source.statement_timeout,
            application_name="wfa-exporter-source",
            **kw,
        )
        async with self.store.acquire() as conn:
            self.backend = await make_backend(
                conn, st.backend, st.partition_interval, st.premake_partitions
            )
            await migrate(conn, self.backend)
            await self.backend.maintain(conn, datetime.now(UTC))
        self.ingestor = Ingestor(ingest_settings(self.cfg), self.backend)
        self.state.store_up = True

    def _leader_changed(self, held: bool) -> None:
        self.state.is_leader = held

    async def _leader(self, wait: timedelta | None = None, take_over: bool = False) -> bool:
        """Hold the fenced poll lock; after a takeover, forget every cached store state."""
        assert self.ingestor
        if not await self.leadership.acquire(wait, take_over):
            return False
        if self.leadership.epoch != self._epoch:
            # Another replica may have written since this one last led: read it all again.
            self.ingestor.reset()
            self.ingestor.backend.reset()
            self._epoch = self.leadership.epoch
        return True

    async def poll_once(self, refresh: bool = True) -> PollResult | None:
        """One poll cycle (until caught up) and a rollup refresh; None on a standby replica."""
        async with self._poll_lock:
            return await self._poll(refresh)

    async def _poll(self, refresh: bool) -> PollResult | None:
        assert self.store and self.source and self.ingestor and self.backend
        try:
            if not await self._leader():
                return None
            async with contextlib.AsyncExitStack() as stack:
                st = await stack.enter_async_context(self.store.acquire())
                src = await stack.enter_async_context(self.source.acquire())
                lookup = None
                if self.cfg.store.pool_max_size > 1:
                    lookup = await stack.enter_async_context(self.store.acquire())
                result = await self.ingestor.poll(src, st, lookup, self.leadership)
                due = time.monotonic() - self._last_refresh
                every = self.cfg.exporter.refresh_interval.total_seconds()
                if refresh and (result.written or result.rejected or due >= every):
                    self.state.last_refresh = await self.backend.refresh(st)
                    self._last_refresh = time.monotonic()
        except NotLeader as exc:
            log.warning("poll stopped, this replica no longer leads: %s", exc)
            await self.leadership.release()
            return None
        except Exception as exc:
            reason = error_reason(exc)
            self.state.errors[reason] += 1
            self.state.store_up = reason != "unreachable"
            log.error("poll failed (%s): %s", reason, exc)
            await self.leadership.release()
            for cb in self.listeners:
                cb(None, exc)
            raise
        self.state.store_up = True
        self.state.last_success = time.time()
        self.state.last_result = result
        self.state.rows.update(result.rows)
        if result.newest is not None:
            self.state.newest_updated_at = max(
                result.newest, self.state.newest_updated_at or result.newest
            )
        for cb in self.listeners:
            cb(result, None)
        return result

    async def _poll_job(self) -> None:
        # Errors are counted and logged in poll_once; the schedule goes on.
        with contextlib.suppress(Exception):
            await self.poll_once()

    async def reconcile_once(
        self, wait: timedelta | None = None, take_over: bool = False
    ) -> ReconcileResult | None:
        """Compare source and store per (workflow, day) and re-ingest the days that differ;
        None when another replica holds the poll lock."""
        assert self.store and self.source and self.ingestor
        async with self._poll_lock:
            if not await self._leader(wait, take_over):
                return None
            try:
                async with self.store.acquire() as st, self.source.acquire() as src:
                    return await reconcile(self.cfg, self.ingestor, src, st, self.leadership)
            except NotLeader as exc:
                log.warning("reconcile stopped, this replica no longer leads: %s", exc)
                await self.leadership.release()
                return None

    async def _reconcile_job(self) -> None:
        try:
            result = await self.reconcile_once()
        except Exception as exc:
            log.error("reconcile failed: %s", exc)
            return
        if result is not None:
            log.info("reconcile: %s", result.summary())

    async def _maintain_job(self) -> None:
        assert self.store and self.backend
        try:
            async with self.store.acquire() as conn:
                await self.backend.maintain(conn, datetime.now(UTC))
        except Exception as exc:
            log.error("maintenance failed: %s", exc)

    async def _retention_job(self) -> None:
        assert self.store and self.backend
        try:
            async with self.store.acquire() as conn:
                await retention.run(
                    conn,
                    self.cfg,
                    self.backend,
                    dry_run=False,
                    trigger="scheduler",
                    actor="scheduler",
                )
        except retention.RetentionBusy:
            log.info("retention skipped: another run is in progress")
        except Exception as exc:
            log.error("retention failed: %s", exc)

    def start(self, scheduler: AsyncIOScheduler) -> None:
        """Add the exporter's jobs to `scheduler`."""
        self.scheduler = scheduler
        e = self.cfg.exporter
        now = datetime.now(UTC)
        scheduler.add_job(
            self._poll_job,
            "interval",
            seconds=e.poll_interval.total_seconds(),
            next_run_time=now,
            max_instances=1,
            coalesce=True,
            id="poll",
        )
        scheduler.add_job(
            self._maintain_job, "interval", hours=1, max_instances=1, coalesce=True, id="maintain"
        )
        scheduler.add_job(
            self._retention_job,
            "interval",
            seconds=self.cfg.retention.run_interval.total_seconds(),
            next_run_time=now + RETENTION_FIRST_RUN,
            max_instances=1,
            coalesce=True,
            id="retention",
        )
        if e.reconcile_interval is not None:
            every = e.reconcile_interval.total_seconds()
            scheduler.add_job(
                self._reconcile_job,
                "interval",
                seconds=every,
                next_run_time=now + e.reconcile_interval,
                max_instances=1,
                coalesce=True,
                id="reconcile",
            )

    async def close(self) -> None:
        """Give up the poll lock and close the pools."""
        await self.leadership.release()
        for pool in (self.source, self.store):
            if pool is not None:
                await pool.close()
