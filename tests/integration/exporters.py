"""Real `wfa exporter` processes on one store, and the faults a test inflicts on them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import asyncpg

from exporter.leadership import LOCK_APPLICATION
from tests.kit.devdb import free_port


@dataclass
class Exporter:
    """One `wfa exporter` process with its metrics port and log file."""

    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def pid(self) -> int:
        """The process id."""
        return self.proc.pid

    async def healthz(self) -> dict | None:
        """The /healthz body, None while it does not answer."""
        try:
            async with (
                aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as s,
                s.get(f"http://127.0.0.1:{self.port}/healthz") as r,
            ):
                return await r.json()
        except (aiohttp.ClientError, TimeoutError, OSError):
            return None

    def kill(self) -> None:
        """SIGKILL, no cleanup at all."""
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        """SIGTERM and wait; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9


@dataclass
class Fleet:
    """Exporter processes sharing one config (each with its own metrics port)."""

    dsn: str
    backend: str
    workdir: Path
    exporter: dict = field(default_factory=dict)
    running: list[Exporter] = field(default_factory=list)
    started: int = 0

    def config(self, port: int) -> Path:
        """A config file for one replica."""
        opts = ", ".join(f"{k}: {v}" for k, v in self.exporter.items())
        path = self.workdir / f"wfa-{port}.yaml"
        path.write_text(
            f"source: {{dsn: '{self.dsn}'}}\n"
            f"store: {{backend: {self.backend}, connect_retries: 30}}\n"
            f"exporter: {{{opts}}}\n"
            f"metrics: {{listen: '127.0.0.1:{port}', snapshot_interval: 1s}}\n"
        )
        return path

    def start(self, *args: str) -> Exporter:
        """Start one more replica (`wfa exporter` with extra `args`)."""
        port = free_port()
        self.started += 1
        log = self.workdir / f"exporter-{self.started}.log"
        cmd = [sys.executable, "-m", "exporter", "exporter", "--config", str(self.config(port))]
        proc = subprocess.Popen(
            [*cmd, *args],
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        ex = Exporter(proc, port, log)
        self.running.append(ex)
        return ex

    def by_pid(self, pid: int) -> Exporter | None:
        """The running replica with this process id."""
        return next((e for e in self.running if e.pid == pid), None)

    def stop_all(self) -> None:
        """Stop every replica."""
        for ex in self.running:
            ex.stop()

    def logs(self) -> str:
        """Every replica's log, concatenated."""
        return "".join(p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")))


async def leader(conn: asyncpg.Connection) -> tuple[int, int] | None:
    """(process id, epoch) of the replica that last took the poll lock."""
    row = await conn.fetchrow("SELECT holder, epoch FROM wfa.leadership")
    if row is None:
        return None
    return int(row["holder"].rsplit(":", 1)[1]), row["epoch"]


async def kill_lock_sessions(conn: asyncpg.Connection) -> int:
    """pg_terminate_backend every poll-lock session of this database, waiting until they are
    gone (and their lock released); how many."""
    return await conn.fetchval(
        "SELECT count(pg_terminate_backend(pid, 5000)) FROM pg_stat_activity "
        "WHERE application_name = $1 AND datname = current_database()",
        LOCK_APPLICATION,
    )


async def missing_rows(conn: asyncpg.Connection) -> int:
    """Source rows whose current version is not in the store."""
    return await conn.fetchval(
        "SELECT count(*) FROM workflow_executions s WHERE NOT EXISTS ("
        "SELECT 1 FROM wfa.executions x WHERE x.execution_id = s.id "
        "AND x.enrolled_at = s.enrolled_at AND x.source_updated_at = s.updated_at)"
    )


async def wait_for(predicate, timeout: float, interval: float = 0.2, what: str = "") -> float:
    """Await `predicate()` (a coroutine function) until truthy; seconds it took."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    while True:
        if await predicate():
            return loop.time() - start
        if loop.time() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)
