"""Fixtures for store tests: a store database per backend, filled from simulated source data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest
from aiohttp.test_utils import TestClient

from exporter.api import API_PREFIX
from exporter.config import config_from_dict
from exporter.service import ExporterService
from tests.integration.test_api_common import OpenApi, Store, api_client


@pytest.fixture(params=["postgres", "timescaledb"])
def store_dsn(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(backend, dsn) of a fresh database holding source tables and the store."""
    if request.param == "postgres":
        return "postgres", request.getfixturevalue("db_dsn")
    return "timescaledb", request.getfixturevalue("timescale_dsn")


def make_config(dsn: str, backend: str, **exporter: Any) -> Any:
    """A config whose source and store are the same test database."""
    return config_from_dict(
        {"source": {"dsn": dsn}, "store": {"backend": backend}, "exporter": exporter}
    )


async def ingest(dsn: str, backend: str, **exporter: Any):
    """Open an exporter on the database, poll once (until caught up, then refresh), close."""
    svc = ExporterService(make_config(dsn, backend, **exporter))
    await svc.open()
    try:
        return await svc.poll_once()
    finally:
        await svc.close()


@pytest.fixture
async def conn(store_dsn: tuple[str, str]) -> AsyncIterator[asyncpg.Connection]:
    """A connection to the store database."""
    c = await asyncpg.connect(store_dsn[1])
    yield c
    await c.close()


@pytest.fixture(scope="module")
async def client(store: Store) -> AsyncIterator[TestClient]:
    """A client of the API served over the module's `store` (a module may define its own)."""
    async with api_client(store) as c:
        yield c


@pytest.fixture(scope="module")
async def spec(client: TestClient) -> OpenApi:
    """The OpenAPI document the module's client serves."""
    resp = await client.get(f"{API_PREFIX}/openapi.json")
    assert resp.status == 200
    return OpenApi(await resp.json())
