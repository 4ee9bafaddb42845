"""Retention across tenants on both backends: every route for every role, status codes and the
rows of every raw and rollup relation per tenant before and after, dry runs equal to real runs.

Roles: a tenant's admin (tenant-1), the other tenant's admin (tenant-2), the operator (tenant
"*"), tenant-1's read-only and export-only tokens.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from exporter.store.backend import RAW_TABLES
from exporter.store.rollups import ROLLUPS
from tests.integration.retention_env import Env, open_env

A, B = "tenant-1", "tenant-2"
ROLES = ("a_admin", "b_admin", "operator", "a_read", "a_export")
NOT_ADMIN = ("a_read", "a_export")
Fingerprint = dict[tuple[str, str], tuple[int, str]]


@pytest.fixture
async def env(store_dsn: tuple[str, str]) -> AsyncIterator[Env]:
    """40 days of two tenants' data in a fresh store of each backend."""
    async with open_env(*store_dsn, executions=1200) as e:
        yield e


async def _relations(conn: asyncpg.Connection, backend: str) -> list[str]:
    """Every relation holding raw or rolled-up rows: tables, readable rollups, materializations."""
    out = [f"wfa.{t}" for t in RAW_TABLES]
    out += [r.relation(level) for r in ROLLUPS for level in ("1h", "1d")]
    if backend == "postgres":
        out += [f"wfa.{r.name}_{level}_mat" for r in ROLLUPS for level in ("1h", "1d")]
    else:
        out += [
            r["rel"]
            for r in await conn.fetch(
                "SELECT format('%I.%I', materialization_hypertable_schema, "
                "materialization_hypertable_name) AS rel "
                "FROM timescaledb_information.continuous_aggregates WHERE view_schema = 'wfa'"
            )
        ]
    assert len(out) == len(RAW_TABLES) + 4 * len(ROLLUPS)
    return out


async def _fingerprint(conn: asyncpg.Connection, relations: list[str]) -> Fingerprint:
    """(relation, tenant) -> (rows, digest of every row's text)."""
    out: Fingerprint = {}
    for rel in relations:
        for r in await conn.fetch(
            f"SELECT tenant_id, count(*) AS n, md5(string_agg(t::text, '|' ORDER BY t::text)) "
            f"AS h FROM {rel} t GROUP BY tenant_id"
        ):
            out[(rel, r["tenant_id"])] = (r["n"], r["h"])
    return out


def _of(fp: Fingerprint, tenant: str) -> Fingerprint:
    return {k: v for k, v in fp.items() if k[1] == tenant}


async def _policies(conn: asyncpg.Connection) -> list[Any]:
    return [
        tuple(r)
        for r in await conn.fetch(
            "SELECT dataset, workflow_id, period, updated_by FROM wfa.retention_policies "
            "ORDER BY 1, 2"
        )
    ] + [await conn.fetchval("SELECT count(*) FROM wfa.retention_audit")]


def _plan(run: dict[str, Any]) -> list[Any]:
    return [
        (
            d["dataset"],
            d["cutoff"],
            d["applied_cutoff"],
            [(p["relation"], p["from"], p["to"], p["rows"]) for p in d["dropped"]],
            [(e["workflow_id"], e["before"], e["rows"]) for e in d["deleted"]],
            d["rows"],
        )
        for d in run["datasets"]
    ]


def _overrides(body: dict[str, Any]) -> set[tuple[str, str]]:
    return {(d["dataset"], w["workflow_id"]) for d in body["datasets"] for w in d["workflows"]}


async def test_every_policy_route_for_every_role(env: Env) -> None:
    """Status codes per role on every route; refused calls change nothing; no data changes."""
    a1, a2 = env.workflows(A)[:2]
    b1 = env.workflows(B)[0]
    conn = await asyncpg.connect(env.dsn)
    try:
        rels = await _relations(conn, env.backend)
        data_before = await _fingerprint(conn, rels)
        assert _of(data_before, A) and _of(data_before, B)

        async def refused(method: str, path: str, token: str, status: int, **kw: Any) -> Any:
            before = await _policies(conn)
            got, body = await env.call(method, path, token, **kw)
            assert got == status, (method, path, token, got, body)
            assert await _policies(conn) == before, (method, path, token)
            return body

        # reads
        for token in NOT_ADMIN:
            await refused("GET", "/retention", token, 403)
            await refused("GET", "/retention/audit", token, 403)
        for token in ("a_admin", "b_admin", "operator"):
            status, body = await env.call("GET", "/retention", token)
            assert status == 200 and _overrides(body) == set()
            status, body = await env.call("GET", "/retention/audit", token)
            assert status == 200 and body["changes"] == []

        # dataset-wide: only the operator
        for method, kw in (("PUT", {"json": {"period": "60d"}}), ("DELETE", {})):
            for token in ("a_admin", "b_admin", *NOT_ADMIN):
                await refused(method, "/retention/executions", token, 403, **kw)
        body = await refused("PUT", "/retention/executions", "a_admin", 403, json={"period": None})
        assert body["param"] == "body.workflow_id" and "operator" in body["detail"]
        status, body = await env.call(
            "PUT", "/retention/executions", "operator", json={"period": "60d"}
        )
        assert status == 200 and body["policy"]["period"] == "60d"

        # per workflow: a tenant's own only (another tenant's is "not found"), the operator any
        for token, wid, status in (
            ("a_read", a1, 403),
            ("a_export", a1, 403),
            ("b_admin", a1, 404),
            ("a_admin", b1, 404),
            ("a_admin", "no-such-workflow", 404),
        ):
            body = await refused(
                "PUT", "/retention/step_runs", token, status,
                json={"period": "20d", "workflow_id": wid},
            )
            if status == 404:
                assert body["param"] == "body.workflow_id"
            await refused("DELETE", f"/retention/step_runs?workflow_id={wid}", token, status)
            await refused(
                "PUT", "/retention/step_runs", token, status,
                json={"period": None, "workflow_id": wid},
            )
        # longer than the dataset's period: the operator's call, not a tenant's
        body = await refused(
            "PUT", "/retention/step_runs", "a_admin", 400,
            json={"period": "91d", "workflow_id": a1},
        )
        assert body["param"] == "body.period" and "90d" in body["detail"]
        for token, wid, period in (
            ("a_admin", a1, "20d"),
            ("a_admin", a2, "30d"),
            ("b_admin", b1, "25d"),
            ("operator", a2, "200d"),
        ):
            status, body = await env.call(
                "PUT", "/retention/step_runs", token, json={"period": period, "workflow_id": wid}
            )
            assert status == 200, body
            assert body["policy"] == {**body["policy"], "workflow_id": wid, "period": period}

        # each tenant sees its own overrides, the operator all of them
        seen = {}
        for token in ("a_admin", "b_admin", "operator"):
            status, body = await env.call("GET", "/retention", token)
            assert status == 200
            seen[token] = _overrides(body)
        assert seen["a_admin"] == {("step_runs", a1), ("step_runs", a2)}
        assert seen["b_admin"] == {("step_runs", b1)}
        assert seen["operator"] == seen["a_admin"] | seen["b_admin"]
        status, body = await env.call("GET", "/retention", "b_admin")
        assert a1 not in json.dumps(body) and a2 not in json.dumps(body)

        # resets: PUT null and DELETE, own workflows only
        status, body = await env.call(
            "PUT", "/retention/step_runs", "a_admin", json={"period": None, "workflow_id": a1}
        )
        assert status == 200 and body["policy"] is None
        assert body["change"]["new_source"] == "none"
        status, body = await env.call("DELETE", f"/retention/step_runs?workflow_id={b1}", "b_admin")
        assert status == 200 and body["policy"] is None
        status, body = await env.call("DELETE", "/retention/executions", "operator")
        assert status == 200 and body["policy"]["source"] == "config"
        await refused("DELETE", "/retention/contacts", "operator", 404)
        await refused("DELETE", "/retention/step_runs?tenant=tenant-2", "operator", 400)

        # the audit: a tenant sees the changes of its own workflows (whoever made them) only
        audits = {}
        for token in ("a_admin", "b_admin", "operator"):
            status, body = await env.call("GET", "/retention/audit?limit=500", token)
            assert status == 200
            audits[token] = body["changes"]
        assert {c["workflow_id"] for c in audits["a_admin"]} == {a1, a2}
        assert {c["actor"] for c in audits["a_admin"]} == {"a_admin", "operator"}
        assert {c["workflow_id"] for c in audits["b_admin"]} == {b1}
        assert {c["actor"] for c in audits["b_admin"]} == {"b_admin"}
        assert [c["id"] for c in audits["operator"]] == sorted(
            (c["id"] for c in audits["operator"]), reverse=True
        )
        assert len(audits["operator"]) == 8
        assert {c["workflow_id"] for c in audits["operator"]} == {None, a1, a2, b1}
        for token, mine in (("a_admin", audits["a_admin"]), ("b_admin", audits["b_admin"])):
            assert all(c["workflow_id"] is not None for c in mine), token
            assert {c["id"] for c in mine} < {c["id"] for c in audits["operator"]}

        # runs by read and export tokens are refused, dry or real
        for token in NOT_ADMIN:
            for dry in ("true", "false"):
                await refused("POST", f"/retention/run?dry_run={dry}", token, 403)
        await refused("POST", "/retention/run?tenant=tenant-2", "a_admin", 400)
        # no call above touched a row
        assert await _fingerprint(conn, rels) == data_before
    finally:
        await conn.close()


