"""Export jobs: stored in the store, run as tracked tasks, resumed or failed after a restart.

Each process running jobs holds an advisory lock keyed by a random owner number on a
connection of its own. A job whose owner holds no such lock any more belonged to a process
that stopped or crashed: the next process to look adopts it and runs it again from scratch
(up to MAX_ATTEMPTS starts), or marks it failed with the reason. Files are written under
the configured directory as `<job uuid>.<ext>` (a `.part` name until complete).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import re
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from exporter import queries
from exporter.config.schema import ExportsConfig
from exporter.db import Backoff, connect, describe, is_unreachable
from exporter.exports.datasets import ExportSpec
from exporter.exports.formats import FORMATS
from exporter.exports.render import Progress, render
from exporter.store import locks
from exporter.store.sqlfiles import named

log = logging.getLogger(__name__)

Q = named("exports.sql")
MAX_ATTEMPTS = 3
"""Starts of one job before a restart during it marks it failed."""
HOUSEKEEPING_S = 30.0
"""Seconds between adopting orphaned jobs and removing expired files."""
STRAY_PART_AGE = timedelta(hours=1)
_FILE_RE = re.compile(r"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})\.([a-z]+)")


class TooManyJobs(Exception):
    """The tenant already has its maximum of unfinished jobs."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"at most {limit} unfinished export jobs per tenant")
        self.limit = limit


@dataclass(frozen=True, slots=True)
class JobSettings:
    """Knobs of the job runner that are not in the config file (tests shorten them)."""

    housekeeping_s: float = HOUSEKEEPING_S
    max_attempts: int = MAX_ATTEMPTS


def file_name(job_id: uuid.UUID, fmt: str) -> str:
    """The server-chosen file name of a job."""
    return f"{job_id}.{FORMATS[fmt][1]}"


