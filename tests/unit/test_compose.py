"""docker-compose.yml against the Compose Specification schema, its mounts, images and config."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from exporter.cli import build_parser
from exporter.config import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SCHEMA = ROOT / "tests/fixtures/compose/compose-spec.json"
LONG_RUNNING = ("timescaledb", "exporter", "api", "prometheus", "grafana")
SECRET_ENV = re.compile(r"\$\{(\w+)(:?[?-])?[^}]*\}")


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _validator(schema: dict[str, Any]) -> Any:
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


def test_compose_file_validates_against_the_compose_spec() -> None:
    validator = _validator(json.loads(SCHEMA.read_text()))
    errors = [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(_compose())]
    assert not errors, "\n".join(errors)


def test_schema_rejects_a_broken_compose_file() -> None:
    validator = _validator(json.loads(SCHEMA.read_text()))
    broken = _compose()
    broken["services"]["exporter"]["healthcheck"]["intervall"] = "10s"
    assert list(validator.iter_errors(broken))


def _bind_sources(service: dict[str, Any]) -> list[str]:
    out = []
    for v in service.get("volumes", []):
        source = v.split(":", 1)[0] if isinstance(v, str) else v.get("source", "")
        if source.startswith((".", "/")):
            out.append(source)
    return out


def test_every_mounted_path_exists() -> None:
    compose = _compose()
    for name, service in compose["services"].items():
        for source in _bind_sources(service):
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_named_volumes_are_declared() -> None:
    compose = _compose()
    declared = set(compose.get("volumes", {}))
    for name, service in compose["services"].items():
        for v in service.get("volumes", []):
            source = v.split(":", 1)[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"
    assert {"timescaledb-data", "prometheus-data", "grafana-data"} <= declared


def test_images_are_pinned() -> None:
    for name, service in _compose()["services"].items():
        image = service["image"]
        if "build" in service:
            continue
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"{name}: unpinned image {image}"
        assert re.search(r"\d+\.\d+\.\d+", tag), f"{name}: tag {tag} is not a full version"
    images = {s["image"].split(":")[0] for s in _compose()["services"].values()}
    assert {"timescale/timescaledb", "prom/prometheus", "grafana/grafana-oss"} <= images


def test_services_have_health_checks_and_wait_for_the_database() -> None:
    compose = _compose()
    for name in LONG_RUNNING:
        assert "healthcheck" in compose["services"][name], f"{name}: no healthcheck"
    for name in ("exporter", "api", "simulator"):
        depends = compose["services"][name]["depends_on"]
        assert depends["timescaledb"]["condition"] == "service_healthy"
    assert compose["services"]["simulator"]["profiles"] == ["demo"]


def test_commands_exist_in_the_cli() -> None:
    compose = _compose()
    parser = build_parser()
    for name in ("exporter", "api", "simulator"):
        command = compose["services"][name]["command"]
        args = parser.parse_args(command)
        assert callable(args.func), name
    sim = compose["services"]["simulator"]["command"]
    assert sim[0] == "simulate" and "--live" in sim
    assert "--if-empty" in sim, "a restarted simulator must not append its history again"
    assert sim[sim.index("--rate") + 1] == "20/s"


def test_secrets_come_from_the_environment() -> None:
    compose = _compose()
    text = COMPOSE.read_text()
    required = {m.group(1) for m in SECRET_ENV.finditer(text) if m.group(2) in (":?", "?")}
    assert {"WFA_DB_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "WFA_API_TOKEN_SHA256"} <= required
    db = compose["services"]["timescaledb"]["environment"]
    assert db["POSTGRES_PASSWORD"].startswith("${WFA_DB_PASSWORD")
    grafana = compose["services"]["grafana"]["environment"]
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD")
    assert "password" not in yaml.safe_dump(compose).lower().replace("_password", "")


def test_grafana_gets_every_variable_its_provisioning_uses() -> None:
    env = _compose()["services"]["grafana"]["environment"]
    used = set()
    for path in (ROOT / "provisioning/grafana").rglob("*.yaml"):
        used |= set(re.findall(r"\$\{(\w+)\}", path.read_text()))
    assert used, "provisioning files use no environment variable"
    assert used <= set(env), f"not set for grafana: {used - set(env)}"


def test_mounted_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    env = _compose()["services"]["exporter"]["environment"]
    monkeypatch.setenv("WFA_SOURCE_DSN", "postgresql://wfa:pw@timescaledb:5432/wfa")
    monkeypatch.setenv("WFA_STORE_DSN", "postgresql://wfa:pw@timescaledb:5432/wfa")
    monkeypatch.setenv("WFA_API_TOKEN_SHA256", "0" * 64)
    monkeypatch.delenv("WFA_API_TENANT", raising=False)
    config_mount = next(
        v for v in _compose()["services"]["exporter"]["volumes"] if v.endswith(":ro")
    )
    source, target, _ = config_mount.split(":")
    assert env["WFA_CONFIG"] == target
    cfg = load_config(ROOT / source)
    assert cfg.metrics.listen == "0.0.0.0:9464"
    assert cfg.api.listen == "0.0.0.0:8080"
    assert cfg.api.tokens[0].tenant == "tenant-1"
    ports = {p.rsplit(":", 1)[-1] for p in _compose()["services"]["exporter"]["ports"]}
    assert "9464" in ports


def _dockerignored(path: str, patterns: list[str]) -> bool:
    parts = path.split("/")
    for pattern in patterns:
        p = pattern.removeprefix("**/")
        if (
            any(
                re.fullmatch(p.replace(".", r"\.").replace("*", ".*").replace("?", "."), part)
                for part in parts
            )
            or path == pattern
        ):
            return True
    return False


def test_dockerfile_copies_existing_files_not_ignored() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copies = re.findall(r"^COPY\s+(.+)$", dockerfile, re.MULTILINE)
    assert copies
    for line in copies:
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"COPY of missing {source}"
            assert not _dockerignored(source, patterns), f"{source} is in .dockerignore"
    assert re.search(r"^FROM python:3\.11[\w.-]*$", dockerfile, re.MULTILINE)
    assert 'ENTRYPOINT ["wfa"]' in dockerfile
    assert _dockerignored(".venv", patterns) and _dockerignored("tests", patterns)


def test_grafana_reads_the_store_as_the_read_only_role() -> None:
    """Grafana logs in as wfa_reader, which the migrate service creates before anyone starts."""
    compose = _compose()
    services = compose["services"]
    grafana = services["grafana"]["environment"]
    assert grafana["WFA_GRAFANA_DB_USER"] == "wfa_reader"
    assert grafana["WFA_GRAFANA_DB_PASSWORD"].startswith("${WFA_READER_PASSWORD:?")
    assert "WFA_DB_PASSWORD" not in grafana["WFA_GRAFANA_DB_PASSWORD"]
    migrate = services["migrate"]
    assert build_parser().parse_args(migrate["command"]).func.__name__ == "cmd_migrate"
    assert "--no-roles" not in migrate["command"]
    assert migrate["environment"]["WFA_READER_PASSWORD"].startswith("${WFA_READER_PASSWORD:?")
    assert migrate["restart"] == "no"
    for name in ("exporter", "api", "grafana"):
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
    datasource = yaml.safe_load(
        (ROOT / "provisioning/grafana/datasources/wfa.yaml").read_text()
    )["datasources"]
    store = next(d for d in datasource if d["type"] == "grafana-postgresql-datasource")
    assert store["user"] == "${WFA_GRAFANA_DB_USER}"
    assert store["secureJsonData"]["password"] == "${WFA_GRAFANA_DB_PASSWORD}"
