"""Source shapes: renamed tables and columns, uuid and bigint ids, edited workflow definitions."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from exporter import queries
from exporter.config import config_from_dict
from exporter.service import ExporterService

T0 = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)


def _progress(*steps: tuple[str, int, int | None, str]) -> str:
    return json.dumps(
        [
            {
                "step_id": s,
                "entered_at": (T0 + timedelta(minutes=a)).isoformat(),
                "finished_at": None if b is None else (T0 + timedelta(minutes=b)).isoformat(),
                "status": st,
            }
            for s, a, b, st in steps
        ]
    )


async def _run(cfg: dict) -> None:
    svc = ExporterService(config_from_dict(cfg))
    await svc.open()
    try:
        await svc.poll_once()
    finally:
        await svc.close()


async def test_uuid_and_bigint_ids_with_renamed_columns(db_dsn):
    conn = await asyncpg.connect(db_dsn)
    await conn.execute("""
        CREATE SCHEMA app;
        CREATE TABLE app.flows (flow_id bigint PRIMARY KEY, org text, title text, definition jsonb,
                                modified timestamptz);
        CREATE TABLE app.runs (run_id uuid PRIMARY KEY, org text, flow bigint, person bigint,
            state text, started timestamptz, done timestamptz, goal timestamptz,
            left_at timestamptz,
            why text, at_step text, progress jsonb, modified timestamptz);
        CREATE INDEX ON app.runs (modified, run_id);
    """)
    steps = [
        {"id": "a", "name": "A", "action_type": "send_email"},
        {"id": "b", "name": "B", "action_type": "webhook"},
    ]
    await conn.execute(
        "INSERT INTO app.flows VALUES (42, 'acme', 'Flow', $1, now())", json.dumps(steps)
    )
    ids = [uuid.uuid4() for _ in range(1200)]
    modified = datetime.now(UTC) - timedelta(minutes=5)
    await conn.executemany(
        "INSERT INTO app.runs VALUES ($1, 'acme', 42, $2, 'completed', $3, $4, NULL, NULL, NULL,"
        " NULL, $5, $6)",
        [
            (
                i,
                n,
                T0,
                T0 + timedelta(minutes=3),
                _progress(("a", 0, 1, "succeeded"), ("b", 1, 3, "succeeded")),
                modified,
            )
            for n, i in enumerate(ids)
        ],
    )
    cfg = {
        "source": {
            "dsn": db_dsn,
            "executions_table": "app.runs",
            "workflows_table": "app.flows",
            "columns": {
                "id": "run_id",
                "tenant_id": "org",
                "workflow_id": "flow",
                "contact_id": "person",
                "status": "state",
                "enrolled_at": "started",
                "completed_at": "done",
                "converted_at": "goal",
                "exited_at": "left_at",
                "exit_reason": "why",
                "current_step_id": "at_step",
                "step_progress": "progress",
                "updated_at": "modified",
            },
            "workflow_columns": {
                "id": "flow_id",
                "tenant_id": "org",
                "name": "title",
                "steps": "definition",
                "updated_at": "modified",
            },
        },
        "store": {"backend": "postgres"},
        "exporter": {"batch_size": 500},
    }
    await _run(cfg)
    wf = await queries.get_workflow(conn, "acme", "42")
    funnel = await queries.cohort_funnel(conn, "acme", wf, T0, T0 + timedelta(days=1))
    assert funnel["enrolled"] == funnel["completed"] == 1200
    assert [s["reached"] for s in funnel["steps"]] == [1200, 1200]
    stored = {
        r["execution_id"] for r in await conn.fetch("SELECT execution_id FROM wfa.executions")
    }
    assert stored == {str(i) for i in ids}
    await conn.close()


async def test_removed_step_keeps_history(db_dsn):
    conn = await asyncpg.connect(db_dsn)
    from exporter.simulate.writer import create_source_schema

    await create_source_schema(conn)
    steps = [
        {"id": "s1", "name": "One", "action_type": "send_email"},
        {"id": "s2", "name": "Two", "action_type": "wait"},
        {"id": "s3", "name": "Three", "action_type": "webhook"},
    ]
    await conn.execute("INSERT INTO workflows VALUES ('w', 't', 'W', $1, now())", json.dumps(steps))
    await conn.execute(
        "INSERT INTO workflow_executions VALUES ('e1', 't', 'w', 'c', 'completed', $1, $2, NULL,"
        " NULL, NULL, NULL, $3, now())",
        T0,
        T0 + timedelta(minutes=9),
        _progress(("s1", 0, 1, "succeeded"), ("s2", 1, 5, "succeeded"), ("s3", 5, 9, "succeeded")),
    )
    cfg = {"source": {"dsn": db_dsn}, "store": {"backend": "postgres"}}
    await _run(cfg)
    await conn.execute(
        "UPDATE workflows SET steps = $1, updated_at = now() + interval '1 second'",
        json.dumps([steps[0], steps[2]]),
    )
    await _run(cfg)
    wf = await queries.get_workflow(conn, "t", "w")
    assert [s.step_id for s in wf.steps] == ["s1", "s3"]
    assert [s.step_id for s in wf.removed_steps] == ["s2"]
    span = (T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    acts = await queries.actions(conn, "t", wf, *span)
    by_step = {a["step_id"]: a for a in acts["actions"]}
    assert by_step["s2"]["executions"] == 1 and by_step["s2"]["index"] is None
    funnel = await queries.cohort_funnel(conn, "t", wf, *span)
    assert [s["step_id"] for s in funnel["steps"]] == ["s1", "s3"]
    await conn.close()


def test_check_config_names_each_problem(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "source: {dsn: 'postgresql://x@127.0.0.1/db', bogus: 1}\n"
        "store: {backend: mysql}\n"
        "exporter: {poll_interval: fast, batch_size: 0}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 1
    for needle in (
        "source.bogus",
        "store.backend",
        "exporter.poll_interval: invalid duration 'fast'",
        "exporter.batch_size",
    ):
        assert needle in run.stderr, run.stderr
    good = tmp_path / "good.yaml"
    good.write_text("source: {dsn: 'postgresql://x@127.0.0.1/db'}\n")
    ok = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", "--config", str(good)],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