async def test_runs_per_role_touch_only_their_rows_and_dry_runs_tell_the_truth(
    env: Env,
) -> None:
    """Tenant runs delete only the tenant's rows; the operator's covers all; dry == real."""
    a1 = env.workflows(A)[0]
    b1 = env.workflows(B)[0]
    for dataset, period in (
        ("executions", "10d"),
        ("step_runs", "10d"),
        ("workflow_events", "10d"),
        ("rollups_1h", "20d"),
    ):
        status, _ = await env.call(
            "PUT", f"/retention/{dataset}", "operator", json={"period": period}
        )
        assert status == 200
    for token, dataset, body in (
        ("a_admin", "step_runs", {"period": "5d", "workflow_id": a1}),
        ("b_admin", "executions", {"period": "3d", "workflow_id": b1}),
    ):
        status, _ = await env.call("PUT", f"/retention/{dataset}", token, json=body)
        assert status == 200
    conn = await asyncpg.connect(env.dsn)
    try:
        rels = await _relations(conn, env.backend)
        raw_of = {
            "executions": ("wfa.executions", "wfa.execution_steps"),
            "step_runs": ("wfa.step_runs",),
            "workflow_events": ("wfa.workflow_events",),
            "rollups_1h": tuple(r.relation("1h") for r in ROLLUPS),
        }
        for token in NOT_ADMIN:
            for dry in ("true", "false"):
                status, _ = await env.call("POST", f"/retention/run?dry_run={dry}", token)
                assert status == 403

        for token, own, other in (("a_admin", A, B), ("b_admin", B, A)):
            await conn.execute("ANALYZE")
            before = await _fingerprint(conn, rels)
            status, dry = await env.call("POST", "/retention/run?dry_run=true", token)
            assert status == 200 and dry["scope"] == "tenant" and dry["dry_run"] is True
            assert await _fingerprint(conn, rels) == before, f"{token}: the dry run changed rows"
            status, real = await env.call("POST", "/retention/run?dry_run=false", token)
            assert status == 200 and real["dry_run"] is False
            assert _plan(dry) == _plan(real), token
            after = await _fingerprint(conn, rels)
            assert _of(after, other) == _of(before, other), f"{token} changed {other}'s rows"
            assert set(after) <= set(before)
            theirs = set(env.workflows(other))
            text = json.dumps(real)
            assert not any(w in text for w in theirs), f"{token}'s answer names {other}'s workflows"
            got = {d["dataset"]: d for d in real["datasets"]}
            for dataset, tables in raw_of.items():
                removed = sum(
                    before[(t, own)][0] - after.get((t, own), (0, ""))[0] for t in tables
                )
                assert got[dataset]["rows"] == removed, (token, dataset)
                assert got[dataset]["dropped"] == [] and got[dataset]["error"] is None
            assert got["executions"]["rows"] > 0 and got["rollups_1h"]["rows"] > 0
            # the daily rollups keep every number
            for r in ROLLUPS:
                assert after[(r.relation("1d"), own)] == before[(r.relation("1d"), own)]

        # both tenants' last runs are their own; the operator's overview has none yet
        status, body = await env.call("GET", "/retention", "b_admin")
        assert body["last_run"]["actor"] == "b_admin"
        status, body = await env.call("GET", "/retention", "operator")
        assert body["last_run"] is None

        # the operator: a shorter store-wide period, a store-wide run over both tenants
        status, _ = await env.call(
            "PUT", "/retention/executions", "operator", json={"period": "8d"}
        )
        assert status == 200
        await conn.execute("ANALYZE")
        before = await _fingerprint(conn, rels)
        status, dry = await env.call("POST", "/retention/run?dry_run=true", "operator")
        assert status == 200 and dry["scope"] == "store"
        assert await _fingerprint(conn, rels) == before
        status, real = await env.call("POST", "/retention/run?dry_run=false", "operator")
        assert status == 200
        assert _plan(dry) == _plan(real)
        after = await _fingerprint(conn, rels)
        got = {d["dataset"]: d for d in real["datasets"]}
        for tenant in (A, B):
            removed = sum(
                before[(t, tenant)][0] - after.get((t, tenant), (0, ""))[0]
                for t in raw_of["executions"]
            )
            assert removed > 0, tenant
        removed = sum(
            before[k][0] - after.get(k, (0, ""))[0]
            for k in before
            if k[0] in raw_of["executions"]
        )
        assert got["executions"]["rows"] == removed
        assert "other_tenants_rows" not in json.dumps(real)
        status, body = await env.call("GET", "/retention", "operator")
        assert body["last_run"]["id"] == real["run_id"]
        status, body = await env.call("GET", "/retention", "a_admin")
        assert body["last_run"]["actor"] == "a_admin"
    finally:
        await conn.close()
