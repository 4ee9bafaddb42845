"""Fenced leadership: the advisory lock picks the poller, an epoch proves it in every write.

Taking the lock, a replica bumps `wfa.leadership.epoch` in its own committed transaction and
keeps the new value. Each write transaction of the poller first reads the epoch `FOR SHARE`
and raises NotLeader unless it is still its own, so a replica that lost its lock (its lock
session killed, its network gone) commits nothing more. The bump waits for the row locks of
a batch in flight, so a batch of the old leader either commits before the new leader starts
or not at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from datetime import timedelta

import asyncpg

from exporter.db import connect
from exporter.store.sqlfiles import named

log = logging.getLogger(__name__)
Q = named("leadership.sql")
LOCK_APPLICATION = "wfa-exporter-lock"
"""application_name of the session holding the poll lock."""


class NotLeader(RuntimeError):
    """This replica does not hold (or no longer holds) the poll lock."""


class Leadership:
    """The poll lock of one replica and the epoch it was taken at."""

    def __init__(
        self,
        dsn: str,
        lock_id: int,
        on_change: Callable[[bool], None] | None = None,
        statement_timeout: timedelta = timedelta(seconds=30),
    ) -> None:
        self.dsn = dsn
        self.lock_id = lock_id
        self.epoch: int | None = None
        self.takes = 0
        """Holds taken by this object: a store restored from a backup can hand out an epoch
        this replica held before, so a new hold is told by this count, not by the epoch."""
        self.holder = f"{socket.gethostname()}:{os.getpid()}"
        self._conn: asyncpg.Connection | None = None
        self._on_change = on_change or (lambda held: None)
        self._timeout = statement_timeout

    @property
    def held(self) -> bool:
        """Whether the lock session is open and an epoch was taken with it."""
        return self.epoch is not None and self._conn is not None and not self._conn.is_closed()

    async def acquire(self, wait: timedelta | None = None, take_over: bool = False) -> bool:
        """Hold the lock (True), taking it when free; a new hold bumps the epoch.

        With `wait`, queue for the lock that long instead of trying once; with `take_over`
        also end the session of the replica holding it (its batches are fenced off).
        """
        if self.held:
            return True
        await self.release()
        conn = await connect(
            self.dsn, application_name=LOCK_APPLICATION, statement_timeout=self._timeout
        )
        try:
            if wait is None:
                got = await conn.fetchval(Q["try_lock"], self.lock_id)
            elif take_over:
                got = await self._take_over(conn, wait)
            else:
                got = await _wait_for_lock(conn, self.lock_id, wait)
            if not got:
                await conn.close()
                return False
            # A batch of the previous leader still in flight holds the row: this waits for it.
            epoch = await conn.fetchval(Q["take"], self.lock_id, self.holder)
        except BaseException:
            conn.terminate()
            raise
        self._conn, self.epoch = conn, epoch
        self.takes += 1
        conn.add_termination_listener(self._lost)
        log.info("took the poll lock %d at epoch %d", self.lock_id, epoch)
        self._on_change(True)
        return True

    def check(self) -> None:
        """Raise NotLeader when the lock session is gone (cheap, no round trip)."""
        if not self.held:
            raise NotLeader("the poll lock session is closed")

    async def fence(self, conn: asyncpg.Connection) -> None:
        """Inside a write transaction: raise NotLeader unless the epoch is still ours."""
        self.check()
        current = await conn.fetchval(Q["fence"], self.lock_id)
        if current != self.epoch:
            epoch, self.epoch = self.epoch, None
            self._on_change(False)
            raise NotLeader(f"epoch {epoch} was superseded by {current}")

    async def release(self) -> None:
        """Give the lock up (closing its session); a no-op when not held."""
        conn, self._conn = self._conn, None
        was = self.epoch is not None
        self.epoch = None
        if conn is not None and not conn.is_closed():
            conn.remove_termination_listener(self._lost)
            try:
                await conn.close(timeout=5)
            except Exception:
                conn.terminate()
        if was:
            self._on_change(False)

    async def _take_over(self, conn: asyncpg.Connection, wait: timedelta) -> bool:
        """Queue for the lock on `conn`, then end the sessions holding it."""
        waiter = asyncio.create_task(_wait_for_lock(conn, self.lock_id, wait))
        pid = conn.get_server_pid()
        admin = await connect(self.dsn, application_name="wfa-takeover")
        try:
            while not waiter.done():
                rows = await admin.fetch(Q["holders"], self.lock_id)
                if any(r["pid"] == pid and not r["granted"] for r in rows):
                    for r in rows:
                        if r["granted"] and r["pid"] != pid:
                            log.warning("ending session %d, which holds the poll lock", r["pid"])
                            await admin.fetchval(Q["terminate"], r["pid"])
                await asyncio.wait({waiter}, timeout=0.05)
            return waiter.result()
        finally:
            await admin.close()
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter

    def _lost(self, conn: asyncpg.Connection) -> None:
        if conn is self._conn and self.epoch is not None:
            log.warning("the poll lock session was closed: leadership lost")
            self.epoch = None
            self._on_change(False)


async def _wait_for_lock(conn: asyncpg.Connection, lock_id: int, wait: timedelta) -> bool:
    ms = max(1, int(wait.total_seconds() * 1000))
    await conn.execute(f"SET lock_timeout = {ms}; SET statement_timeout = {ms + 5000}")
    try:
        await conn.execute(Q["lock"], lock_id)
        return True
    except asyncpg.LockNotAvailableError:
        return False
    finally:
        await conn.execute("RESET lock_timeout; RESET statement_timeout")
