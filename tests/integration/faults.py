"""Fault-injection helpers: a TCP proxy to cut a database off, a private cluster to stop and
restart, and `wfa` processes with their logs.

This module holds no tests.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from tests.kit.devdb import DevCluster, free_port

ROOT = Path(__file__).resolve().parents[2]


def port_of(dsn: str) -> int:
    """The TCP port of a postgresql:// DSN."""
    port = urlsplit(dsn).port
    assert port is not None, dsn
    return port


def with_port(dsn: str, port: int) -> str:
    """`dsn` pointing at another port of 127.0.0.1."""
    return dsn.replace(f":{port_of(dsn)}/", f":{port}/", 1)


class Proxy:
    """A TCP proxy to PostgreSQL that the test can take down and bring back."""

    def __init__(self, port: int):
        self.target = port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.conns: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        """Listen (on the same port after a restart)."""
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            w.close()

    async def _handle(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.target)
        self.conns |= {w, uw}
        await asyncio.gather(self._pipe(r, uw), self._pipe(ur, w))

    async def stop(self) -> None:
        """Refuse new connections and cut the open ones."""
        assert self.server is not None
        self.server.close()
        for w in self.conns:
            w.transport.abort()
        self.conns.clear()
        await self.server.wait_closed()


class PrivateCluster:
    """A PostgreSQL cluster of its own on a fixed port, to stop, start and restart."""

    def __init__(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="wfa-test-fault-"))
        self.base.chmod(0o755)
        self.port = free_port()
        self.cluster = DevCluster(self.base / "data", port=self.port, fast=True)

    def dsn(self, dbname: str = "postgres") -> str:
        """A DSN of the cluster (valid while it is stopped too)."""
        return f"postgresql://{self.cluster.superuser}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> None:
        """Start (initialising on first use) and wait until it accepts connections."""
        self.cluster.start()

    def stop(self) -> None:
        """Fast shutdown: sessions are terminated."""
        self.cluster.stop()

    def remove(self) -> None:
        """Stop and delete the cluster."""
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)


async def wait_until(
    check: Callable[[], Awaitable[Any]], timeout: float, what: str, interval: float = 0.1
) -> Any:
    """Call `check` until it returns something truthy; its value. TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = await check()
        except (aiohttp.ClientError, OSError, TimeoutError):
            value = None
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:g} s")
        await asyncio.sleep(interval)


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict, bytes]:
    """One GET: status, headers, body (5 s timeout)."""
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as s, s.get(url, headers=headers) as r:
        return r.status, dict(r.headers), await r.read()


class WfaProcess:
    """A `wfa` subcommand running as its own process with a config file and a log file."""

    def __init__(self, tmp: Path, args: list[str], cfg: dict[str, Any]) -> None:
        self.config = tmp / f"wfa-{args[0]}.yaml"
        self.config.write_text(json.dumps(cfg))
        self.log_path = tmp / f"wfa-{args[0]}.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", *args, "--config", str(self.config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )

    @property
    def log(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text()

    def alive(self) -> bool:
        """Whether the process still runs."""
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM, wait, return the exit code (SIGKILL after `timeout`)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode
