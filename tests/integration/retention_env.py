"""Shared helpers of the retention tests: tokens of every role, a filled store and its client.

This module holds no tests; the test_retention* modules import from it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from aiohttp.test_utils import TestClient, TestServer

from exporter.api import ApiSettings, create_app
from exporter.api.auth import token_digest
from exporter.config import Config, config_from_dict
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.model import SimData
from exporter.simulate.writer import create_source_schema, write
from tests.integration.test_api_common import OpenApi

P = "/api/v1"
TOKENS = {
    "a_admin": ("wfa_ret_tenant1_admin", "tenant-1", ["read", "admin"]),
    "a_read": ("wfa_ret_tenant1_read", "tenant-1", ["read"]),
    "a_export": ("wfa_ret_tenant1_export", "tenant-1", ["export"]),
    "b_admin": ("wfa_ret_tenant2_admin", "tenant-2", ["admin"]),
    "operator": ("wfa_ret_operator", "*", ["admin"]),
}
"""name -> (secret, tenant, scopes): a tenant's admin, read and export tokens, the other
tenant's admin, and the operator."""


def config(dsn: str, backend: str) -> Config:
    """Source = store, day partitions, the module's tokens."""
    return config_from_dict(
        {
            "source": {"dsn": dsn},
            "store": {"backend": backend, "partition_interval": "1d", "pool_max_size": 6},
            "api": {
                "tokens": [
                    {"name": n, "sha256": token_digest(s), "tenant": t, "scopes": sc}
                    for n, (s, t, sc) in TOKENS.items()
                ]
            },
        }
    )


def auth(name: str) -> dict[str, str]:
    """Authorization header of a module token."""
    return {"Authorization": f"Bearer {TOKENS[name][0]}"}


@dataclass
class Env:
    """A filled store of one backend and a client of the API over it."""

    backend: str
    dsn: str
    cfg: Config
    svc: ExporterService
    data: SimData
    client: TestClient
    spec: OpenApi | None = None

    def workflows(self, tenant: str) -> list[str]:
        """Workflow ids of a tenant."""
        return sorted(w.id for w in self.data.workflows if w.tenant_id == tenant)

    async def call(
        self, method: str, path: str, token: str = "a_admin", **kw: Any
    ) -> tuple[int, Any]:
        """Request, check the answer against the OpenAPI document; (status, parsed JSON)."""
        if self.spec is None:
            doc = await (await self.client.get(f"{P}/openapi.json")).json()
            self.spec = OpenApi(doc)
        resp = await self.client.request(method, P + path, headers=auth(token), **kw)
        body = await resp.read()
        url = (P + path).split("?")[0]
        self.spec.validate(method, url, resp.status, resp.content_type, body)
        return resp.status, json.loads(body)


@asynccontextmanager
async def open_env(backend: str, dsn: str, executions: int = 1500) -> AsyncIterator[Env]:
    """40 days of simulated data of two tenants ingested into a fresh store of `backend`."""
    now = (datetime.now(UTC) - timedelta(minutes=2)).replace(microsecond=0)
    data = generate(executions=executions, days=40, workflows=4, tenants=2, seed=5, now=now)
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        await write(conn, data)
    finally:
        await conn.close()
    cfg = config(dsn, backend)
    svc = ExporterService(cfg)
    await svc.open()
    await svc.poll_once()
    assert svc.store is not None
    app = create_app(cfg, svc.store, svc, settings=ApiSettings(shutdown_grace=2))
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield Env(backend, dsn, cfg, svc, data, client)
    finally:
        await client.close()
        await svc.close()