class ExportJobs:
    """Submits, runs, adopts and cleans up export jobs of one process."""

    def __init__(
        self,
        cfg: ExportsConfig,
        pool: asyncpg.Pool,
        dsn: str,
        settings: JobSettings | None = None,
        on_change: Callable[[uuid.UUID], None] | None = None,
    ) -> None:
        self.cfg = cfg
        self.pool = pool
        self.dsn = dsn
        self.settings = settings or JobSettings()
        self.directory = Path(cfg.directory)
        self.owner = secrets.randbelow(2**31 - 2) + 1
        self.on_change = on_change
        self._lock_conn: asyncpg.Connection | None = None
        self._tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
        self._housekeeper: asyncio.Task[None] | None = None
        self._closing = False

    # lifecycle ------------------------------------------------------------------------------

    async def start(self) -> list[uuid.UUID]:
        """Take the owner lock, adopt orphaned jobs, start housekeeping; the jobs resumed.

        Neither a store that is down nor an unusable directory stops the API from starting:
        housekeeping adopts later, and jobs fail with the directory's reason.
        """
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            log.error("export directory %s is not usable: %s", self.directory, _reason(exc))
        try:
            resumed = await self.adopt()
        except asyncpg.UndefinedTableError:
            log.warning("export jobs are not in the store yet: run `wfa migrate`")
            resumed = []
        except Exception as exc:
            if not is_unreachable(exc):
                raise
            log.warning("export jobs: the store is not reachable yet; adopting later")
            resumed = []
        self._housekeeper = asyncio.create_task(self._housekeeping(), name="export-housekeeping")
        return resumed

    async def _ensure_lock(self) -> None:
        if self._lock_conn is not None and not self._lock_conn.is_closed():
            return
        conn = await connect(self.dsn, application_name="wfa-export-owner")
        await conn.execute("SELECT pg_advisory_lock($1, $2)", locks.EXPORT_OWNERS, self.owner)
        self._lock_conn = conn

    async def close(self, grace: float) -> None:
        """Stop housekeeping, interrupt running jobs (they resume on a later start), unlock."""
        self._closing = True
        if self._housekeeper is not None:
            self._housekeeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeper
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace)
            if pending:
                log.warning("%d export jobs did not stop within %.0f s", len(pending), grace)
        if self._lock_conn is not None:
            with contextlib.suppress(Exception):
                await self._lock_conn.close(timeout=grace)
            self._lock_conn = None

    @property
    def running(self) -> int:
        """Jobs this process is running now."""
        return len(self._tasks)

    # submit and read ------------------------------------------------------------------------

    async def submit(self, spec: ExportSpec, requested_by: str) -> asyncpg.Record:
        """Store a new job for `spec` and start it; TooManyJobs past the tenant's limit."""
        job_id = uuid.uuid4()
        await self._ensure_lock()  # a job is only stored while its owner lock is held
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute(Q["job_lock_tenant"], locks.EXPORT_OWNERS, spec.tenant)
            active = await conn.fetchval(Q["job_active_count"], spec.tenant)
            if active >= self.cfg.max_concurrent_per_tenant:
                raise TooManyJobs(self.cfg.max_concurrent_per_tenant)
            job = await conn.fetchrow(
                Q["job_insert"],
                job_id,
                spec.tenant,
                spec.workflow_id,
                spec.dataset,
                spec.format,
                json.dumps(spec.params()),
                requested_by,
                self.owner,
                self.cfg.max_age,
            )
        self._spawn(job_id, spec)
        return job

    async def get(self, tenant: str, job_id: uuid.UUID) -> asyncpg.Record | None:
        """The job if it belongs to `tenant`."""
        async with self.pool.acquire() as conn:
            return await conn.fetchrow(Q["job_get"], job_id, tenant)

    async def page(
        self,
        tenant: str,
        created_before: datetime | None,
        job_before: uuid.UUID | None,
        limit: int,
    ) -> list[asyncpg.Record]:
        """Up to `limit` jobs of `tenant`, newest first, after the job (created, id) given."""
        async with self.pool.acquire() as conn:
            return await conn.fetch(Q["job_page"], tenant, created_before, job_before, limit)

    def path(self, job: Any) -> Path:
        """Where the finished file of a job is."""
        return self.directory / file_name(job["job_id"], job["format"])

    async def wait(self, job_id: uuid.UUID, timeout: float) -> None:
        """Wait until this process's task of a job ends (for tests and benchmarks)."""
        task = self._tasks.get(job_id)
        if task is not None:
            await asyncio.wait_for(asyncio.shield(task), timeout)

    # running --------------------------------------------------------------------------------

    def _spawn(self, job_id: uuid.UUID, spec: ExportSpec) -> None:
        task = asyncio.create_task(self._run(job_id, spec), name=f"export-{job_id}")
        self._tasks[job_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(job_id, None))

    async def _run(self, job_id: uuid.UUID, spec: ExportSpec) -> None:
        final = self.directory / file_name(job_id, spec.format)
        part = final.with_name(f"{final.name}.{self.owner}.part")
        progress = Progress()
        try:
            for stale in self.directory.glob(f"{final.name}.*.part"):
                _discard(stale)  # left by an owner that died: this run replaces it
            async with self.pool.acquire() as conn:
                wf = await queries.get_workflow(conn, spec.tenant, spec.workflow_id)
                if wf is not None:
                    chunks = render(conn, wf, spec, progress, datetime.now(UTC))
                    await _write_file(conn, chunks, part)
            if wf is None:
                await self._finish(job_id, "the workflow no longer exists")
                return
            os.replace(part, final)
            async with self.pool.acquire() as conn:
                done = await conn.fetchval(
                    Q["job_succeeded"],
                    job_id,
                    self.owner,
                    progress.rows,
                    progress.bytes,
                    self.cfg.max_age,
                )
            if done is None:
                log.warning("export %s was taken over by another process", job_id)
            self._changed(job_id)
        except asyncio.CancelledError:
            _discard(part)
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2.0), self.pool.acquire() as conn:
                    await conn.execute(
                        Q["job_release"], job_id, self.owner, "interrupted by a shutdown"
                    )
            raise
        except OSError as exc:
            _discard(part)
            if _raised_by_files(exc):
                reason = _file_reason(exc)
                log.error("export %s failed in %s: %s", job_id, self.directory, reason)
                await self._finish(job_id, reason)
            else:
                log.warning("export %s failed: %s", job_id, _reason(exc))
                await self._finish(job_id, f"export failed: {_reason(exc)}")
        except Exception as exc:
            _discard(part)
            if is_unreachable(exc) or isinstance(exc, asyncpg.PostgresError):
                log.warning("export %s failed: %s", job_id, _reason(exc))
            else:
                log.exception("export %s failed", job_id)
            await self._finish(job_id, f"export failed: {_reason(exc)}")

    async def _finish(self, job_id: uuid.UUID, error: str) -> None:
        """Record a job's failure, retrying while the store is unreachable (the job must not
        stay `running`, holding a slot of the tenant's limit)."""
        backoff = Backoff(1.0, 30.0)
        while True:
            try:
                async with self.pool.acquire() as conn:
                    await conn.execute(Q["job_failed"], job_id, self.owner, error)
                break
            except Exception as exc:
                if self._closing or not is_unreachable(exc):
                    log.error("could not record the failure of export %s: %s", job_id, exc)
                    break
                await asyncio.sleep(backoff.next_delay())
        self._changed(job_id)

    def _changed(self, job_id: uuid.UUID) -> None:
        if self.on_change is not None:
            self.on_change(job_id)

    # restart handling and cleanup -----------------------------------------------------------

    async def adopt(self) -> list[uuid.UUID]:
        """Resume unfinished jobs no live process owns, or fail them with the reason."""
        if self._closing:
            return []
        await self._ensure_lock()
        resumed: list[tuple[uuid.UUID, ExportSpec]] = []
        failed: list[uuid.UUID] = []
        now = datetime.now(UTC)
        async with self.pool.acquire() as conn, conn.transaction():
            for row in await conn.fetch(Q["job_orphans"], locks.EXPORT_OWNERS, self.owner):
                job_id = row["job_id"]
                if job_id in self._tasks:
                    continue
                if row["attempts"] >= self.settings.max_attempts:
                    reason = (
                        f"interrupted {row['attempts']} times by restarts; not tried again"
                    )
                elif row["expires_at"] <= now:
                    reason = "interrupted by a restart and expired before it could resume"
                else:
                    job = await conn.fetchrow(Q["job_adopt"], job_id, self.owner)
                    resumed.append((job_id, ExportSpec.from_job(job, json.loads(job["params"]))))
                    continue
                await conn.execute(Q["job_give_up"], job_id, reason)
                failed.append(job_id)
        for job_id, spec in resumed:
            log.info("resuming export %s (started again from scratch)", job_id)
            self._spawn(job_id, spec)
        for job_id in failed:
            log.warning("export %s marked failed after restarts", job_id)
        return [j for j, _ in resumed]

    async def cleanup(self) -> int:
        """Expire finished jobs past their age, delete their files and stray ones; how many."""
        async with self.pool.acquire() as conn:
            expired = await conn.fetch(Q["job_expire"])
            await conn.execute(Q["job_purge"], self.cfg.max_age)
        removed = 0
        for row in expired:
            path = self.directory / file_name(row["job_id"], row["format"])
            removed += _discard(path)
        removed += await self._remove_strays()
        return removed

    async def _remove_strays(self) -> int:
        """Delete files whose job is gone or no longer succeeded, and old partial files."""
        now = time.time()
        found: dict[uuid.UUID, list[Path]] = {}
        removed = 0
        try:
            paths = list(self.directory.iterdir())
        except OSError as exc:
            log.debug("cannot list %s: %s", self.directory, exc)
            return 0
        for path in paths:
            m = _FILE_RE.match(path.name)
            if m is None:
                continue
            try:
                age = now - path.stat().st_mtime
            except OSError:
                continue
            if path.name.endswith(".part"):
                if age > STRAY_PART_AGE.total_seconds():
                    removed += _discard(path)
                continue
            if age > 60:
                found.setdefault(uuid.UUID(m.group(1)), []).append(path)
        if not found:
            return 0
        async with self.pool.acquire() as conn:
            live = {
                r["job_id"]
                for r in await conn.fetch(Q["job_files"], list(found))
                if r["status"] in ("succeeded", "running", "queued")
            }
        for job_id, stale in found.items():
            if job_id not in live:
                removed += sum(_discard(path) for path in stale)
        return removed

    async def _housekeeping(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self.settings.housekeeping_s)
            try:
                await self.adopt()
                await self.cleanup()
            except Exception as exc:
                if not failing:
                    log.warning("export housekeeping failed: %s", _reason(exc))
                failing = True
            else:
                if failing:
                    log.info("export housekeeping works again")
                failing = False


