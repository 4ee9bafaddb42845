"""First import of a large history: the exporter's poll loop run to the end, with progress.

Backfill is `ExporterService.poll_once` without the rollup refresh, watched from the
side: the ingest cursor is committed with every batch, so progress is the number of
source rows at or below it, and an interrupted backfill resumes from it. Rollups are
refreshed once, at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import TextIO

import asyncpg

from exporter.config import Config
from exporter.db import connect
from exporter.ingest import PollResult
from exporter.service import ExporterService
from exporter.source.reader import quote_ident
from exporter.store.sqlfiles import named

log = logging.getLogger(__name__)
Q = named("ingest.sql")
BAR_WIDTH = 28
CLOSE_GRACE_S = 10.0
"""How long closing waits for in-flight store work before terminating the connections."""


class BackfillLocked(RuntimeError):
    """Another exporter holds the poll lock."""


@dataclass(slots=True)
class Progress:
    """Rows of the source at or below the ingest cursor, out of all rows."""

    total: int
    done: int
    started_done: int
    started: float = field(default_factory=time.monotonic)

    @property
    def elapsed(self) -> float:
        """Seconds since the backfill started."""
        return time.monotonic() - self.started

    @property
    def rate(self) -> float:
        """Rows per second ingested by this run."""
        return (self.done - self.started_done) / max(self.elapsed, 1e-9)

    @property
    def eta(self) -> float | None:
        """Seconds left at the current rate, None before anything moved."""
        if self.rate <= 0:
            return None
        return max(0, self.total - self.done) / self.rate

    @property
    def fraction(self) -> float:
        """Share done, 0..1."""
        return 1.0 if self.total <= 0 else min(1.0, self.done / self.total)


def duration_text(seconds: float | None) -> str:
    """"1h02m", "3m05s", "42s", or "?" when unknown."""
    if seconds is None:
        return "?"
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s}s"


def progress_line(p: Progress, bar: bool) -> str:
    """One progress line: rows, share, rate and ETA (with a bar for terminals)."""
    text = (
        f"{p.done:,}/{p.total:,} rows {p.fraction * 100:5.1f}%  {p.rate:,.0f} rows/s  "
        f"ETA {duration_text(p.eta)}"
    )
    if not bar:
        return f"backfill: {text}"
    filled = round(p.fraction * BAR_WIDTH)
    return f"[{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {text}"


class Reporter:
    """Renders progress: a carriage-return line on a terminal, plain lines otherwise."""

    def __init__(self, out: TextIO, tty: bool, interval: float) -> None:
        self.out = out
        self.tty = tty
        self.interval = interval
        self._last = 0.0
        self._width = 0

    def update(self, p: Progress, force: bool = False) -> None:
        """Show the progress (plain lines at most once per interval unless forced)."""
        now = time.monotonic()
        if self.tty:
            line = progress_line(p, bar=True)
            pad = " " * max(0, self._width - len(line))
            self._width = len(line)
            self.out.write(f"\r{line}{pad}")
            self.out.flush()
            return
        if force or now - self._last >= self.interval:
            self._last = now
            print(progress_line(p, bar=False), file=self.out, flush=True)

    def finish(self) -> None:
        """End the carriage-return line."""
        if self.tty and self._width:
            self.out.write("\n")
            self.out.flush()
            self._width = 0


@dataclass(slots=True)
class BackfillResult:
    """What a backfill run did."""

    complete: bool
    progress: Progress
    poll: PollResult | None = None
    refresh_seconds: float = 0.0


class _Counter:
    """Counts source rows by their updated_at, incrementally as the cursor moves."""

    def __init__(self, cfg: Config) -> None:
        table = quote_ident(cfg.source.executions_table)
        upd = quote_ident(cfg.source.columns.updated_at)
        self.all_sql = f"SELECT count(*) FROM {table}"
        self.upto_sql = f"SELECT count(*) FROM {table} WHERE {upd} <= $1"
        self.between_sql = f"SELECT count(*) FROM {table} WHERE {upd} > $1 AND {upd} <= $2"
        self.mark: datetime | None = None

    async def start(self, src: asyncpg.Connection, cursor: datetime | None) -> tuple[int, int]:
        """(all rows, rows at or below the cursor)."""
        total = await src.fetchval(self.all_sql)
        self.mark = cursor
        done = 0 if cursor is None else await src.fetchval(self.upto_sql, cursor)
        return total, done

    async def moved(self, src: asyncpg.Connection, cursor: datetime | None) -> int:
        """Rows passed since the last call."""
        if cursor is None or (self.mark is not None and cursor <= self.mark):
            return 0
        if self.mark is None:
            n = await src.fetchval(self.upto_sql, cursor)
        else:
            n = await src.fetchval(self.between_sql, self.mark, cursor)
        self.mark = cursor
        return n


async def _cursor(svc: ExporterService) -> datetime | None:
    assert svc.store
    async with svc.store.acquire() as st:
        row = await st.fetchrow(Q["get_cursor"], "executions")
    return None if row is None else row["updated_at"]


async def backfill(
    cfg: Config,
    *,
    stop: asyncio.Event | None = None,
    out: TextIO | None = None,
    tty: bool | None = None,
    interval: float = 10.0,
    refresh_timeout: timedelta = timedelta(hours=2),
) -> BackfillResult:
    """Ingest the whole source, showing progress; stops early (resumable) when `stop` is set."""
    out = out or sys.stderr
    tty = out.isatty() if tty is None else tty
    stop = stop or asyncio.Event()
    reporter = Reporter(out, tty, interval)
    svc = ExporterService(cfg)
    await svc.open()
    try:
        assert svc.source and svc.store and svc.backend
        counter = _Counter(cfg)
        async with svc.source.acquire() as src:
            total, done = await counter.start(src, await _cursor(svc))
        progress = Progress(total=total, done=done, started_done=done)
        if done:
            print(f"backfill: resuming at {done:,} of {total:,} rows", file=out, flush=True)
        reporter.update(progress, force=True)
        task = asyncio.create_task(svc.poll_once(refresh=False), name="wfa-backfill-poll")
        stopping = asyncio.create_task(stop.wait())
        tick = 0.5 if tty else min(interval, 1.0)
        try:
            while not task.done():
                await asyncio.wait({task, stopping}, timeout=tick, return_when="FIRST_COMPLETED")
                if stop.is_set() and not task.done():
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    break
                async with svc.source.acquire() as src:
                    progress.done += await counter.moved(src, await _cursor(svc))
                progress.total = max(progress.total, progress.done)
                reporter.update(progress)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.cancelled():
            reporter.update(progress, force=True)
            reporter.finish()
            return BackfillResult(False, progress)
        result = task.result()
        if result is None:
            raise BackfillLocked("another exporter holds the poll lock")
        async with svc.source.acquire() as src:
            total = await src.fetchval(counter.all_sql)
            progress.done += await counter.moved(src, await _cursor(svc))
        progress.done = progress.total = max(progress.done, total)
        reporter.update(progress, force=True)
        reporter.finish()
        began = time.monotonic()
        # The first refresh after a large import covers every bucket at once: it gets its own
        # connection with a generous timeout instead of the pool's per-statement one.
        conn = await connect(cfg.store_dsn, statement_timeout=refresh_timeout)
        try:
            await svc.refresh_rollups(conn)
        finally:
            await conn.close()
        return BackfillResult(True, progress, result, time.monotonic() - began)
    finally:
        await svc.close(CLOSE_GRACE_S)
