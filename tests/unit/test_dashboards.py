"""Dashboards: generator drift, Grafana's schema, lint rules, metric names and provisioning."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.config import config_from_dict
from monitoring import BUILDERS, DEFAULT_DIR, drift, files, rendered, write
from monitoring.__main__ import main as generate_main
from monitoring.panels import POSTGRES_TYPE, PROMETHEUS_UID, STORE_UID
from monitoring.settings import Settings
from tests.kit.grafana import queries, variable_queries

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests/fixtures/grafana/dashboard.schema.json"
METRICS_DOC = ROOT / "docs/metrics.md"
RULES_DIR = ROOT / "provisioning/prometheus/rules"
GRAFANA_PROVISIONING = ROOT / "provisioning/grafana"

DASHBOARDS = {name: json.loads(text) for name, text in rendered().items()}
ROLLUP_RELATIONS = {
    f"wfa.{name}_{level}"
    for name in ("events", "step_runs", "cohort", "cohort_steps")
    for level in ("1h", "1d")
}
SQL_RELATIONS = ROLLUP_RELATIONS | {"wfa.workflows", "wfa.workflow_steps"}
PROMETHEUS_BUILTIN = {"up"}


def _validator(schema: dict[str, Any]) -> Any:
    """A draft-07 validator from jsonschema_rs or jsonschema, whichever is installed."""
    try:
        import jsonschema_rs

        return jsonschema_rs.Draft7Validator(schema)
    except ImportError:
        pass
    try:
        import jsonschema
    except ImportError:
        pytest.skip("no JSON schema validator installed (pip install jsonschema-rs or jsonschema)")
    return jsonschema.Draft7Validator(schema)


def _errors(validator: Any, instance: Any) -> list[str]:
    out = []
    for e in validator.iter_errors(instance):
        path = getattr(e, "instance_path", None)
        path = list(e.absolute_path) if path is None else path
        out.append(f"{'/'.join(map(str, path))}: {e.message}")
    return out


def _panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in dashboard["panels"] if p["type"] != "row"]


def documented_metrics() -> set[str]:
    """Metric names in the tables of docs/metrics.md."""
    text = METRICS_DOC.read_text()
    return set(re.findall(r"^\| `(wfa_[a-z0-9_]+)`", text, re.MULTILINE))


def recorded_names() -> set[str]:
    """Names recorded by the Prometheus rule files."""
    out = set()
    for path in RULES_DIR.glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            out |= {r["record"] for r in group["rules"] if "record" in r}
    return out


def metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (wfa_*, level:metric:operation, up)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # drop string literals
    expr = re.sub(r"\{[^}]*\}", "{}", expr)  # drop label matchers
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set(re.findall(r"\b(wfa_[a-z0-9_]+|[a-z_]+:[a-z0-9_]+:[a-z0-9_]+)\b", expr))
    names |= {n for n in re.findall(r"\b([a-z_]+)\s*\{", expr) if n in PROMETHEUS_BUILTIN}
    return names


def base_metric(name: str, documented: set[str]) -> str:
    """The documented family of a histogram series name (`_bucket`, `_sum`, `_count`)."""
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and name.removesuffix(suffix) in documented:
            return name.removesuffix(suffix)
    return name


def all_promql() -> list[tuple[str, str]]:
    """(where, expression) of every PromQL the project ships: dashboards, rules, Grafana alerts."""
    out = [
        (f"{q.dashboard}/{q.panel}/{q.ref}", q.text)
        for name, d in DASHBOARDS.items()
        for q in queries(name, d)
        if q.kind == "prometheus"
    ]
    for path in RULES_DIR.glob("*.yml"):
        for group in yaml.safe_load(path.read_text())["groups"]:
            for r in group["rules"]:
                out.append((f"{path.name}/{r.get('alert') or r.get('record')}", r["expr"]))
    for path in (GRAFANA_PROVISIONING / "alerting").glob("*.yaml"):
        for group in yaml.safe_load(path.read_text()).get("groups", []):
            for rule in group["rules"]:
                for q in rule["data"]:
                    if q["datasourceUid"] != "__expr__":
                        out.append(
                            (f"{path.name}/{rule['title']}/{q['refId']}", q["model"]["expr"])
                        )
    return out


# generator ---------------------------------------------------------------------------------


def test_committed_files_match_the_generator() -> None:
    stale = drift(ROOT)
    assert not stale, f"regenerate with `python -m monitoring`: {stale} differ"
    committed = {p.name for p in DEFAULT_DIR.glob("*.json")}
    assert committed == set(BUILDERS), "dashboards/ holds files the generator does not make"
    rules = {p.name for p in RULES_DIR.glob("*.yml")}
    assert {f"provisioning/prometheus/rules/{n}" for n in rules} <= set(files())
    assert len(files()) == len(BUILDERS) + 4


def test_drift_is_detected(tmp_path: Path) -> None:
    write(tmp_path)
    assert drift(tmp_path) == []
    path = tmp_path / "dashboards/overview.json"
    path.write_text(path.read_text().replace('"refresh": "10s"', '"refresh": "1m"'))
    rules = tmp_path / "provisioning/prometheus/rules/wfa-alerts.yml"
    rules.write_text(rules.read_text().replace("for: 15m", "for: 1h", 1))
    assert drift(tmp_path) == [
        "dashboards/overview.json",
        "provisioning/prometheus/rules/wfa-alerts.yml",
    ]
    assert generate_main(["--out", str(tmp_path), "--check"]) == 1
    assert generate_main(["--out", str(tmp_path)]) == 0
    assert generate_main(["--out", str(tmp_path), "--check"]) == 0


def _custom() -> Settings:
    return Settings.of(
        config_from_dict(
            {
                "source": {"dsn": "postgresql://u@h/db"},
                "metrics": {"windows": ["30m", "1d"], "min_volume": 7},
                "monitoring": {
                    "job": "wfa-prod",
                    "runbook_url": "https://wiki.example.com/wfa/runbook#{anchor}",
                    "dropoff": {"ratio": 0.42, "window": "30m", "for": "3m"},
                    "dropoff_jump": {"window": "30m"},
                    "failure": {"ratio": 0.25, "window": "10m", "for": "2m"},
                },
            }
        )
    )


def test_one_config_drives_rules_dashboards_and_grafana_alerts() -> None:
    out = files(_custom())
    default = files()
    alerts = yaml.safe_load(out["provisioning/prometheus/rules/wfa-alerts.yml"])
    by_name = {r["alert"]: r for g in alerts["groups"] for r in g["rules"]}
    high = by_name["WfaStepDropoffHigh"]
    assert high["for"] == "3m" and 'window="30m"' in high["expr"]
    assert high["annotations"]["runbook_url"] == (
        "https://wiki.example.com/wfa/runbook#wfastepdropoffhigh"
    )
    assert "rate(wfa_step_outcomes_total" in by_name["WfaActionFailureRatioHigh"]["expr"]
    assert "[10m]" in by_name["WfaActionFailureRatioHigh"]["expr"]
    everything = "\n".join(out.values())
    assert 'job="wfa-exporter"' not in everything
    assert everything.count('job="wfa-prod"') > 50
    for r in (r for g in alerts["groups"] for r in g["rules"]):
        exprs = r["expr"]
        for sel in re.findall(r"\b(?:wfa_|up\b)\w*\{[^}]*\}", exprs):
            assert 'job="wfa-prod"' in sel, (r["alert"], sel)
    recording = yaml.safe_load(out["provisioning/prometheus/rules/wfa-recording.yml"])
    thresholds = {
        r["record"]: r["expr"]
        for g in recording["groups"]
        for r in g["rules"]
        if ":alert_" in r["record"]
    }
    assert thresholds["wfa:alert_dropoff_ratio:threshold"] == "vector(0.42)"
    assert thresholds["wfa:alert_failure_ratio:threshold"] == "vector(0.25)"
    assert thresholds["wfa:alert_min_volume:threshold"] == "vector(7)"
    grafana = yaml.safe_load(out["provisioning/grafana/alerting/wfa-dropoff.yaml"])
    g_high = next(
        r for g in grafana["groups"] for r in g["rules"] if r["title"] == "WfaStepDropoffHigh"
    )
    assert g_high["for"] == "3m"
    cond = next(q for q in g_high["data"] if q["refId"] == "C")
    assert cond["model"]["conditions"][0]["evaluator"]["params"] == [0.42]
    assert ">= 7" in g_high["data"][0]["model"]["expr"]
    scrape = yaml.safe_load(out["provisioning/prometheus/prometheus.yml"])
    assert scrape["scrape_configs"][0]["job_name"] == "wfa-prod"
    funnel = json.loads(out["dashboards/funnel.json"])
    variables = {v["name"]: v for v in funnel["templating"]["list"]}
    assert variables["min_volume"]["current"]["value"] == "7"
    assert [o["value"] for o in variables["window"]["options"]] == ["30m", "1d"]
    assert variables["window"]["current"]["value"] == "30m"
    table = next(p for p in funnel["panels"] if p["title"] == "Cohort funnel: drop-off per step")
    colors = table["fieldConfig"]["overrides"][0]["properties"]
    assert {"color": "red", "value": 0.42} in next(
        p["value"]["steps"] for p in colors if p["id"] == "thresholds"
    )
    assert out != default


def test_bad_monitoring_config_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    bad = tmp_path / "wfa.yaml"
    bad.write_text(
        "source: {dsn: 'postgresql://u@h/db'}\n"
        "monitoring:\n  job: 'a\"b'\n  runbook_url: docs/runbook.md\n"
        "  dropoff: {ratio: 1.5, window: 2h, fr: 1m}\n"
        "metrics: {exit_reasons: [other]}\n"
    )
    assert generate_main(["--config", str(bad), "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    for key in (
        "monitoring.job",
        "monitoring.runbook_url",
        "monitoring.dropoff.ratio",
        "monitoring.dropoff.fr",
        "metrics.exit_reasons[0]",
    ):
        assert key in err, (key, err)
    window = tmp_path / "w.yaml"
    window.write_text("source: {dsn: 'postgresql://u@h/db'}\nmonitoring: {dropoff: {window: 2h}}\n")
    assert generate_main(["--config", str(window), "--out", str(tmp_path)]) == 1
    assert "monitoring.dropoff.window: must be one of metrics.windows" in capsys.readouterr().err
    assert not (tmp_path / "dashboards").exists(), "nothing is written from a bad config"


# schema ------------------------------------------------------------------------------------


def test_dashboards_validate_against_grafana_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    validator = _validator(schema["dashboard"])
    problems = []
    for name, d in DASHBOARDS.items():
        problems += [f"{name}: {e}" for e in _errors(validator, d)]
    assert not problems, "\n".join(problems)


def test_schema_rejects_misspelt_keys() -> None:
    schema = json.loads(SCHEMA.read_text())
    d = json.loads(rendered()["overview.json"])
    d["panels"][1]["titel"] = d["panels"][1].pop("title")
    assert _errors(_validator(schema["dashboard"]), d)
    options = dict(d["panels"][1]["options"], graphMode="sparkline")
    assert _errors(_validator(schema["panels"]["stat"]["options"]), options)


def test_panel_options_validate_against_plugin_schemas() -> None:
    schema = json.loads(SCHEMA.read_text())
    problems = []
    for name, d in DASHBOARDS.items():
        for p in _panels(d):
            plugin = schema["panels"].get(p["type"])
            assert plugin is not None, f"{name}: no schema for panel type {p['type']}"
            where = f"{name}/{p['title']}"
            problems += [
                f"{where} options {e}" for e in _errors(_validator(plugin["options"]), p["options"])
            ]
            if "fieldConfig" not in plugin:
                continue
            custom_schema = plugin["fieldConfig"]
            custom = p["fieldConfig"]["defaults"].get("custom", {})
            problems += [f"{where} custom {e}" for e in _errors(_validator(custom_schema), custom)]
            definitions = custom_schema["definitions"]
            props = definitions["FieldConfig"].get("properties", {})
            for o in p["fieldConfig"]["overrides"]:
                for prop in o["properties"]:
                    if not prop["id"].startswith("custom."):
                        continue
                    key = prop["id"].removeprefix("custom.")
                    assert key in props, f"{where}: unknown field option {prop['id']}"
                    sub = {**props[key], "definitions": definitions}
                    problems += [
                        f"{where} {prop['id']} {e}" for e in _errors(_validator(sub), prop["value"])
                    ]
    assert not problems, "\n".join(problems)


# lint (in the spirit of grafana/dashboard-linter) -------------------------------------------


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_dashboard_settings(name: str) -> None:
    d = DASHBOARDS[name]
    assert d["uid"].startswith("wfa-") and len(d["uid"]) <= 40
    assert d["refresh"] == "10s" and d["liveNow"] is True
    assert d["schemaVersion"] >= 39
    assert d["title"] and d["description"]
    assert "workflow-analytics" in d["tags"]


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_data_source_variables(name: str) -> None:
    d = DASHBOARDS[name]
    variables = {v["name"]: v for v in d["templating"]["list"]}
    kinds = {q.kind for q in queries(name, d)}
    if "prometheus" in kinds:
        v = variables["datasource"]
        assert v["type"] == "datasource" and v["query"] == "prometheus"
        assert v["current"]["value"] == PROMETHEUS_UID
    if "sql" in kinds:
        v = variables["store"]
        assert v["type"] == "datasource" and v["query"] == POSTGRES_TYPE
        assert v["current"]["value"] == STORE_UID
    for p in _panels(d):
        refs = [p["datasource"], *(t["datasource"] for t in p["targets"])]
        for ref in refs:
            assert ref["uid"] in ("${datasource}", "${store}"), f"{p['title']}: fixed data source"
    for v in d["templating"]["list"]:
        if v["type"] == "query":
            assert v["datasource"]["uid"] in ("${datasource}", "${store}")
        assert v.get("description"), f"variable {v['name']} has no description"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_panels_have_units_descriptions_and_thresholds(name: str) -> None:
    d = DASHBOARDS[name]
    titles = [p["title"] for p in _panels(d)]
    assert len(titles) == len(set(titles)), "panel titles repeat"
    for p in _panels(d):
        defaults = p["fieldConfig"]["defaults"]
        assert p["description"].strip(), f"{p['title']}: no description"
        assert defaults.get("unit"), f"{p['title']}: no unit"
        steps = defaults["thresholds"]["steps"]
        assert steps and steps[0]["value"] is None, f"{p['title']}: thresholds need a base step"
        values = [s["value"] for s in steps[1:]]
        assert values == sorted(values), f"{p['title']}: thresholds out of order"
        assert p["targets"], f"{p['title']}: no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), f"{p['title']}: refIds repeat"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_layout(name: str) -> None:
    d = DASHBOARDS[name]
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, f"{p['title']}: outside the grid"
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not (mine & cells), f"{p['title']}: overlaps another panel"
        cells |= mine


def _range_selectors(expr: str) -> list[tuple[str, str]]:
    """(function, range) of every `fn(selector[range])` in an expression."""
    return re.findall(r"\b(\w+)\(\s*[a-zA-Z_:][\w:]*(?:\{[^}]*\})?\[([^\]]+)\]", expr)


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_promql_rate_intervals_and_counters(name: str) -> None:
    for q in queries(name, DASHBOARDS[name]):
        if q.kind != "prometheus":
            continue
        where = f"{q.panel}/{q.ref}"
        for fn, window in _range_selectors(q.text):
            assert fn in ("rate", "increase"), f"{where}: {fn}() over a range"
            if q.instant:
                assert window == "$__range", f"{where}: instant query over [{window}]"
            else:
                assert window == "$__rate_interval", f"{where}: use [$__rate_interval]"
        stripped = re.sub(r'"(?:[^"\\]|\\.)*"', '""', q.text)
        for m in re.finditer(r"\b(wfa_\w+?(?:_total|_bucket))\b(\{[^}]*\})?(\[)?", stripped):
            assert m.group(3), f"{where}: counter {m.group(1)} used without rate()/increase()"


@pytest.mark.parametrize("name", sorted(DASHBOARDS))
def test_sql_queries_read_rollups_with_time_macros(name: str) -> None:
    for q in queries(name, DASHBOARDS[name]):
        if q.kind != "sql":
            continue
        where = f"{q.panel}/{q.ref}"
        relations = set(re.findall(r"\b(?:FROM|JOIN)\s+(wfa\.\w+)", q.text, re.IGNORECASE))
        assert relations, f"{where}: reads no wfa relation"
        assert relations <= SQL_RELATIONS, f"{where}: reads {relations - SQL_RELATIONS}"
        assert relations & ROLLUP_RELATIONS, f"{where}: reads no rollup"
        assert "$__timeFilter(" in q.text, f"{where}: not limited to the dashboard time range"
        if q.fmt == "time_series":
            assert "$__timeGroupAlias(" in q.text, f"{where}: time series without time buckets"
            assert re.search(r"ORDER BY 1\b", q.text), f"{where}: time series must be sorted"
        assert "workflow_id IN ($workflow)" in q.text, f"{where}: ignores the workflow variable"


def test_no_typed_variable_reaches_sql_unquoted() -> None:
    """Multi-value variables are quoted by the data source; any other is a cast literal."""
    for name, d in DASHBOARDS.items():
        variables = {v["name"]: v for v in d["templating"]["list"]}
        assert not [v for v in variables.values() if v["type"] == "textbox"], name
        texts = [q.text for q in queries(name, d) if q.kind == "sql"]
        texts += [q for _, kind, q in variable_queries(d) if kind == "sql"]
        for text in texts:
            for m in re.finditer(r"\$(\w+)|\$\{(\w+)(?::(\w+))?\}(::\w+)?", text):
                var = m.group(1) or m.group(2)
                if var not in variables:
                    assert var.startswith("__"), (name, var)
                    continue
                v = variables[var]
                if v.get("multi") or v.get("includeAll"):
                    assert m.group(3) in (None, "sqlstring"), (name, m.group(0))
                else:
                    assert m.group(3) == "sqlstring" and m.group(4), (name, m.group(0))


def test_sql_panels_request_hour_buckets() -> None:
    for name, d in DASHBOARDS.items():
        for p in _panels(d):
            sql_series = [
                t for t in p["targets"] if t.get("format") == "time_series" and "rawSql" in t
            ]
            if sql_series:
                assert p.get("interval") == "1h", f"{name}/{p['title']}: min interval 1h"


def test_funnel_dashboard_repeats_rows_per_workflow_side_by_side() -> None:
    d = DASHBOARDS["funnel.json"]
    rows = [p for p in d["panels"] if p["type"] == "row"]
    assert rows[0]["repeat"] == "workflow"
    titles = [p["title"] for p in d["panels"][1:5]]
    assert [t.split(":")[0] for t in titles] == ["Cohort funnel", "Activity funnel"] * 2
    first, second = d["panels"][1], d["panels"][2]
    assert first["gridPos"]["y"] == second["gridPos"]["y"]
    assert first["gridPos"]["x"] == 0 and second["gridPos"]["x"] == 12


# metric names ------------------------------------------------------------------------------


def test_every_metric_named_is_documented_or_recorded() -> None:
    documented = documented_metrics()
    assert len(documented) > 20, "could not read docs/metrics.md"
    recorded = recorded_names()
    problems = []
    for where, expr in all_promql():
        for name in metric_names(expr):
            if name in PROMETHEUS_BUILTIN or name in recorded:
                continue
            if base_metric(name, documented) not in documented:
                problems.append(f"{where}: {name}")
    assert not problems, "metrics not in docs/metrics.md:\n" + "\n".join(problems)


def test_metric_name_extraction() -> None:
    expr = (
        'sum by (step) (rate(wfa_step_runs_total{step=~"$step"}[5m])) * on (workflow) '
        "group_left (name) wfa_workflow_info / workflow_step:wfa_funnel_dropoff:ratio "
        '+ label_replace(wfa_step_info, "x", "$1", "name", "(.*)") + absent(up{job="a"})'
    )
    assert metric_names(expr) == {
        "wfa_step_runs_total",
        "wfa_workflow_info",
        "workflow_step:wfa_funnel_dropoff:ratio",
        "wfa_step_info",
        "up",
    }


def test_variable_queries_use_the_store_catalogue() -> None:
    for name, d in DASHBOARDS.items():
        for var, kind, query in variable_queries(d):
            if kind == "sql":
                relations = set(re.findall(r"\b(?:FROM|JOIN)\s+(wfa\.\w+)", query))
                assert relations <= {"wfa.workflows", "wfa.workflow_steps"}, (name, var)
            else:
                inner = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
                assert inner, (name, var, query)
                assert metric_names(inner.group(1)) <= documented_metrics()


# provisioning ------------------------------------------------------------------------------


def _yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def test_provisioned_data_sources_match_the_dashboards() -> None:
    ds = {d["uid"]: d for d in _yaml(GRAFANA_PROVISIONING / "datasources/wfa.yaml")["datasources"]}
    assert ds[PROMETHEUS_UID]["type"] == "prometheus"
    store = ds[STORE_UID]
    assert store["type"] == POSTGRES_TYPE
    assert store["jsonData"]["timescaledb"] is True
    assert store["secureJsonData"]["password"].startswith("${"), "password must come from env"
    assert store["user"].startswith("${") and store["url"].startswith("${")


def test_dashboard_provider_loads_the_dashboards_into_a_folder() -> None:
    providers = _yaml(GRAFANA_PROVISIONING / "dashboards/wfa.yaml")["providers"]
    assert len(providers) == 1
    p = providers[0]
    assert p["type"] == "file" and p["folder"]
    compose = _yaml(ROOT / "docker-compose.yml")
    mounts = compose["services"]["grafana"]["volumes"]
    assert f"./dashboards:{p['options']['path']}:ro" in mounts
    home = compose["services"]["grafana"]["environment"][
        "GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"
    ]
    assert home == f"{p['options']['path']}/overview.json"


def test_grafana_alert_rules_are_well_formed() -> None:
    doc = _yaml(GRAFANA_PROVISIONING / "alerting/wfa-dropoff.yaml")
    assert "policies" not in doc, "no notification policy tree is imposed"
    rules = [r for g in doc["groups"] for r in g["rules"]]
    assert {r["title"] for r in rules} == {
        "WfaStepDropoffHigh",
        "WfaStepDropoffJump",
        "WfaStepDropoffJumpDaily",
    }
    settings = Settings.defaults()
    runbook = (ROOT / "docs/runbook.md").read_text()
    for r in rules:
        data = {q["refId"]: q for q in r["data"]}
        assert r["condition"] in data
        for q in r["data"]:
            assert q["datasourceUid"] in (PROMETHEUS_UID, "__expr__")
            assert q["model"]["refId"] == q["refId"]
            if q["datasourceUid"] == "__expr__":
                assert q["model"]["expression"] in data, "expression refers to a missing query"
        assert "$" not in r["title"], "titles are interpolated from the environment"
        for key in ("summary", "description", "runbook_url"):
            assert r["annotations"][key]
        assert "{{ $labels.workflow_name }}" in r["annotations"]["description"]
        assert "{{ $labels.step_name }}" in r["annotations"]["description"]
        assert r["annotations"]["runbook_url"] == settings.monitoring.runbook(r["title"])
        assert r["annotations"]["runbook_url"].startswith("http")
        assert f"## {r['title']}\n" in runbook
    points = _yaml(GRAFANA_PROVISIONING / "alerting/wfa-contact-points.yaml")["contactPoints"]
    assert len(points) == 1 and points[0]["receivers"][0]["settings"]["addresses"]
