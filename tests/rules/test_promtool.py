"""Prometheus config and rules: promtool check, promtool unit tests, coverage of the tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitoring.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "provisioning/prometheus"
RULE_FILES = sorted((PROMETHEUS_DIR / "rules").glob("*.yml"))
TEST_FILES = sorted(Path(__file__).parent.glob("*_test.yml"))
RUNBOOK = ROOT / "docs/runbook.md"
PROMTOOL = shutil.which("promtool")

needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not installed (Debian package prometheus; scripts/bootstrap.sh)",
)


def _promtool(*args: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _rules() -> list[dict[str, Any]]:
    return [
        rule
        for path in RULE_FILES
        for group in yaml.safe_load(path.read_text())["groups"]
        for rule in group["rules"]
    ]


def _tests() -> list[dict[str, Any]]:
    return [t for path in TEST_FILES for t in yaml.safe_load(path.read_text())["tests"]]


@needs_promtool
def test_promtool_check_config() -> None:
    result = _promtool("check", "config", "prometheus.yml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_check_rules() -> None:
    result = _promtool("check", "rules", *RULE_FILES)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
@pytest.mark.parametrize("test_file", TEST_FILES, ids=lambda p: p.name)
def test_promtool_test_rules(test_file: Path) -> None:
    result = _promtool("test", "rules", test_file.name, cwd=test_file.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_recording_rule_has_a_unit_test() -> None:
    tested = " ".join(e["expr"] for t in _tests() for e in t.get("promql_expr_test", []))
    missing = [r["record"] for r in _rules() if "record" in r and r["record"] not in tested]
    assert not missing, f"recording rules without a promql_expr_test: {missing}"


def test_every_alert_has_firing_and_silent_unit_tests() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    for t in _tests():
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert alerts - firing == set(), "alerts never tested firing"
    assert alerts - silent == set(), "alerts never tested silent"


def test_recording_rules_follow_the_naming_convention() -> None:
    for r in _rules():
        if "record" in r:
            assert re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", r["record"]), r["record"]


def test_alerts_have_summary_description_names_and_runbook() -> None:
    runbook = RUNBOOK.read_text()
    sections = set(re.findall(r"^## (.+)$", runbook, re.MULTILINE))
    settings = Settings.defaults()
    for r in _rules():
        if "alert" not in r:
            continue
        a = r["annotations"]
        assert a["summary"] and a["description"], r["alert"]
        assert r["labels"]["severity"] in ("warning", "critical"), r["alert"]
        assert a["runbook_url"] == settings.monitoring.runbook(r["alert"]), r["alert"]
        assert re.fullmatch(r"https?://\S+", a["runbook_url"]), "runbook_url is a link"
        assert r["alert"] in sections, f"{r['alert']}: no runbook section"
        if "workflow" in r["expr"] and "wfa_exporter" not in r["expr"]:
            assert "wfa_workflow_info" in r["expr"], f"{r['alert']}: workflow names not joined"
            assert "{{ $labels.workflow_name }}" in a["description"], r["alert"]
            if "step" in r["expr"].split("group_left")[0]:
                assert "wfa_step_info" in r["expr"], f"{r['alert']}: step names not joined"
                assert "{{ $labels.step_name }}" in a["description"], r["alert"]


def test_required_alerts_exist() -> None:
    alerts = {r["alert"] for r in _rules() if "alert" in r}
    assert alerts == {
        "WfaStepDropoffHigh",
        "WfaStepDropoffJump",
        "WfaStepDropoffJumpDaily",
        "WfaActionFailureRatioHigh",
        "WfaStepSlowdown",
        "WfaConversionRateDrop",
        "WfaConversionRateDropDaily",
        "WfaExporterAbsent",
        "WfaExporterLeaders",
        "WfaIngestLagHigh",
        "WfaPollErrors",
    }
    weekly = [r for r in _rules() if "offset 1w" in r.get("expr", "")]
    assert {r["alert"] for r in weekly} == {"WfaStepDropoffJump", "WfaConversionRateDrop"}
    for r in weekly:
        assert "needs a week" in r["annotations"]["description"], r["alert"]
        assert f"{r['alert']}Daily" in r["annotations"]["description"], "names its day-one twin"
    dropoff = next(r for r in _rules() if r.get("alert") == "WfaStepDropoffHigh")
    assert dropoff["for"] == "15m"
    assert "wfa:alert_dropoff_ratio:threshold" in dropoff["expr"]
    assert "wfa:alert_min_volume:threshold" in dropoff["expr"]


def test_scrape_job_matches_the_absent_alert_and_compose() -> None:
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "wfa-exporter")
    absent = next(r for r in _rules() if r.get("alert") == "WfaExporterAbsent")
    assert 'job="wfa-exporter"' in absent["expr"]
    target = job["static_configs"][0]["targets"][0]
    deploy = yaml.safe_load((ROOT / "deploy/config.compose.yaml").read_text())
    assert target == "exporter:" + deploy["metrics"]["listen"].rsplit(":", 1)[1]
    assert config["rule_files"] == ["rules/*.yml"]
