"""SSE stream, cache invalidation and refresh while the source changes under the API."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.api import ApiSettings
from exporter.api.app import HUB
from exporter.simulate.generate import advance
from exporter.simulate.writer import upsert_executions
from tests.conftest import PgServer
from tests.integration.test_api_common import Store, api_client, auth, store_db, ts
from tests.kit.truth import Truth

P = "/api/v1"
FIELDS = ("enrollments", "completions", "conversions", "exits", "failures")


@dataclass
class Event:
    """One server-sent event (or a retry hint / comment block)."""

    id: str | None = None
    event: str | None = None
    data: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)

    def json(self) -> Any:
        """The event's data as JSON."""
        return json.loads(self.data)


async def next_event(resp: aiohttp.ClientResponse, timeout: float = 5.0) -> Event | None:
    """Read one blank-line terminated block; None at the end of the stream."""
    ev = Event()
    seen = False
    async with asyncio.timeout(timeout):
        while True:
            raw = await resp.content.readline()
            if not raw:
                return ev if seen else None
            line = raw.decode().rstrip("\n")
            if not line:
                if seen:
                    return ev
                continue
            seen = True
            if line.startswith(":"):
                ev.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                ev.data = f"{ev.data}\n{value}" if ev.data else value
            elif name == "retry":
                ev.retry = int(value)
            elif name in ("id", "event"):
                setattr(ev, name, value)


async def next_analytics(resp: aiohttp.ClientResponse, timeout: float = 5.0) -> Event:
    """Skip heartbeats and hints until an `analytics` event."""
    deadline = time.monotonic() + timeout
    while True:
        ev = await next_event(resp, max(0.01, deadline - time.monotonic()))
        assert ev is not None, "stream ended"
        if ev.event == "analytics":
            return ev


@pytest.fixture(scope="module")
async def store(pg: PgServer) -> AsyncIterator[Store]:
    """A store whose data ends twelve hours ago, so it can be advanced in steps."""
    start = (datetime.now(UTC) - timedelta(hours=12)).replace(microsecond=0)
    async with store_db(pg, executions=1500, days=20, now=start, sse_max_per_token=3) as s:
        yield s


@pytest.fixture(scope="module")
async def client(store: Store) -> AsyncIterator[TestClient]:
    """The API with short heartbeats."""
    async with api_client(store, settings=ApiSettings(heartbeat=0.5, shutdown_grace=2)) as c:
        yield c


class Source:
    """Advances the simulated source and writes the changed rows."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.seed = 100
        self.pending: list = []
        self.changed: list = []

    def advance(self, minutes: int = 30) -> set[str]:
        """Move the in-memory data forward; return the workflows whose executions changed."""
        self.seed += 1
        new_now = self.store.data.now + timedelta(minutes=minutes)
        assert new_now <= datetime.now(UTC)
        fresh = advance(self.store.data, new_now, self.seed)
        self.changed = list({ex.id: ex for ex in [*self.pending, *fresh]}.values())
        self.pending = []
        self.store.truth = Truth(self.store.data)
        return {ex.workflow_id for ex in self.changed}

    async def write(self) -> None:
        """Write the rows changed by the last advance into the source tables."""
        conn = await asyncpg.connect(self.store.dsn)
        try:
            await upsert_executions(conn, self.changed)
        finally:
            await conn.close()


@pytest.fixture(scope="module")
def source(store: Store) -> Source:
    """The module's source mutator."""
    return Source(store)


def _range(store: Store) -> dict[str, str]:
    end = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    return {"from": ts(end - timedelta(days=30)), "to": ts(end), "granularity": "day"}


TOKEN = {"tenant-1": "a_read", "tenant-2": "b_read"}


def _pick(store: Store, source: Source) -> tuple[str, str]:
    """Advance until a workflow's activity counts change; (workflow id, its tenant's token)."""
    end = datetime.now(UTC) + timedelta(hours=1)
    start = end - timedelta(days=30)

    def counts() -> dict[str, tuple[int, ...]]:
        return {
            w.id: tuple(store.truth.activity(w.id, start, end)[k] for k in FIELDS)
            for w in store.data.workflows
        }

    for _ in range(6):
        before = counts()
        touched = source.advance()
        after = counts()
        changed = sorted(w for w in touched if before[w] != after[w])
        if changed:
            return changed[0], TOKEN[store.data.workflow(changed[0]).tenant_id]
        if touched:
            source.pending.extend(source.changed)
    raise AssertionError("the source did not change")


