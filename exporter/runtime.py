"""One owner for a process: ordered startup and shutdown, signals, tracked tasks, jobs, sockets.

Every long-running command (`wfa exporter`, `api`, `run`, `demo`, `backfill`) is a `Runtime`
plus the parts it needs. A part registers what to do at startup and at shutdown; startup runs
in order, shutdown in the reverse order, each step bounded by the grace period. Scheduled
jobs run through `Jobs`: a job that raises is counted and logged, and the shutdown waits for
the runs in flight (a poll finishes its batch) before it cancels what outlasts the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import resource
import signal
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import Any

from apscheduler.job import Job
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.config.schema import parse_listen
from exporter.db import describe, is_unreachable

log = logging.getLogger(__name__)

Step = Callable[[], Awaitable[None]]


class ListenError(Exception):
    """A listener cannot bind its address (taken, not local, not allowed)."""


class StartupFailed(Exception):
    """A part cannot start for a reason waiting will not fix; its message says what to do."""


def split_listen(listen: str) -> tuple[str, int]:
    """(host, port) of a `host:port` listen address; port 0 picks a free one."""
    if listen.endswith(":0"):
        return listen[:-2].strip("[]"), 0
    return parse_listen(listen)


def bind(listen: str, what: str = "") -> socket.socket:
    """A listening TCP socket on `listen`; ListenError names the address and the reason."""
    host, port = split_listen(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower() if exc.errno else str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = "address already in use"
        where = f" ({what})" if what else ""
        raise ListenError(f"cannot listen on {listen}{where}: {reason}") from exc


def url_host(sock: socket.socket) -> str:
    """"host:port" of a bound socket, for URLs."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def raise_open_files_limit() -> None:
    """Lift the soft limit on open files to the hard limit (many clients and streams)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


class Jobs(AsyncIOScheduler):
    """The process's scheduled jobs: failures counted per job and logged, runs in flight
    awaited by `drain` instead of cancelled."""

    def __init__(self) -> None:
        super().__init__(timezone="UTC")
        self.failures: Counter[str] = Counter()
        """Runs that ended with an exception, by job id."""
        self._running: set[asyncio.Task[Any]] = set()
        self._failing: set[str] = set()

    def every(
        self,
        job_id: str,
        fn: Callable[[], Awaitable[None]],
        interval: timedelta,
        first: datetime | None = None,
    ) -> Job:
        """Run `fn` every `interval` (first at `first`, default one interval from now), one
        run at a time; an existing job with the same id is replaced."""
        # APScheduler takes an explicit next_run_time=None for "paused": leave it out instead.
        first_run: dict[str, datetime] = {} if first is None else {"next_run_time": first}
        return self.add_job(
            self._tracked(job_id, fn),
            "interval",
            seconds=interval.total_seconds(),
            max_instances=1,
            coalesce=True,
            id=job_id,
            replace_existing=True,
            **first_run,
        )

    def _tracked(
        self, job_id: str, fn: Callable[[], Awaitable[None]]
    ) -> Callable[[], Coroutine[Any, Any, None]]:
        async def run() -> None:
            task = asyncio.current_task()
            if task is not None:
                self._running.add(task)
            try:
                await fn()
            except asyncio.CancelledError:
                # Cancelled by the shutdown after the grace: the cycle rolls back, the next
                # start redoes it.
                log.info("%s job interrupted by the shutdown", job_id)
            except Exception as exc:
                self.failures[job_id] += 1
                expected = is_unreachable(exc) or type(exc).__module__.startswith("asyncpg")
                if job_id not in self._failing or not expected:
                    log.error(
                        "%s job failed: %s", job_id, describe(exc), exc_info=not expected
                    )
                self._failing.add(job_id)
            else:
                if job_id in self._failing:
                    self._failing.discard(job_id)
                    log.info("%s job works again", job_id)
            finally:
                if task is not None:
                    self._running.discard(task)

        run.__name__ = f"{job_id}_job"
        return run

    def run_soon(self, job_id: str) -> None:
        """Run job `job_id` now instead of at its next time (nothing when there is none)."""
        if self.running and self.get_job(job_id) is not None:
            self.modify_job(job_id, next_run_time=datetime.now().astimezone())

    async def drain(self, grace: float) -> None:
        """Start no new run, wait up to `grace` s for the runs in flight, then cancel them."""
        if not self.running:
            return
        self.pause()
        running = {t for t in self._running if not t.done()}
        if running:
            log.info("waiting up to %.0f s for %d running jobs", grace, len(running))
            await asyncio.wait(running, timeout=grace)
        self.shutdown(wait=False)
        left = {t for t in running if not t.done()}
        if left:
            await asyncio.wait(left, timeout=1.0)


class Runtime:
    """Starts a process's parts in order, runs until SIGTERM/SIGINT or a part stops it, and
    shuts the parts down in the reverse order, each step within `grace` seconds."""

    def __init__(self, grace: float = 5.0) -> None:
        self.grace = grace
        self.jobs = Jobs()
        self.stop = asyncio.Event()
        """Set by a signal, by `exit`, or when the main coroutine returns."""
        self.code = 0
        self._error: BaseException | None = None
        self._startup: list[tuple[str, Step]] = []
        self._shutdown: list[tuple[str, Step]] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def on_startup(self, name: str, step: Step) -> None:
        """Run `step` at startup, after the steps registered before it (a running step may
        register more: they run after it)."""
        self._startup.append((name, step))

    def on_shutdown(self, name: str, step: Step) -> None:
        """Run `step` at shutdown, before the steps registered before it."""
        self._shutdown.append((name, step))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run `coro` as a task this runtime cancels (after the grace) at shutdown."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def start_soon(self, fn: Callable[[], Coroutine[Any, Any, Any]], name: str) -> None:
        """A startup step that runs `fn` as a tracked background task and returns at once."""
        self.spawn(fn(), name)

    def fail(self, exc: BaseException) -> None:
        """Stop the process; `run` raises `exc` once everything is shut down."""
        if self._error is None:
            self._error = exc
        self.exit(1)

    def exit(self, code: int) -> None:
        """Stop the process with exit code `code` (the first non-zero code wins)."""
        if code and not self.code:
            self.code = code
        self.stop.set()

    async def until_stopped(self, coro: Awaitable[Any]) -> Any:
        """Await `coro` unless the process is stopped first (then cancel it, raise Stopped)."""
        task = asyncio.ensure_future(coro)
        stopping = asyncio.ensure_future(self.stop.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
            raise Stopped
        return task.result()

    async def run(self, main: Callable[[], Awaitable[int | None]] | None = None) -> int:
        """Start every part, run `main` (default: wait for a signal), then shut down.

        `main` watches `stop` itself (a signal sets it). Returns the exit code: `main`'s, or
        the one given to `exit`; raises what a part gave to `fail`.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        try:
            for name, step in self._startup:
                if self.stop.is_set():
                    break
                log.debug("starting %s", name)
                await self.until_stopped(step())
            if not self.stop.is_set():
                self.jobs.start()
                if main is None:
                    await self.stop.wait()
                else:
                    self.exit(await main() or 0)
        except Stopped:
            pass
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
            await self.shutdown()
        if self._error is not None:
            raise self._error
        return self.code

    async def shutdown(self) -> None:
        """Drain the jobs, cancel the tracked tasks, then the shutdown steps in reverse."""
        self.stop.set()
        await self.jobs.drain(self.grace)
        tasks = {t for t in self._tasks if not t.done()}
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=self.grace)
        for name, step in reversed(self._shutdown):
            try:
                await step()
            except Exception as exc:
                log.warning("stopping %s: %s", name, describe(exc))


class Stopped(Exception):
    """The process was told to stop while a step was still running."""
