"""A tenant's copies of the dashboards: store panels only, every relation read from its schema."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.store.roles import READABLE, RoleError, scram_verifier, tenant_role
from monitoring import rendered
from monitoring.provision import TenantGrafana, datasource_file, write
from monitoring.tenant import (
    RewriteError,
    for_tenant,
    referenced_relations,
    sql_texts,
    tenant_dashboards,
)
from tests.kit.grafana import queries, variable_queries
from tests.unit.test_dashboards import SCHEMA, _errors, _validator

DS = {"uid": "wfa-store-abc", "name": "Workflow analytics store"}
SQL = {"type": "grafana-postgresql-datasource", "uid": "${store}"}
PROM = {"type": "prometheus", "uid": "${datasource}"}


def _panel(title: str, ds: dict[str, str], text: str) -> dict[str, Any]:
    key = "rawSql" if ds is SQL else "expr"
    return {"type": "table", "title": title, "datasource": ds,
            "targets": [{"refId": "A", "datasource": ds, key: text}]}


def _board() -> dict[str, Any]:
    return {
        "panels": [
            {"type": "row", "title": "only prometheus", "panels": []},
            _panel("p1", PROM, "up"),
            {"type": "row", "title": "mixed", "panels": []},
            _panel("p2", PROM, "up"),
            _panel("s1", SQL, "SELECT 1 FROM wfa.cohort_1h c JOIN wfa.workflows w USING (x)"),
            {
                "type": "table", "title": "both", "datasource": SQL,
                "targets": [{"refId": "A", "datasource": SQL, "rawSql": "SELECT 1"},
                            {"refId": "B", "datasource": PROM, "expr": "up"}],
            },
            {"type": "row", "title": "collapsed", "collapsed": True, "panels": [
                _panel("s2", SQL, "SELECT * FROM wfa.step_runs_1h,wfa.events_1h"),
                _panel("p3", PROM, "up"),
            ]},
        ],
        "templating": {"list": [
            {"name": "datasource", "type": "datasource", "query": "prometheus"},
            {"name": "store", "type": "datasource", "query": "grafana-postgresql-datasource"},
            {"name": "instance", "type": "query", "datasource": PROM, "query": "label_values(up)"},
            {"name": "tenant", "type": "query", "datasource": SQL,
             "query": "SELECT tenant_id FROM wfa.workflows", "definition": "wfa.workflows"},
            {"name": "min_volume", "type": "textbox", "query": "20"},
        ]},
    }


def test_rewrite_keeps_store_panels_and_reads_the_tenant_schema() -> None:
    d = for_tenant(_board(), "wfa_t_acme_0123456789", DS)
    titles = [p["title"] for p in d["panels"]]
    assert titles == ["mixed", "s1", "collapsed"]
    assert [p["title"] for p in d["panels"][2]["panels"]] == ["s2"]
    assert sql_texts(d) == [
        "SELECT 1 FROM wfa_t_acme_0123456789.cohort_1h c JOIN wfa_t_acme_0123456789.workflows "
        "w USING (x)",
        "SELECT * FROM wfa_t_acme_0123456789.step_runs_1h,wfa_t_acme_0123456789.events_1h",
        "SELECT tenant_id FROM wfa_t_acme_0123456789.workflows",
    ]
    names = [v["name"] for v in d["templating"]["list"]]
    assert names == ["store", "tenant", "min_volume"]
    store = d["templating"]["list"][0]
    assert store["current"]["value"] == DS["uid"]
    assert d["templating"]["list"][1]["definition"] == "wfa_t_acme_0123456789.workflows"
    assert _board()["panels"][4]["targets"][0]["rawSql"].startswith("SELECT 1 FROM wfa.")


@pytest.mark.parametrize("schema", ["Wfa", "a-b", "x; DROP", "", "a" * 64, "wfa.x"])
def test_rewrite_refuses_a_schema_that_is_not_a_plain_identifier(schema: str) -> None:
    with pytest.raises(RewriteError):
        for_tenant(_board(), schema, DS)


def test_generated_tenant_dashboards_validate_and_read_no_wfa_relation() -> None:
    boards = tenant_dashboards("wfa_t_acme_0123456789", DS)
    originals = {n: json.loads(t) for n, t in rendered().items()}
    assert set(boards) == {n for n, d in originals.items() if sql_texts(d)}
    validator = _validator(json.loads(SCHEMA.read_text())["dashboard"])
    for name, d in boards.items():
        assert not _errors(validator, d), name
        assert {q.kind for q in queries(name, d)} == {"sql"}
        assert {k for _, k, _ in variable_queries(d)} == {"sql"}
        assert not any("wfa." in t for t in sql_texts(d))
        sql = [q.panel for q in queries(name, originals[name]) if q.kind == "sql"]
        assert [q.panel for q in queries(name, d)] == sql
    assert set(referenced_relations()) <= READABLE


def test_role_names_are_bounded_and_distinct() -> None:
    names = {tenant_role(t) for t in ("acme", "ACME", "a" * 500, "x'; DROP ROLE y; --", "é")}
    assert len(names) == 5
    assert all(n.startswith("wfa_t_") and len(n) <= 63 for n in names)
    assert all(n.replace("_", "").isalnum() and n.isascii() for n in names)
    for bad in ("*", "", "  "):
        with pytest.raises(RoleError):
            tenant_role(bad)


def test_scram_verifier_shape() -> None:
    """The stored form PostgreSQL accepts; a real login with it is tested against a server."""
    salt = bytes(range(16))
    verifier = scram_verifier("pencil", salt)
    method, rest = verifier.split("$", 1)
    params, keys = rest.split("$")
    assert method == "SCRAM-SHA-256" and params == "4096:AAECAwQFBgcICQoLDA0ODw=="
    stored, server = keys.split(":")
    assert len(base64.b64decode(stored)) == len(base64.b64decode(server)) == 32
    assert scram_verifier("pencil", salt) == verifier
    assert scram_verifier("pencil2", salt) != verifier
    assert scram_verifier("pencil") != scram_verifier("pencil")  # a fresh salt each time
    for bad in ("", "with space", "naïve"):
        with pytest.raises(RoleError):
            scram_verifier(bad)


def test_provisioning_files_name_the_role_and_hold_no_secret(tmp_path: Path) -> None:
    role = tenant_role("acme")
    t = TenantGrafana('acme "corp"\nx', role, role, 7, True)
    text = datasource_file(t)
    head, _, body = text.partition("apiVersion")
    assert all(line.startswith("#") for line in head.splitlines())
    ds = yaml.safe_load("apiVersion" + body)["datasources"][0]
    assert (ds["user"], ds["orgId"], ds["jsonData"]["timescaledb"]) == (role, 7, True)
    assert ds["secureJsonData"] == {"password": f"${{{role.upper()}_DB_PASSWORD}}"}
    paths = write(t, tmp_path)
    assert {p.relative_to(tmp_path).parts[0] for p in paths} == {"datasources", "dashboards"}
    assert len([p for p in paths if p.suffix == ".json"]) == len(tenant_dashboards(role, DS))
