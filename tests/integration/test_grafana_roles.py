"""Grafana's database roles on both backends, created by real `wfa migrate` and
`wfa grafana provision` processes: the reader reads what the dashboards read and nothing else;
a tenant's role sees exactly its tenant's rows through every panel and variable query."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from exporter.config import config_from_dict
from exporter.service import ExporterService
from exporter.simulate.generate import generate
from exporter.simulate.model import SimData
from exporter.simulate.writer import create_source_schema, write
from exporter.store.roles import READABLE, READER, VIEW_OWNER, tenant_role
from monitoring.tenant import referenced_relations, sql_texts
from tests.conftest import TEST_DSN_ENV
from tests.integration.dashboard_board import Board, Choice
from tests.integration.test_dashboards_sql import ALIGNED, DASHBOARDS, LAST_DAY, NOW
from tests.kit.grafana import Query, queries, variable_queries

A, B = "tenant-1", "tenant-2"
PASSWORD = "Reader-pw-1"
NOBODY = "no-such-id"
RAW = ("wfa.executions", "wfa.execution_steps", "wfa.step_runs", "wfa.workflow_events")


async def wfa(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run `wfa ARGS` as a process; (exit code, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "exporter", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


class Viewer:
    """A dashboard as one database role sees it: every variable at All, then set per query."""

    def __init__(self, conn: asyncpg.Connection, dashboard: dict[str, Any], tsdb: bool) -> None:
        self.board = Board(conn, dashboard, tsdb)
        self.values: dict[str, list[str]] = {}

    async def resolve_variables(self) -> None:
        """Run the variable queries as this role; every option of each becomes its value."""
        await self.board.choose(Choice("all", "all"), *LAST_DAY)
        self.values = {
            name: [v for _, v in self.board.templating[name].options]
            for name, kind, _ in variable_queries(self.board.dashboard)
            if kind == "sql"
        }

    def expand(self, raw: str, start: Any, end: Any, interval: str | None = None,
               **chosen: list[str]) -> str:
        """The SQL Grafana runs for `raw` with the variables at `chosen`, else at their values."""
        variables = self.board.templating.variables
        for name, values in {**self.values, **chosen}.items():
            if name in variables:
                v = variables[name]
                v.select(list(values) if v.multi or v.include_all else values[0])
        return self.board.sql(raw, start, end, min_interval=interval)

    async def run(self, q: Query, start: Any, end: Any, **chosen: list[str]) -> list[Any]:
        """The rows of panel query `q` as this role sees them."""
        return await self.board.conn.fetch(self.expand(q.text, start, end, q.interval, **chosen))


class Filled:
    """A store of one backend with two tenants' data, and its config file."""

    def __init__(self, backend: str, dsn: str, config: Path, data: SimData) -> None:
        self.backend = backend
        self.dsn = dsn
        self.config = config
        self.data = data

    def workflows(self, tenant: str) -> list[str]:
        """Workflow ids of a tenant."""
        return sorted(w.id for w in self.data.workflows if w.tenant_id == tenant)

    def steps(self, tenant: str) -> list[str]:
        """Step ids of a tenant's workflows."""
        return sorted(
            {s.id for w in self.data.workflows if w.tenant_id == tenant for s in w.steps}
        )

    async def connect(self, user: str | None = None) -> asyncpg.Connection:
        """A connection as the store's owner, or as `user`."""
        return await asyncpg.connect(self.dsn, **({"user": user} if user else {}))


@pytest.fixture
async def filled(store_dsn: tuple[str, str], tmp_path: Path) -> AsyncIterator[Filled]:
    """The dashboard tests' data (two tenants) ingested into a fresh store of each backend."""
    backend, dsn = store_dsn
    data = generate(executions=3000, days=10, workflows=3, tenants=2, seed=17, now=NOW)
    conn = await asyncpg.connect(dsn)
    try:
        await create_source_schema(conn)
        await write(conn, data)
    finally:
        await conn.close()
    cfg = {"source": {"dsn": dsn}, "store": {"backend": backend}}
    svc = ExporterService(config_from_dict(cfg))
    await svc.open()
    try:
        await svc.poll_once()
    finally:
        await svc.close()
    path = tmp_path / "wfa.yaml"
    path.write_text(json.dumps(cfg))
    yield Filled(backend, dsn, path, data)


