"""Tokens kept in the store, as the API sees them: reloaded every second or so.

A revoked or expired token disappears from the next reload, and the streams it opened are
ended. When reloads keep failing, a stored token is refused (503) once the last good load is
older than `stale_after`: a revocation may have happened meanwhile. Config tokens are not
affected.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg

from exporter import tokens
from exporter.config.schema import OPERATOR

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name, its tenant and scopes."""

    name: str
    tenant: str
    scopes: frozenset[str]

    @property
    def operator(self) -> bool:
        """True for an operator token (tenant "*"): store-wide retention, no tenant data."""
        return self.tenant == OPERATOR


class TokenStoreUnavailable(RuntimeError):
    """The stored tokens could not be reloaded recently enough to trust them."""


class StoredTokens:
    """The active tokens of `wfa.api_tokens`, by digest, reloaded in the background."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        interval: float = 1.0,
        stale_after: float = 5.0,
        reserved_names: Collection[str] = (),
        reserved_digests: Collection[bytes] = (),
    ) -> None:
        self.pool = pool
        self.interval = interval
        self.stale_after = stale_after
        self._reserved_names = frozenset(reserved_names)
        self._reserved_digests = frozenset(reserved_digests)
        self._by_digest: dict[bytes, tuple[Principal, datetime | None]] = {}
        self._loaded_at: float | None = None
        self._failing = False
        self._listeners: list[Callable[[set[str]], None]] = []
        self._task: asyncio.Task[None] | None = None

    def on_revoked(self, callback: Callable[[set[str]], None]) -> None:
        """Call `callback(names)` when tokens stop being valid (revoked, expired, deleted)."""
        self._listeners.append(callback)

    async def start(self) -> None:
        """Load once, then keep reloading in the background."""
        await self.reload()
        self._task = asyncio.create_task(self._run(), name="wfa-token-reload")

    async def stop(self) -> None:
        """Stop reloading."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.reload()

    async def reload(self) -> None:
        """Read the active tokens; on failure keep the previous set (it goes stale)."""
        try:
            async with asyncio.timeout(max(self.interval, 1.0) * 2):
                async with self.pool.acquire() as conn:
                    rows = await tokens.active(conn)
        except asyncpg.UndefinedTableError:
            rows = []  # not migrated yet: no stored token exists
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            if not self._failing:
                log.warning("stored API tokens could not be reloaded: %s", exc)
            self._failing = True
            return
        if self._failing:
            log.info("stored API tokens reloaded again")
        self._failing = False
        fresh: dict[bytes, tuple[Principal, datetime | None]] = {}
        for t in rows:
            digest = bytes.fromhex(t.sha256)
            if t.name in self._reserved_names or digest in self._reserved_digests:
                continue  # a config token of that name or secret wins
            fresh[digest] = (Principal(t.name, t.tenant, t.scopes), t.expires_at)
        gone = {p.name for p, _ in self._by_digest.values()} - {p.name for p, _ in fresh.values()}
        self._by_digest = fresh
        self._loaded_at = time.monotonic()
        if gone:
            for cb in self._listeners:
                cb(gone)

    def lookup(self, digest: bytes) -> Principal | None:
        """The principal of a stored token; TokenStoreUnavailable when the set is too old."""
        found = self._by_digest.get(digest)
        if found is None:
            return None
        principal, expires_at = found
        if expires_at is not None and expires_at <= datetime.now(UTC):
            return None
        if self._loaded_at is None or time.monotonic() - self._loaded_at > self.stale_after:
            raise TokenStoreUnavailable("the token store could not be read recently")
        return principal
