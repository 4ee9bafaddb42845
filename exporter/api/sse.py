"""Live updates: one shared LISTEN connection, a result cache it invalidates, SSE streams.

The ingest loop NOTIFYs `wfa_ingest` with the ids of the workflows each batch
touched. `IngestHub` keeps one connection listening, counts a version per
workflow, wakes the streams subscribed to it and tells the cache. While the
connection is down the cache is bypassed (a change could go unnoticed), and on
every (re)connect all streams are woken, since notifications may have been missed.

Event ids are `<hub>-<connection>-<version>`: the snapshot sent with an id is at
least as new as that version. A client resuming with the current id gets no
repeat; any other id gets a fresh snapshot at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from aiohttp import web

from exporter.db import Backoff, connect, describe
from exporter.ingest import NOTIFY_CHANNEL
from exporter.store.migrate import current_version

log = logging.getLogger(__name__)

RETRY_MS = 3000
"""The reconnect delay suggested to clients."""

DEBOUNCE_S = 1.0
"""At most one event per stream per this many seconds."""

MAX_RECONNECT_DELAY_S = 10.0
"""Longest wait between attempts to reconnect the listening connection."""


@dataclass(eq=False, slots=True)
class Subscription:
    """One stream's interest in one workflow."""

    workflow_id: str
    owner: str
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    ended: bool = False


class IngestHub:
    """Listens on `wfa_ingest` over one connection and fans the news out."""

    def __init__(
        self, dsn: str, *, reconnect_delay: float = 1.0, check_interval: float = 30.0
    ) -> None:
        self.dsn = dsn
        self.reconnect_delay = reconnect_delay
        self.check_interval = check_interval
        self.epoch = secrets.token_hex(4)
        self.connection_no = 0
        self.connected = False
        self.closing = False
        self._versions: dict[str, int] = {}
        self._subs: dict[str, set[Subscription]] = {}
        self._per_owner: dict[str, int] = {}
        self._listeners: list[Callable[[list[str] | None], None]] = []
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    # lifecycle -----------------------------------------------------------------------------

    async def start(self, wait: float = 5.0) -> None:
        """Start listening in the background; wait up to `wait` s for the first attempt."""
        self._task = asyncio.create_task(self._run(), name="wfa-ingest-listener")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._ready.wait()

    def close_streams(self) -> None:
        """Ask every open stream to finish."""
        self.closing = True
        for subs in self._subs.values():
            for sub in subs:
                sub.wake.set()

    async def close(self) -> None:
        """Close the streams and the listening connection."""
        self.close_streams()
        self._stop.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = Backoff(self.reconnect_delay, MAX_RECONNECT_DELAY_S)
        while not self._stop.is_set():
            conn: asyncpg.Connection | None = None
            delay = self.reconnect_delay
            try:
                conn = await connect(self.dsn, application_name="wfa-api-listen")
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _c, ev=lost: ev.set())
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
                self.connection_no += 1
                self.connected = True
                if backoff.attempt:
                    log.info("ingest listener connected again")
                backoff.reset()
                self._ready.set()
                self._changed(None)
                while not (lost.is_set() or self._stop.is_set()):
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(self.check_interval):
                            await lost.wait()
                    if not lost.is_set() and not self._stop.is_set():
                        async with asyncio.timeout(self.check_interval):
                            await current_version(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._ready.set()  # the first attempt is over: start() need not wait longer
                delay = backoff.next_delay()
                if backoff.level_changed:
                    log.warning(
                        "ingest listener connection failed (%s); retrying every %.3g s",
                        describe(exc),
                        delay,
                    )
            finally:
                if self.connected:
                    self.connected = False
                    self._changed(None)
                if conn is not None and not conn.is_closed():
                    conn.terminate()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stop.wait()

    # notifications -------------------------------------------------------------------------

    def _on_notify(self, _conn: object, _pid: int, _channel: str, payload: str) -> None:
        try:
            ids = json.loads(payload)
        except ValueError:
            ids = None
        if not isinstance(ids, list):
            log.warning("ignoring malformed %s payload", NOTIFY_CHANNEL)
            self._changed(None)
            return
        self._changed([str(i) for i in ids])

    def _changed(self, ids: list[str] | None) -> None:
        """Bump versions and wake subscribers of `ids` (None: every workflow)."""
        targets = list(self._subs) if ids is None else ids
        if ids is not None:
            for wid in ids:
                self._versions[wid] = self._versions.get(wid, 0) + 1
        for wid in targets:
            for sub in self._subs.get(wid, ()):
                sub.wake.set()
        for cb in self._listeners:
            cb(ids)

    def bump(self, ids: list[str]) -> None:
        """Treat `ids` as changed now (e.g. right after an on-demand ingest)."""
        self._changed(list(ids))

    def on_change(self, callback: Callable[[list[str] | None], None]) -> None:
        """Call `callback(ids)` on every notification; None means anything may have changed."""
        self._listeners.append(callback)

    def version(self, workflow_id: str) -> tuple[int, int]:
        """(connection number, notifications seen) for a workflow: changes on any news of it."""
        return (self.connection_no, self._versions.get(workflow_id, 0))

    def event_id(self, workflow_id: str) -> str:
        """The SSE id naming the current version of a workflow."""
        conn_no, seen = self.version(workflow_id)
        return f"{self.epoch}-{conn_no}-{seen}"

    # subscriptions -------------------------------------------------------------------------

    def end_streams_of(self, owners: set[str]) -> None:
        """Ask the streams of these tokens to finish (their tokens are no longer valid)."""
        for subs in self._subs.values():
            for sub in subs:
                if sub.owner in owners:
                    sub.ended = True
                    sub.wake.set()

    def streams_of(self, owner: str) -> int:
        """Open streams of one token."""
        return self._per_owner.get(owner, 0)

    def subscribe(self, workflow_id: str, owner: str) -> Subscription:
        """Register a stream for news of `workflow_id`."""
        sub = Subscription(workflow_id, owner)
        self._subs.setdefault(workflow_id, set()).add(sub)
        self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        """Forget a stream."""
        subs = self._subs.get(sub.workflow_id)
        if subs is not None and sub in subs:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.workflow_id]
            left = self._per_owner.get(sub.owner, 1) - 1
            if left:
                self._per_owner[sub.owner] = left
            else:
                self._per_owner.pop(sub.owner, None)

    @property
    def open_streams(self) -> int:
        """Number of open streams."""
        return sum(len(s) for s in self._subs.values())


