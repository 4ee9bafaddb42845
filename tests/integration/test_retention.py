"""Retention over HTTP on both backends: policies and their audit, refusals, dry run equal to the
real run, raw rows gone after a run while the daily numbers stay the same."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from exporter import queries
from exporter.runtime import Jobs
from exporter.store.locks import RETENTION as RETENTION_LOCK
from exporter.store.partitions import day_floor
from exporter.store.rollups import ROLLUPS
from tests.integration.retention_env import Env, open_env

DAY = timedelta(days=1)


@pytest.fixture
async def env(store_dsn: tuple[str, str]) -> AsyncIterator[Env]:
    """40 days of simulated data ingested into a fresh store of each backend."""
    async with open_env(*store_dsn) as e:
        yield e


async def test_policies_refusals_and_audit(env: Env) -> None:
    status, body = await env.call("GET", "/retention")
    assert status == 200
    assert body["backend"] == env.backend and body["minimum_period"] == "1d"
    got = {d["dataset"]: (d["period"], d["source"]) for d in body["datasets"]}
    assert got == {
        "executions": ("90d", "config"),
        "step_runs": ("90d", "config"),
        "workflow_events": ("90d", "config"),
        "rollups_1h": ("400d", "config"),
        "rollups_1d": ("730d", "config"),
    }
    for dataset in ("executions", "step_runs", "workflow_events", "rollups_1h"):
        status, body = await env.call(
            "PUT", f"/retention/{dataset}", "operator", json={"period": "12h"}
        )
        assert status == 400 and body["param"] == "body.period"
        assert "at least 1d" in body["detail"] and "refresh" in body["detail"]
    for bad in ("soon", "-5d", "0s"):
        status, body = await env.call(
            "PUT", "/retention/executions", "operator", json={"period": bad}
        )
        assert status == 400 and body["param"] == "body.period", bad
    status, _ = await env.call("PUT", "/retention/contacts", "operator", json={"period": "30d"})
    assert status == 404
    other = env.workflows("tenant-2")[0]
    status, body = await env.call(
        "PUT", "/retention/step_runs", json={"period": "30d", "workflow_id": other}
    )
    assert status == 404 and body["param"] == "body.workflow_id"
    status, _ = await env.call("PUT", "/retention/executions", "a_read", json={"period": "30d"})
    assert status == 403

    status, body = await env.call("PUT", "/retention/executions", json={"period": "30d"})
    assert status == 403 and body["param"] == "body.workflow_id"
    status, body = await env.call(
        "PUT", "/retention/executions", "operator", json={"period": "30d"}
    )
    assert status == 200
    assert body["policy"]["period"] == "30d" and body["policy"]["source"] == "store"
    assert body["policy"]["updated_by"] == "operator"
    change = body["change"]
    assert (change["old_period"], change["new_period"]) == ("90d", "30d")
    assert (change["old_source"], change["new_source"]) == ("config", "store")
    assert change["actor"] == "operator"
    assert abs(datetime.fromisoformat(change["changed_at"].replace("Z", "+00:00"))
               - datetime.now(UTC)) < timedelta(minutes=1)
    own = env.workflows("tenant-1")[0]
    status, body = await env.call(
        "PUT", "/retention/step_runs", json={"period": "20d", "workflow_id": own}
    )
    assert status == 200 and body["policy"]["workflow_id"] == own
    status, body = await env.call(
        "PUT", "/retention/executions", "operator", json={"period": None}
    )
    assert status == 200 and body["policy"] == {
        **body["policy"], "period": "90d", "source": "config"
    }

    status, body = await env.call("GET", "/retention/audit", "operator")
    assert status == 200
    assert [(c["dataset"], c["workflow_id"], c["old_period"], c["new_period"])
            for c in body["changes"]] == [
        ("executions", None, "30d", "90d"),
        ("step_runs", own, None, "20d"),
        ("executions", None, "90d", "30d"),
    ]
    # a tenant sees the changes of its own workflows only, the other tenant none of them
    status, body = await env.call("GET", "/retention/audit")
    assert [c["workflow_id"] for c in body["changes"]] == [own]
    status, body = await env.call("GET", "/retention/audit", "b_admin")
    assert [c["workflow_id"] for c in body["changes"]] == []
    status, body = await env.call("GET", "/retention")
    steps = next(d for d in body["datasets"] if d["dataset"] == "step_runs")
    assert [(w["workflow_id"], w["period"]) for w in steps["workflows"]] == [(own, "20d")]
    status, body = await env.call("GET", "/retention", "b_admin")
    steps = next(d for d in body["datasets"] if d["dataset"] == "step_runs")
    assert steps["workflows"] == []

    # runs: one at a time, dry by default, admin only; the scheduler runs them daily
    status, body = await env.call("POST", "/retention/run?dry_run=maybe")
    assert status == 400 and body["param"] == "dry_run"
    status, _ = await env.call("POST", "/retention/run", "a_read")
    assert status == 403
    conn = await asyncpg.connect(env.dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", RETENTION_LOCK)
        status, body = await env.call("POST", "/retention/run")
        assert status == 409 and "in progress" in body["detail"]
    finally:
        await conn.close()
    status, body = await env.call("POST", "/retention/run")
    assert status == 200 and body["dry_run"] is True
    scheduler = Jobs()
    env.svc.start(scheduler)
    job = scheduler.get_job("retention")
    assert job is not None
    assert job.trigger.interval == env.cfg.retention.run_interval == timedelta(days=1)


async def _daily(conn: asyncpg.Connection, wids: list[str], start, end) -> dict[str, Any]:
    out = {}
    for wid in wids:
        wf = await queries.get_workflow(conn, None, wid)
        assert wf is not None
        s = await queries.summary(conn, None, wf, start, end, "day", "UTC")
        f = await queries.cohort_funnel(conn, None, wf, start, end)
        a = await queries.actions(conn, None, wf, start, end)
        out[wid] = (s["series"], f["steps"], [x["executions"] for x in a["actions"]])
    return out


async def _counts(conn: asyncpg.Connection) -> dict[str, int]:
    out = {
        t: await conn.fetchval(f"SELECT count(*) FROM wfa.{t}")
        for t in ("executions", "execution_steps", "step_runs", "workflow_events")
    }
    out["rollups_1h"] = 0
    for r in ROLLUPS:
        out["rollups_1h"] += await conn.fetchval(f"SELECT count(*) FROM {r.relation('1h')}")
    return out


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


async def test_dry_run_matches_real_run_and_daily_numbers_stay(env: Env) -> None:
    a1, a2 = env.workflows("tenant-1")[:2]
    b1 = env.workflows("tenant-2")[0]
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
    # a tenant may only shorten its workflows' retention; the operator may lengthen it
    status, body = await env.call(
        "PUT", "/retention/workflow_events", json={"period": "15d", "workflow_id": a2}
    )
    assert status == 400 and body["param"] == "body.period" and "10d" in body["detail"]
    for token, body in (
        ("a_admin", {"period": "5d", "workflow_id": a1, "_ds": "step_runs"}),
        ("operator", {"period": "15d", "workflow_id": a2, "_ds": "workflow_events"}),
        ("b_admin", {"period": "3d", "workflow_id": b1, "_ds": "executions"}),
    ):
        ds = body.pop("_ds")
        status, _ = await env.call("PUT", f"/retention/{ds}", token, json=body)
        assert status == 200

    now = datetime.now(UTC)
    run_now = now.replace(minute=0, second=0, microsecond=0)  # runs count from the hour
    start, end = day_floor(now - timedelta(days=39)), day_floor(now)
    wids = [w.id for w in env.data.workflows]
    conn = await asyncpg.connect(env.dsn)
    try:
        await conn.execute("ANALYZE")
        daily = await _daily(conn, wids, start, end)
        before = await _counts(conn)

        status, dry = await env.call("POST", "/retention/run?dry_run=true", "operator")
        assert status == 200 and dry["dry_run"] is True and dry["scope"] == "store"
        assert await _counts(conn) == before
        assert dry["rows"] > 0
        status, real = await env.call(
            "POST", "/retention/run", "operator", params={"dry_run": "false"}
        )
        assert status == 200 and real["dry_run"] is False
        assert _plan(dry) == _plan(real)
        after = await _counts(conn)
        got = {d["dataset"]: d for d in real["datasets"]}
        raw_removed = sum(before[t] - after[t] for t in ("executions", "execution_steps"))
        assert raw_removed == got["executions"]["rows"]
        assert before["step_runs"] - after["step_runs"] == got["step_runs"]["rows"]
        assert before["workflow_events"] - after["workflow_events"] == got["workflow_events"][
            "rows"
        ]
        for name in ("executions", "step_runs", "workflow_events"):
            d = got[name]
            assert d["error"] is None and d["dropped"], name
            cut = datetime.fromisoformat(d["applied_cutoff"].replace("Z", "+00:00"))
            assert cut <= now - timedelta(days=10)
        # raw rows older than the policy are gone (up to the partition holding the cutoff)
        col = {"executions": "enrolled_at", "step_runs": "entered_at",
               "workflow_events": "occurred_at"}
        for table, time_col in col.items():
            old = await conn.fetchval(
                f"SELECT count(*) FROM wfa.{table} WHERE {time_col} < $1 "
                "AND NOT workflow_id = ANY($2::text[])",
                now - timedelta(days=11) - DAY,
                [a2] if table == "workflow_events" else [],
            )
            assert old == 0, table
        assert await conn.fetchval(
            "SELECT count(*) FROM wfa.step_runs WHERE workflow_id = $1 AND entered_at < $2",
            a1,
            run_now - timedelta(days=5),
        ) == 0
        assert await conn.fetchval(
            "SELECT count(*) FROM wfa.executions WHERE workflow_id = $1 AND enrolled_at < $2",
            b1,
            run_now - timedelta(days=3),
        ) == 0
        kept = await conn.fetchval(
            "SELECT count(*) FROM wfa.workflow_events WHERE workflow_id = $1 "
            "AND occurred_at < $2",
            a2,
            now - timedelta(days=11),
        )
        assert kept > 0
        events = got["workflow_events"]
        assert [e["workflow_id"] for e in events["deleted"]] == [None]
        # the tenant-2 override is done; the operator's answer covers every tenant
        assert [e["workflow_id"] for e in got["executions"]["deleted"]] == [b1]
        assert got["executions"]["deleted"][0]["rows"] > 0
        # hourly rollups before the cutoff are gone, daily ones kept the numbers
        assert got["rollups_1h"]["error"] is None
        assert got["rollups_1h"]["rows"] > 0
        assert before["rollups_1h"] - after["rollups_1h"] == got["rollups_1h"]["rows"]
        assert await _daily(conn, wids, start, end) == daily

        status, again = await env.call("POST", "/retention/run?dry_run=true", "operator")
        assert status == 200
        assert all(not d["dropped"] and not any(e["rows"] for e in d["deleted"])
                   for d in again["datasets"] if d["dataset"] != "rollups_1d")
        status, body = await env.call("GET", "/retention", "operator")
        assert body["last_run"]["id"] == real["run_id"] and body["last_run"]["trigger"] == "api"
        assert body["last_run"]["rows"] == real["rows"]
        # a tenant's overview shows the runs over its own rows only: none so far
        status, body = await env.call("GET", "/retention")
        assert status == 200 and body["last_run"] is None
    finally:
        await conn.close()
