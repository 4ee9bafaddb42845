"""Shared helpers of the API tests: a simulated store, tokens, a client and schema checks.

This module holds no tests; the test_api_* modules import from it.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import jsonschema_rs
from aiohttp.test_utils import TestClient, TestServer

from exporter.api import ApiSettings, create_app
from exporter.api.auth import token_digest
from exporter.config import Config, config_from_dict
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.model import SimData
from exporter.simulate.writer import create_source_schema, write
from tests.conftest import Databases, PgServer
from tests.kit.truth import Truth

TOKENS: dict[str, tuple[str, str, list[str]]] = {
    "a_read": ("wfa_test_tenant1_read", "tenant-1", ["read"]),
    "a_admin": ("wfa_test_tenant1_admin", "tenant-1", ["read", "admin"]),
    "a_export": ("wfa_test_tenant1_export", "tenant-1", ["export"]),
    "b_read": ("wfa_test_tenant2_read", "tenant-2", ["read"]),
    "b_export": ("wfa_test_tenant2_export", "tenant-2", ["export"]),
}
"""name -> (secret, tenant, scopes) of the tokens every test config accepts."""


def secret(name: str) -> str:
    """The bearer secret of a test token."""
    return TOKENS[name][0]


def api_config(dsn: str, **api: Any) -> Config:
    """A config over one database (source = store) with the test tokens."""
    tokens = [
        {"name": n, "sha256": token_digest(s), "tenant": t, "scopes": sc}
        for n, (s, t, sc) in TOKENS.items()
    ]
    return config_from_dict(
        {
            "source": {"dsn": dsn},
            "store": {"backend": "postgres", "pool_max_size": 6},
            # The stores of these tests are filled once; they stay "ready" for a day.
            "exporter": {"ready_max_lag": "1d"},
            "api": {"tokens": tokens, **api},
        }
    )


def data_now() -> datetime:
    """An instant shortly before the real now, so relative ranges cover the data."""
    return (datetime.now(UTC) - timedelta(minutes=2)).replace(microsecond=0)


@dataclass
class Store:
    """A filled store: the exporter service, the generated data and its truth."""

    dsn: str
    cfg: Config
    svc: ExporterService
    data: SimData
    truth: Truth

    def workflows_of(self, tenant: str) -> list[str]:
        """Workflow ids of one tenant."""
        return [w.id for w in self.data.workflows if w.tenant_id == tenant]


async def fill_store(
    dsn: str,
    *,
    executions: int = 2000,
    days: float = 40,
    workflows: int = 6,
    seed: int = 11,
    now: datetime | None = None,
    **api: Any,
) -> Store:
    """Write simulated source rows into `dsn`, open an exporter on it and ingest once."""
    data = generate(
        executions=executions,
        days=days,
        workflows=workflows,
        tenants=2,
        seed=seed,
        now=now or data_now(),
    )
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        await write(conn, data)
    finally:
        await conn.close()
    cfg = api_config(dsn, **api)
    svc = ExporterService(cfg)
    await svc.open()
    await svc.poll_once()
    return Store(dsn, cfg, svc, data, Truth(data))


@asynccontextmanager
async def store_db(pg: PgServer, **kw: Any) -> AsyncIterator[Store]:
    """A fresh database filled by `fill_store`, dropped afterwards."""
    dbs = Databases(pg)
    try:
        store = await fill_store(pg.dsn(await dbs.create()), **kw)
        try:
            yield store
        finally:
            await store.svc.close()
    finally:
        await dbs.drop_all()


@asynccontextmanager
async def api_client(
    store: Store, *, with_service: bool = True, settings: ApiSettings | None = None
) -> AsyncIterator[TestClient]:
    """A client of a real server on 127.0.0.1 serving the API over the store."""
    assert store.svc.store is not None
    app = create_app(
        store.cfg, store.svc.store, store.svc if with_service else None, settings=settings
    )
    client = TestClient(TestServer(app, host="127.0.0.1"))
    await client.start_server()
    try:
        yield client
    finally:
        await client.close()


def auth(name: str) -> dict[str, str]:
    """Authorization header of a test token."""
    return {"Authorization": f"Bearer {secret(name)}"}


def ts(t: datetime) -> str:
    """RFC 3339 text of an aware time."""
    return t.isoformat()


def parse_ts(text: str) -> datetime:
    """Aware datetime from the API's RFC 3339 text."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# OpenAPI response validation -------------------------------------------------------------


class OpenApi:
    """Validates responses against the served OpenAPI document."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.doc = doc
        self._routes = [
            (re.compile("^" + re.sub(r"\{[^}]+\}", "[^/]+", p) + "$"), p) for p in doc["paths"]
        ]

    def _resolve(self, node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node:
            _, *parts = node["$ref"].split("/")
            target: Any = self.doc
            for part in parts:
                target = target[part]
            node = target
        return node

    def validate(self, method: str, path: str, status: int, ctype: str, body: bytes) -> None:
        """Assert status, content type and body are what the document says."""
        template = next((p for rx, p in self._routes if rx.match(path)), None)
        assert template is not None, f"{path} is not documented"
        op = self.doc["paths"][template][method.lower()]
        assert str(status) in op["responses"], f"{method} {template}: {status} undocumented"
        resp = self._resolve(op["responses"][str(status)])
        content = resp.get("content", {})
        assert ctype in content, f"{method} {template} {status}: {ctype} not in {list(content)}"
        schema = content[ctype]["schema"]
        if ctype == "text/event-stream":
            return
        root = {"components": self.doc["components"], **schema}
        validator = jsonschema_rs.Draft202012Validator(root, validate_formats=True)
        data = json.loads(body)
        errors = [e.message for e in validator.iter_errors(data)]
        assert not errors, f"{method} {template} {status}: {errors[:3]}"
