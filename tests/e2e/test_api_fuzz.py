"""Property-based fuzzing of the served OpenAPI document with schemathesis: no 5xx, conformance."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import PgServer
from tests.integration.test_api_common import Store, api_client, auth, store_db

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
]
EXAMPLES = 35
SKIP = {"streamSummary"}
"""Operations left out: the stream never ends on its own (tested in test_api_stream)."""


@pytest.fixture(scope="module")
async def store(pg: PgServer) -> AsyncIterator[Store]:
    """A small simulated store."""
    async with store_db(pg, executions=600, days=10, workflows=4) as s:
        yield s


PRESETS: list[dict[str, str]] = [
    {},
    {"range": "30d", "granularity": "week"},
    {"from": "now-10d/d", "to": "now/d", "tz": "Europe/Paris", "granularity": "hour"},
    {"from": "now-3d", "mode": "activity", "tz": "Asia/Kolkata"},
]
"""Valid queries mixed into the generated ones, so deep code paths are fuzzed too."""


def _fuzz_op(
    op: Any,
    mode: GenerationMode,
    base_url: str,
    real_ids: list[str],
    session: requests.Session,
    failures: list[str],
    seen: Counter[str],
) -> None:
    """Run one operation in one generation mode."""
    op_id = op.definition.raw["operationId"]
    on_workflow = "{workflow_id}" in op.path
    examples = EXAMPLES if on_workflow else 10
    tokens = st.sampled_from(["a_read", "a_admin", "b_read", "a_export", None])
    ids = st.sampled_from([*real_ids, None]) if on_workflow else st.none()
    takes_time = any(
        p.get("$ref", "").endswith("/tz") for p in op.definition.raw.get("parameters", [])
    )
    presets = st.sampled_from([None, *PRESETS]) if takes_time else st.none()

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode), token=tokens, wid=ids, preset=presets)
    def run(
        case: schemathesis.Case, token: str | None, wid: str | None, preset: dict | None
    ) -> None:
        headers = dict(case.headers or {})
        if token is not None:
            headers["Authorization"] = auth(token)["Authorization"]
        case.headers = headers
        if wid is not None:
            case.path_parameters = {**(case.path_parameters or {}), "workflow_id": wid}
        if preset is not None:
            if "mode" in preset and not op.path.endswith("/funnel"):
                preset = {k: v for k, v in preset.items() if k != "mode"}
            case.query = dict(preset)
        resp = case.call(base_url=base_url, session=session, timeout=10)
        seen[f"{op_id} {resp.status_code}"] += 1
        try:
            case.validate_response(resp, checks=CHECKS)
        except Exception as exc:
            failures.append(f"{op.label} [{mode.value}]: {exc}"[:2000])

    try:
        run()
    except Unsatisfiable:
        if mode is GenerationMode.POSITIVE:
            raise


def _fuzz(base_url: str, doc: dict, real_ids: list[str]) -> tuple[list[str], Counter[str]]:
    """Run every operation in both generation modes; return the failures and status counts."""
    schema = schemathesis.openapi.from_dict(doc)
    failures: list[str] = []
    seen: Counter[str] = Counter()
    session = requests.Session()
    for result in schema.get_all_operations():
        op = result.ok()
        if op.definition.raw.get("operationId") in SKIP:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            _fuzz_op(op, mode, base_url, real_ids, session, failures, seen)
    return failures, seen


async def test_fuzzing_finds_no_server_errors(store: Store) -> None:
    """Generated valid and invalid requests never get a 5xx and always match the document."""
    async with api_client(store) as client:
        doc = await (await client.get("/api/v1/openapi.json")).json()
        base_url = str(client.make_url("")).rstrip("/")
        ids = [w.id for w in store.data.workflows]
        failures, seen = await asyncio.to_thread(_fuzz, base_url, doc, ids)
    print("fuzz statuses:", sorted(seen.items()))
    assert not failures, "\n\n".join(failures[:5])
    assert not [k for k in seen if k.endswith(tuple(f" {n}" for n in range(500, 600)))]
    for op in ("getSummary", "getFunnel", "getActions", "listWorkflows"):
        for status in (200, 401, 403) if op == "listWorkflows" else (200, 400, 401, 403, 404):
            assert seen[f"{op} {status}"] > 0, (op, status, sorted(seen.items()))