@dataclass(slots=True)
class _Entry:
    version: tuple[int, int]
    expires: float
    body: Any
    computed_at: float = 0.0


class ResultCache:
    """Answers (immutable response bodies) per request key, valid until ingestion touches
    their workflow.

    Values are only kept while the hub listens; identical concurrent misses share
    one computation. A TTL bounds staleness from changes that send no notification
    (workflow definitions).

    Requests for a relative range ("the last 90 days") pass a `family`: the same
    question whatever `now` resolved to. When the answer for the new second is not
    ready, the family's latest answer is served if no ingestion happened since and
    its computation started at most `lag` seconds ago (it states the range it was
    computed for: only events leaving the window at its far edge can differ), and
    the new one is computed in the background.
    """

    def __init__(
        self, hub: IngestHub, max_entries: int = 4096, ttl: float = 30.0, lag: float = 10.0
    ) -> None:
        self.hub = hub
        self.max_entries = max_entries
        self.ttl = ttl
        self.lag = lag
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self._latest: OrderedDict[tuple, _Entry] = OrderedDict()
        self._inflight: dict[tuple, tuple[tuple[int, int], asyncio.Task[Any]]] = {}
        hub.on_change(self._invalidate)

    def _invalidate(self, ids: list[str] | None) -> None:
        if ids is None:
            self._entries.clear()
            self._latest.clear()

    def _store(self, into: OrderedDict[tuple, _Entry], key: tuple, entry: _Entry) -> None:
        into[key] = entry
        into.move_to_end(key)
        while len(into) > self.max_entries:
            into.popitem(last=False)

    def _launch(
        self,
        key: tuple,
        family: tuple | None,
        workflow_id: str,
        version: tuple[int, int],
        compute: Callable[[], Awaitable[Any]],
    ) -> asyncio.Task[Any]:
        running = self._inflight.get(key)
        if running is not None and running[0] == version:
            return running[1]
        started = time.monotonic()

        async def run() -> Any:
            try:
                body = await compute()
            finally:
                if self._inflight.get(key, (None, None))[1] is task:
                    del self._inflight[key]
            if self.hub.connected and self.hub.version(workflow_id) == version:
                entry = _Entry(version, started + self.ttl, body, started)
                self._store(self._entries, key, entry)
                if family is not None:
                    self._store(self._latest, family, entry)
            return body

        task = asyncio.create_task(run())
        task.add_done_callback(_consume)
        self._inflight[key] = (version, task)
        return task

    async def get(
        self,
        key: tuple,
        workflow_id: str,
        compute: Callable[[], Awaitable[Any]],
        family: tuple | None = None,
    ) -> Any:
        """The cached answer for `key`, or compute it (once for concurrent callers)."""
        if not self.hub.connected or self.max_entries <= 0:
            self.misses += 1
            return await compute()
        version = self.hub.version(workflow_id)
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is not None and entry.version == version and entry.expires > now:
            self._entries.move_to_end(key)
            self.hits += 1
            return entry.body
        task = self._launch(key, family, workflow_id, version, compute)
        if family is not None:
            prev = self._latest.get(family)
            if prev is not None and prev.version == version and now - prev.computed_at <= self.lag:
                self.hits += 1
                return prev.body
        self.misses += 1
        return await asyncio.shield(task)

    async def close(self) -> None:
        """Cancel background computations."""
        tasks = [t for _, t in self._inflight.values()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()


def _consume(task: asyncio.Task[Any]) -> None:
    """Retrieve a background computation's outcome so no error goes unobserved."""
    if not task.cancelled():
        task.exception()


async def run_stream(
    request: web.Request,
    hub: IngestHub,
    workflow_id: str,
    owner: str,
    snapshot: Callable[[], Awaitable[bytes]],
    *,
    heartbeat: float = 15.0,
) -> web.StreamResponse:
    """Serve `analytics` events for one workflow until the client leaves or the app stops
    (a HEAD request gets the headers only)."""
    headers = {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    }
    if request.method == "HEAD":
        return web.Response(headers=headers)
    resp = web.StreamResponse(headers=headers)
    sub = hub.subscribe(workflow_id, owner)
    try:
        await resp.prepare(request)
        await resp.write(f"retry: {RETRY_MS}\n\n".encode())
        pending = request.headers.get("Last-Event-ID") != hub.event_id(workflow_id)
        last_sent = -DEBOUNCE_S
        while not (hub.closing or sub.ended):
            if pending:
                wait = last_sent + DEBOUNCE_S - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    if hub.closing or sub.ended:
                        break
                sub.wake.clear()
                event_id = hub.event_id(workflow_id)
                try:
                    body = await snapshot()
                except Exception as exc:
                    log.warning("stream snapshot of %s failed: %s", workflow_id, exc)
                    await resp.write(b'event: error\ndata: {"title": "snapshot failed"}\n\n')
                else:
                    await resp.write(
                        b"id: " + event_id.encode() + b"\nevent: analytics\ndata: " + body + b"\n\n"
                    )
                last_sent = time.monotonic()
                pending = False
            try:
                async with asyncio.timeout(heartbeat):
                    await sub.wake.wait()
                pending = not (hub.closing or sub.ended)
            except TimeoutError:
                await resp.write(b": heartbeat\n\n")
        with contextlib.suppress(ConnectionError):
            await resp.write(b"event: close\ndata: {}\n\n")
    except ConnectionError:
        log.debug("stream client of %s went away", workflow_id)
    finally:
        hub.unsubscribe(sub)
    return resp