def _check_truth(store: Store, wid: str, summary: dict[str, Any]) -> None:
    start = datetime.fromisoformat(summary["range"]["from"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(summary["range"]["to"].replace("Z", "+00:00"))
    act = store.truth.activity(wid, start, end)
    assert {k: summary[k] for k in FIELDS} == {k: act[k] for k in FIELDS}


async def test_stream_delivers_within_3s_and_resumes(
    client: TestClient, store: Store, source: Source
) -> None:
    """An ingested change reaches the stream within 3 s; Last-Event-ID resumes without repeats."""
    wid, token = _pick(store, source)
    url = f"{P}/workflows/{wid}/analytics/stream"
    q = _range(store)
    async with client.get(url, params=q, headers=auth(token)) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        hint = await next_event(resp)
        assert hint is not None and hint.retry == 3000
        first = await next_analytics(resp)
        assert first.id and first.json()["workflow_id"] == wid
        await source.write()
        await store.svc.poll_once()
        t0 = time.monotonic()
        second = await next_analytics(resp, timeout=3.0)
        assert time.monotonic() - t0 < 3.0
        assert second.id != first.id
        after = second.json()
        _check_truth(store, wid, after)
        got = await client.get(f"{P}/workflows/{wid}/analytics", params=q, headers=auth(token))
        assert (await got.json())["enrollments"] == after["enrollments"]
        ev = await next_event(resp, 2.0)
        assert ev is not None and ev.comments == ["heartbeat"]

    headers = {**auth(token), "Last-Event-ID": second.id}
    async with client.get(url, params=q, headers=headers) as resp:
        assert (await next_event(resp)).retry == 3000
        ev = await next_event(resp, 2.0)
        assert ev is not None and ev.event is None and ev.comments == ["heartbeat"]
    headers = {**auth(token), "Last-Event-ID": first.id}
    async with client.get(url, params=q, headers=headers) as resp:
        await next_event(resp)
        ev = await next_analytics(resp, 2.0)
        assert ev.id == second.id and ev.json() == after


async def test_stream_survives_client_that_disconnects(
    client: TestClient, store: Store, source: Source
) -> None:
    """A client vanishing mid-stream is dropped; the other streams keep receiving updates."""
    wid, token = _pick(store, source)
    url = f"{client.make_url(f'{P}/workflows/{wid}/analytics/stream')}"
    hub = client.app[HUB]
    q = _range(store)
    await settle(hub, 0)
    async with aiohttp.ClientSession() as rude, aiohttp.ClientSession() as polite:
        gone = await rude.get(url, params=q, headers=auth(token))
        await next_analytics(gone)
        async with polite.get(url, params=q, headers=auth(token)) as stay:
            await next_analytics(stay)
            assert hub.open_streams == 2
            gone.connection.transport.abort()
            gone.release()
            await source.write()
            await store.svc.poll_once()
            ev = await next_analytics(stay, 3.0)
            _check_truth(store, wid, ev.json())
            await settle(hub, 1)
    await settle(hub, 0)


async def settle(hub: Any, n: int) -> None:
    """Wait (a few heartbeats at most) until the hub holds `n` open streams."""
    for _ in range(40):
        if hub.open_streams == n:
            return
        await asyncio.sleep(0.1)
    assert hub.open_streams == n


async def test_stream_limit_per_token(client: TestClient, store: Store) -> None:
    """More than sse_max_per_token open streams of one token answer 429."""
    wid = store.workflows_of("tenant-2")[0]
    url = f"{P}/workflows/{wid}/analytics/stream"
    open_ = []
    try:
        for _ in range(3):
            resp = await client.get(url, headers=auth("b_read"))
            assert resp.status == 200
            await next_analytics(resp)
            open_.append(resp)
        resp = await client.get(url, headers=auth("b_read"))
        assert resp.status == 429 and resp.content_type == "application/problem+json"
        assert "Retry-After" in resp.headers
        resp = await client.get(url, headers=auth("a_read"))
        assert resp.status == 404
    finally:
        for r in open_:
            r.close()


async def test_refresh_ingests_and_cache_follows(
    client: TestClient, store: Store, source: Source
) -> None:
    """Refresh picks up a source change at once, and cached answers show it right after."""
    wid, token = _pick(store, source)
    q = _range(store)
    url = f"{P}/workflows/{wid}/analytics"
    old = await (await client.get(url, params=q, headers=auth(token))).json()
    again = await (await client.get(url, params=q, headers=auth(token))).json()
    assert again == old
    await source.write()
    resp = await client.post(f"{url}/refresh", headers=auth(token))
    version = client.app[HUB].version(wid)
    body = await resp.json()
    assert resp.status == 200 and body["workflow_changed"] is True, body
    new = await (await client.get(url, params=q, headers=auth(token))).json()
    _check_truth(store, wid, new)
    rel = await (await client.get(url, params={"range": "30d"}, headers=auth(token))).json()
    _check_truth(store, wid, rel)
    source.advance()
    await source.write()
    await store.svc.poll_once()
    for _ in range(30):
        if client.app[HUB].version(wid) != version:
            break
        await asyncio.sleep(0.1)
    fresh = await (await client.get(url, params={"range": "30d"}, headers=auth(token))).json()
    _check_truth(store, wid, fresh)


async def test_shutdown_closes_streams_cleanly(store: Store) -> None:
    """Stopping the server ends open streams with a close event, within the grace period."""
    settings = ApiSettings(heartbeat=10, shutdown_grace=2)
    wid = store.workflows_of("tenant-1")[0]
    async with api_client(store, settings=settings) as c:
        resp = await c.get(f"{P}/workflows/{wid}/analytics/stream", headers=auth("a_read"))
        await next_analytics(resp)
        t0 = time.monotonic()
        closing = asyncio.create_task(c.server.close())
        ev = await next_event(resp, 3.0)
        assert ev is not None and ev.event == "close"
        assert await next_event(resp, 3.0) is None
        await closing
        assert time.monotonic() - t0 < 2.5