async def _write_file(conn: Any, chunks: AsyncIterator[bytes], part: Path) -> None:
    """Write the rendered export to `part` and fsync it.

    When writing stops half-way (a full disk, a shutdown) the export's query may still be
    running on `conn`: the connection is terminated, so the pool replaces it instead of
    taking back a busy one, and the original error is what propagates.
    """
    try:
        with part.open("wb") as f:
            async for chunk in chunks:
                f.write(chunk)
            f.flush()
            await asyncio.to_thread(os.fsync, f.fileno())
    except BaseException:
        conn.terminate()
        raise
    finally:
        try:
            await chunks.aclose()  # type: ignore[attr-defined]
        except Exception as exc:
            log.debug("closing the export query: %s", describe(exc))


def _reason(exc: BaseException) -> str:
    return describe(exc)


def _discard(path: Path) -> int:
    """Delete a file if it is there; 1 when deleted. Never raises (a read-only directory)."""
    try:
        path.unlink()
    except FileNotFoundError:
        return 0
    except OSError as exc:
        log.debug("cannot delete %s: %s", path, exc)
        return 0
    return 1


def _raised_by_files(exc: OSError) -> bool:
    """An OSError about a file (it has a file name or an errno of the file system family)."""
    return exc.filename is not None or exc.errno in _FS_ERRNOS


_FS_ERRNOS = {errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EIO,
              errno.ENOTDIR, errno.EISDIR, errno.ENOENT, errno.EFBIG}


def _file_reason(exc: OSError) -> str:
    """Why the export directory cannot take the file, for the job's `error` (no path)."""
    what = {
        errno.EROFS: "is read-only",
        errno.ENOSPC: "is full",
        errno.EDQUOT: "is over its quota",
        errno.EACCES: "is not writable",
        errno.EPERM: "is not writable",
        errno.ENOTDIR: "is not a directory",
        errno.ENOENT: "does not exist",
        errno.EFBIG: "does not accept a file this large",
    }.get(exc.errno or 0, "cannot be written")
    detail = exc.strerror or str(exc)
    return f"the export directory {what} ({detail})"[:300]