async def _denied(conn: asyncpg.Connection, sql: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await conn.execute(sql)


def _normal(rows: list[Any]) -> list[tuple[Any, ...]]:
    return [tuple(round(v, 9) if isinstance(v, float) else v for v in r.values()) for r in rows]


async def test_reader_reads_every_dashboard_relation_and_nothing_else(filled: Filled) -> None:
    code, out, err = await wfa(
        "migrate", "--config", str(filled.config), env={"WFA_READER_PASSWORD": PASSWORD}
    )
    assert code == 0, err
    # roles belong to the cluster: another database of it may have created the reader first
    assert re.search(rf"role {READER} (created|updated): LOGIN, SELECT on \d+ relations", out)
    code, out, err = await wfa("migrate", "--config", str(filled.config))
    assert code == 0 and f"role {READER} updated: LOGIN" in out, err  # keeps its login

    # the relations come from the generated dashboards' SQL, not from a list kept by hand
    wanted = referenced_relations()
    found = {
        m
        for d in DASHBOARDS.values()
        for text in sql_texts(d)
        for m in re.findall(r"\bwfa\.\w+", text)
    }
    assert wanted == sorted(found) and "wfa.workflows" in wanted
    assert set(wanted) <= READABLE and not set(wanted) & set(RAW)

    owner = await filled.connect()
    reader = await filled.connect(READER)
    try:
        attrs = await owner.fetchrow("SELECT * FROM pg_roles WHERE rolname = $1", READER)
        assert attrs["rolcanlogin"] and not any(
            attrs[a] for a in ("rolsuper", "rolcreaterole", "rolcreatedb", "rolbypassrls")
        )
        grants = await owner.fetch(
            "SELECT table_schema || '.' || table_name AS rel, privilege_type "
            "FROM information_schema.role_table_grants WHERE grantee = $1",
            READER,
        )
        internal = await _cagg_internals(owner, wanted) if filled.backend == "timescaledb" else []
        assert {g["privilege_type"] for g in grants} == {"SELECT"}
        assert {g["rel"] for g in grants if g["rel"].startswith("wfa.")} == set(wanted)
        # TimescaleDB passes a grant on an aggregate on to its own materialization
        assert {g["rel"] for g in grants if not g["rel"].startswith("wfa.")} <= set(internal)
        for rel in wanted:
            assert await reader.fetchval(f"SELECT count(*) FROM {rel}") > 0, rel

        # every panel and variable query runs as the reader, with the owner's answers
        tsdb = filled.backend == "timescaledb"
        for name, d in DASHBOARDS.items():
            sql = [q for q in queries(name, d) if q.kind == "sql"]
            if not sql:
                continue
            mine, theirs = Viewer(reader, d, tsdb), Viewer(owner, d, tsdb)
            await mine.resolve_variables()
            await theirs.resolve_variables()
            assert mine.values == theirs.values
            for q in sql:
                for start, end in (ALIGNED, LAST_DAY):
                    got = await mine.run(q, start, end)
                    assert got, f"{name}/{q.panel}"
                    assert _normal(got) == _normal(await theirs.run(q, start, end))

        # nothing else: raw rows, quarantine, jobs, tokens, bookkeeping, source tables
        forbidden = [
            r["rel"]
            for r in await owner.fetch(
                "SELECT format('%I.%I', n.nspname, c.relname) AS rel FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'wfa' AND c.relkind IN ('r', 'v', 'm', 'p', 'f') "
                "AND NOT c.relispartition"
            )
            if r["rel"] not in wanted
        ]
        for must in (*RAW, "wfa.rejected_rows", "wfa.export_jobs", "wfa.api_tokens",
                     "wfa.retention_audit", "wfa.counters", "wfa.cursors"):
            assert must in forbidden, must
        if tsdb:
            forbidden += [
                r["rel"]
                for r in await owner.fetch(
                    "SELECT format('%I.%I', chunk_schema, chunk_name) AS rel "
                    "FROM timescaledb_information.chunks WHERE hypertable_schema = 'wfa'"
                )
            ]
            assert len(forbidden) > 20, "raw chunks are listed"
            forbidden += [r for r in await _cagg_internals(owner, None) if r not in internal]
        forbidden += ["public.workflows", "public.workflow_executions"]
        for rel in forbidden:
            await _denied(reader, f"SELECT 1 FROM {rel} LIMIT 1")
        await _denied(
            reader,
            "SELECT * FROM wfa.cohort_range(NULL, ARRAY['x'], now(), now(), now(), now(), "
            "now(), now())",
        )

        # nor write anything, even after switching read-only transactions off
        assert await reader.fetchval("SHOW default_transaction_read_only") == "on"
        await reader.execute("SET default_transaction_read_only = off")
        wf = filled.workflows(A)[0]
        for sql in (
            "INSERT INTO wfa.workflows VALUES ('x', 'x', 'x', now(), now())",
            f"UPDATE wfa.workflows SET name = 'x' WHERE workflow_id = '{wf}'",
            "DELETE FROM wfa.workflows",
            "TRUNCATE wfa.workflows",
            "CREATE TABLE wfa.mine (x int)",
            "CREATE TABLE public.mine (x int)",
            "DROP TABLE wfa.workflows",
            "ALTER TABLE wfa.workflows ADD COLUMN x int",
        ):
            with pytest.raises((asyncpg.InsufficientPrivilegeError, asyncpg.WrongObjectTypeError)):
                await reader.execute(sql)
        with pytest.raises(asyncpg.PostgresError):
            await reader.execute("DELETE FROM wfa.cohort_1h")
        await reader.execute("GRANT SELECT ON wfa.workflows TO PUBLIC")  # grants nothing
        assert not await owner.fetchval(
            "SELECT EXISTS (SELECT 1 FROM information_schema.role_table_grants "
            "WHERE grantee = 'PUBLIC' AND table_schema = 'wfa')"
        )
        writable = await owner.fetch(
            "SELECT c.oid::regclass::text AS rel, p.priv FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "CROSS JOIN unnest(ARRAY['INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', 'REFERENCES', "
            "'TRIGGER']) AS p(priv) "
            "WHERE n.nspname = 'wfa' AND c.relkind IN ('r', 'v', 'm', 'p') "
            "AND has_table_privilege($1, c.oid, p.priv)",
            READER,
        )
        assert writable == []
        assert not await owner.fetchval("SELECT has_schema_privilege($1, 'wfa', 'CREATE')", READER)
        assert await owner.fetchval("SELECT count(*) FROM wfa.workflows") == len(
            filled.data.workflows
        )
    finally:
        await reader.close()
        await owner.close()
    await _check_password(filled)


async def _cagg_internals(conn: asyncpg.Connection, views: list[str] | None) -> list[str]:
    """Internal relations of the continuous aggregates `views` (None: of every aggregate)."""
    rows = await conn.fetch(
        """SELECT format('%I.%I', c.user_view_schema, c.user_view_name) AS view,
                  ARRAY[format('%I.%I', c.partial_view_schema, c.partial_view_name),
                        format('%I.%I', c.direct_view_schema, c.direct_view_name),
                        format('%I.%I', h.schema_name, h.table_name)]
                  || ARRAY(SELECT format('%I.%I', k.schema_name, k.table_name)
                             FROM _timescaledb_catalog.chunk k
                            WHERE k.hypertable_id = h.id) AS internal
             FROM _timescaledb_catalog.continuous_agg c
             JOIN _timescaledb_catalog.hypertable h ON h.id = c.mat_hypertable_id"""
    )
    return [r for row in rows if views is None or row["view"] in views for r in row["internal"]]


async def _check_password(filled: Filled) -> None:
    """With password authentication for the reader, only the migrated password logs in."""
    owner = await filled.connect()
    try:
        hba = Path(await owner.fetchval("SHOW hba_file"))
    finally:
        await owner.close()
    if os.environ.get(TEST_DSN_ENV):
        return  # an external server: its authentication is not ours to change
    saved = hba.read_text()
    rules = "".join(
        f"host all {READER} {net} scram-sha-256\n" for net in ("127.0.0.1/32", "::1/128")
    )
    hba.write_text(rules + saved)
    owner = await filled.connect()
    try:
        await owner.execute("SELECT pg_reload_conf()")
        await asyncio.sleep(0.3)
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(filled.dsn, user=READER, password="wrong")
        ok = await asyncpg.connect(filled.dsn, user=READER, password=PASSWORD)
        assert await ok.fetchval("SELECT current_user") == READER
        await ok.close()
    finally:
        hba.write_text(saved)
        await owner.execute("SELECT pg_reload_conf()")
        await owner.close()


async def _provision(filled: Filled, tenant: str, org: int, out: Path) -> tuple[str, str]:
    code, stdout, err = await wfa(
        "grafana", "provision", "--config", str(filled.config), "--tenant", tenant,
        "--org-id", str(org), "--out", str(out),
    )
    assert code == 0, err
    role = tenant_role(tenant)
    line = next(x for x in stdout.splitlines() if x.strip().startswith(role.upper()))
    return role, line.split("=", 1)[1]


async def test_tenant_role_sees_exactly_its_tenant_through_every_query(
    filled: Filled, tmp_path: Path
) -> None:
    out = tmp_path / "grafana"
    role_a, password = await _provision(filled, A, 2, out)
    role_b, _ = await _provision(filled, B, 3, out)
    assert role_a != role_b and re.fullmatch(r"wfa_t_[a-z0-9_]+", role_a) and len(role_a) < 64

    # the files: the tenant's role, its org, the password only as a variable
    ds = yaml.safe_load((out / "datasources" / f"{role_a}.yaml").read_text())["datasources"][0]
    assert (ds["user"], ds["orgId"]) == (role_a, 2)
    assert ds["secureJsonData"]["password"] == f"${{{role_a.upper()}_DB_PASSWORD}}"
    assert ds["jsonData"]["timescaledb"] is (filled.backend == "timescaledb")
    written = [p for p in out.rglob("*") if p.is_file()]
    assert not any(password in p.read_text() for p in written)
    provider = yaml.safe_load((out / "dashboards" / f"{role_a}.yaml").read_text())
    assert provider["providers"][0]["orgId"] == 2
    assert provider["providers"][0]["options"]["path"].endswith(f"/dashboards/{role_a}")
    boards = {
        p.name: json.loads(p.read_text()) for p in (out / "dashboards" / role_a).glob("*.json")
    }
    assert set(boards) == {n for n, d in DASHBOARDS.items() if sql_texts(d)}
    for name, d in boards.items():
        assert all(q.kind == "sql" for q in queries(name, d)), name
        assert not any("wfa." in t for t in sql_texts(d)), name
        assert [v for v in variable_queries(d) if v[1] == "prometheus"] == []
        assert len([q for q in queries(name, d)]) == len(
            [q for q in queries(name, DASHBOARDS[name]) if q.kind == "sql"]
        )

    owner = await filled.connect()
    tenant = await filled.connect(role_a)
    try:
        tsdb = filled.backend == "timescaledb"
        nobody = {"tenant": [NOBODY], "workflow": [NOBODY], "step": [NOBODY]}
        attack = {"tenant": [B], "workflow": filled.workflows(B), "step": filled.steps(B)}
        checked = 0
        for name, d in boards.items():
            mine, ref = Viewer(tenant, d, tsdb), Viewer(owner, DASHBOARDS[name], tsdb)
            await mine.resolve_variables()
            assert mine.values["tenant"] == [A]
            assert sorted(mine.values["workflow"]) == filled.workflows(A)
            ref.values.update(mine.values)
            original = {q.panel: q for q in queries(name, DASHBOARDS[name])}
            for q in queries(name, d):
                for start, end in (ALIGNED, LAST_DAY):
                    runs = [mine.values["workflow"]] if not q.repeat else [
                        [w] for w in mine.values["workflow"]
                    ]
                    for wfs in runs:
                        got = await mine.run(q, start, end, workflow=wfs)
                        assert got, f"{name}/{q.panel}: tenant-1 sees no rows"
                        want = await ref.run(original[q.panel], start, end, workflow=wfs)
                        assert _normal(got) == _normal(want), f"{name}/{q.panel}"
                    # asked for tenant-2's ids, the views answer as for ids that do not exist
                    hostile = await mine.run(q, start, end, **attack)
                    empty = await mine.run(q, start, end, **nobody)
                    assert _normal(hostile) == _normal(empty), f"{name}/{q.panel} leaks"
                    checked += 1
            for var, kind, query in variable_queries(d):
                assert kind == "sql"
                hostile = await tenant.fetch(mine.expand(query, *LAST_DAY, **attack))
                empty = await tenant.fetch(mine.expand(query, *LAST_DAY, **nobody))
                assert hostile == empty, f"{name}/{var} lists tenant-2's values"
        assert checked == 2 * sum(
            1 for n, d in DASHBOARDS.items() for q in queries(n, d) if q.kind == "sql"
        )

        # every view: only tenant-1's rows, and all of them
        views = [
            r["relname"]
            for r in await owner.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = $1",
                role_a,
            )
        ]
        assert sorted(f"wfa.{v}" for v in views) == referenced_relations()
        for v in views:
            rel = f"wfa.{v}"
            if v == "workflow_steps":
                want = await owner.fetchval(
                    "SELECT count(*) FROM wfa.workflow_steps s JOIN wfa.workflows w "
                    "USING (workflow_id) WHERE w.tenant_id = $1",
                    A,
                )
            else:
                want = await owner.fetchval(f"SELECT count(*) FROM {rel} WHERE tenant_id = $1", A)
                assert await tenant.fetchval(
                    f"SELECT count(*) FROM {v} WHERE tenant_id <> $1", A
                ) == 0
            assert want > 0 and await tenant.fetchval(f"SELECT count(*) FROM {v}") == want, v

        # and nothing else: the wfa schema, the other tenant's schema, no way to widen it
        await tenant.execute("SET default_transaction_read_only = off")
        for sql in (
            "SELECT 1 FROM wfa.workflows",
            "SELECT 1 FROM wfa.cohort_1h",
            "SELECT 1 FROM wfa.executions",
            f"SELECT 1 FROM {role_b}.workflows",
            f"CREATE VIEW {role_a}.everyone AS SELECT 1",
            f"DROP VIEW {role_a}.workflows",
            f"CREATE OR REPLACE VIEW {role_a}.workflows AS SELECT * FROM wfa.workflows",
            f"SET ROLE {VIEW_OWNER}",
            f"SET ROLE {READER}",
            f"SET ROLE {role_b}",
        ):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await tenant.execute(sql)
    finally:
        await tenant.close()
        await owner.close()


async def test_provision_refuses_the_operator_and_survives_hostile_tenant_ids(
    filled: Filled, tmp_path: Path
) -> None:
    for bad in ("*", " "):
        code, _, err = await wfa(
            "grafana", "provision", "--config", str(filled.config), "--tenant", bad,
            "--org-id", "2", "--out", str(tmp_path),
        )
        assert code == 2 and "--tenant" in err
    hostile = "t'); DROP TABLE wfa.workflows; -- \" $x ${y}\n" + "é" * 300
    role, _ = await _provision(filled, hostile, 4, tmp_path / "g")
    assert re.fullmatch(r"wfa_t_[a-z0-9_]+", role) and len(role) < 64
    owner = await filled.connect()
    conn = await filled.connect(role)
    try:
        assert await owner.fetchval("SELECT count(*) FROM wfa.workflows") > 0
        assert await conn.fetchval("SELECT count(*) FROM workflows") == 0
        assert await conn.fetchval("SELECT count(*) FROM cohort_1h") == 0
        ds = (tmp_path / "g" / "datasources" / f"{role}.yaml").read_text()
        assert yaml.safe_load(ds)["datasources"][0]["user"] == role
    finally:
        await conn.close()
        await owner.close()
