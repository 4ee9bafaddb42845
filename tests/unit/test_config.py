"""Tests for the config package: YAML reading, durations, schema, loading and cross-checks."""

from __future__ import annotations

import shutil
from datetime import timedelta
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

from exporter.config import (
    Config,
    ConfigError,
    Duration,
    config_from_dict,
    config_path_from,
    format_duration,
    load_config,
    parse_duration,
    schema,
)
from exporter.config.durations import PositiveDuration
from exporter.config.yaml import format_location, load_yaml, parse_yaml

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "configs"
DSN = "postgresql://wfa@localhost:5432/app"
SHA_A = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
SHA_B = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752"


def problems_of(data: Any) -> list[str]:
    """The problems config_from_dict reports for data (fails if it is valid)."""
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return info.value.problems


def minimal(**sections: Any) -> dict[str, Any]:
    """A valid config dict with the given sections added."""
    return {"source": {"dsn": DSN}, **sections}


# --- durations ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2s", timedelta(seconds=2)),
        ("500ms", timedelta(milliseconds=500)),
        ("5m", timedelta(minutes=5)),
        ("1h30m", timedelta(hours=1, minutes=30)),
        ("90d", timedelta(days=90)),
        ("2w", timedelta(weeks=2)),
        ("1d12h", timedelta(days=1, hours=12)),
        ("1.5h", timedelta(hours=1, minutes=30)),
        (" 5m ", timedelta(minutes=5)),
        ("30", timedelta(seconds=30)),
        ("0s", timedelta(0)),
        (5, timedelta(seconds=5)),
        (0.25, timedelta(milliseconds=250)),
        (timedelta(hours=2), timedelta(hours=2)),
    ],
)
def test_parse_duration(text: object, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("fast", "invalid duration 'fast'"),
        ("-5s", "invalid duration '-5s'"),
        ("", "invalid duration ''"),
        ("   ", "invalid duration '   '"),
        (-1, "invalid duration '-1'"),
        ("5m1h", "invalid duration '5m1h'"),
        ("1h1h", "invalid duration '1h1h'"),
        ("5 m", "invalid duration '5 m'"),
        ("1y", "invalid duration '1y'"),
        ("1e3", "invalid duration '1e3'"),
        (float("nan"), "invalid duration 'nan'"),
        (True, "invalid duration True"),
        (None, "invalid duration None"),
        ([5], "invalid duration [5]"),
        ("999999999999w", "invalid duration '999999999999w': too large"),
    ],
)
def test_parse_duration_rejects(value: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_duration(value)
    assert str(info.value) == message


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (timedelta(minutes=5), "5m"),
        (timedelta(hours=1, minutes=30), "1h30m"),
        (timedelta(days=90), "90d"),
        (timedelta(weeks=2), "14d"),
        (timedelta(seconds=1.5), "1s500ms"),
        (timedelta(microseconds=7), "7us"),
        (timedelta(0), "0s"),
    ],
)
def test_format_duration(value: timedelta, text: str) -> None:
    assert format_duration(value) == text
    assert parse_duration(text) == value


def test_format_duration_rejects_negative() -> None:
    with pytest.raises(ValueError):
        format_duration(timedelta(seconds=-1))


class _Timing(pydantic.BaseModel):
    every: Duration
    positive: PositiveDuration = timedelta(seconds=1)


def test_duration_is_a_pydantic_type() -> None:
    assert _Timing(every="5m").every == timedelta(minutes=5)
    assert _Timing(every="1h30m").model_dump(mode="json") == {"every": "1h30m", "positive": "1s"}
    assert _Timing(every=2).model_dump() == {
        "every": timedelta(seconds=2),
        "positive": timedelta(seconds=1),
    }
    with pytest.raises(pydantic.ValidationError) as info:
        _Timing(every="fast", positive="0s")
    messages = {error["loc"]: error["msg"] for error in info.value.errors()}
    assert messages == {
        ("every",): "invalid duration 'fast'",
        ("positive",): "must be greater than 0",
    }


# --- yaml ----------------------------------------------------------------------------------------


def test_env_tag_and_interpolation() -> None:
    text = """
    a: !env HOST
    b: !env MISSING:-fallback
    c: !env EMPTY:-fallback
    d: "postgresql://u:${PASSWORD}@${HOST}:${PORT:-5432}/db"
    e: ${PORT:-5432}
    f: plain $HOST and $${HOST} stay
    g: ["${HOST}", {h: "${HOST}"}]
    """
    environ = {"HOST": "db.local", "PASSWORD": "s3cr:t", "EMPTY": ""}
    data, problems = parse_yaml(text, environ=environ)
    assert problems == []
    assert data == {
        "a": "db.local",
        "b": "fallback",
        "c": "fallback",
        "d": "postgresql://u:s3cr:t@db.local:5432/db",
        "e": "5432",
        "f": "plain $HOST and ${HOST} stay",
        "g": ["db.local", {"h": "db.local"}],
    }


def test_env_set_but_empty_without_default_is_empty() -> None:
    data, problems = parse_yaml("a: !env EMPTY\nb: x${EMPTY}y\n", environ={"EMPTY": ""})
    assert (data, problems) == ({"a": "", "b": "xy"}, [])


def test_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WFA_TEST_VALUE", "from-env")
    assert parse_yaml("a: ${WFA_TEST_VALUE}\nb: !env WFA_TEST_VALUE\n")[0] == {
        "a": "from-env",
        "b": "from-env",
    }


def test_missing_variables_name_location_and_line(tmp_path: Path) -> None:
    path = tmp_path / "wfa.yaml"
    path.write_text(
        "source:\n"
        "  dsn: !env NO_SUCH_DSN\n"
        "api:\n"
        "  tokens:\n"
        "    - sha256: ${NO_SUCH_TOKEN}\n"
        "      name: ok\n"
    )
    with pytest.raises(ConfigError) as info:
        load_yaml(path, environ={})
    assert info.value.problems == [
        f"source.dsn: environment variable NO_SUCH_DSN is not set ({path}:2)",
        f"api.tokens[0].sha256: environment variable NO_SUCH_TOKEN is not set ({path}:5)",
    ]
    assert str(info.value) == "\n".join(info.value.problems)


def test_malformed_interpolation_is_a_problem() -> None:
    _, problems = parse_yaml("a: ${X:default}\nb: ${}\n", name="c.yaml", environ={"X": "1"})
    assert [str(problem) for problem in problems] == [
        "a: invalid interpolation: use ${VAR} or ${VAR:-default} (c.yaml:1)",
        "b: invalid interpolation: use ${VAR} or ${VAR:-default} (c.yaml:2)",
    ]


def test_file_tag_reads_stripped_content_relative_to_config(tmp_path: Path) -> None:
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "dsn").write_text("  postgresql://u:p@h/db\n\n")
    (tmp_path / "absolute").write_text("abs\n")
    path = tmp_path / "wfa.yaml"
    path.write_text(
        f"a: !file secrets/dsn\nb: !file {tmp_path / 'absolute'}\nc: !file ${{SECRETS}}/dsn\n"
    )
    assert load_yaml(path, environ={"SECRETS": "secrets"}) == {
        "a": "postgresql://u:p@h/db",
        "b": "abs",
        "c": "postgresql://u:p@h/db",
    }


def test_file_tag_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "wfa.yaml"
    path.write_text("store:\n  dsn: !file nope.txt\n")
    with pytest.raises(ConfigError) as info:
        load_yaml(path)
    assert info.value.problems == [
        f"store.dsn: cannot read {tmp_path / 'nope.txt'}: No such file or directory ({path}:2)"
    ]


def test_loader_does_not_touch_global_safe_loader() -> None:
    parse_yaml("a: !env X:-1\n", environ={})
    assert "!env" not in yaml.SafeLoader.yaml_constructors
    assert "!file" not in yaml.SafeLoader.yaml_constructors
    assert yaml.safe_load("a: ${HOME}") == {"a": "${HOME}"}
    with pytest.raises(yaml.YAMLError):
        yaml.safe_load("a: !env HOME")


def test_anchor_problems_are_reported_once_at_their_definition() -> None:
    text = 'base: &base {a: 1, b: "${X}"}\nx: {<<: *base, b: 2}\ny: *base\n'
    data, problems = parse_yaml(text, name="c.yaml", environ={})
    assert data == {"base": {"a": 1, "b": None}, "x": {"a": 1, "b": 2}, "y": {"a": 1, "b": None}}
    assert [str(problem) for problem in problems] == [
        "base.b: environment variable X is not set (c.yaml:1)"
    ]


def test_environment_strings_become_typed_values(tmp_path: Path) -> None:
    path = tmp_path / "wfa.yaml"
    path.write_text(
        "source: {dsn: !env DSN}\n"
        "exporter: {batch_size: !env BATCH, poll_interval: '${POLL}'}\n"
        "metrics: {tenant_label: !env LABEL}\n"
    )
    environ = {"DSN": DSN, "BATCH": "250", "POLL": "2", "LABEL": "false"}
    config = load_config(path, environ=environ)
    assert config.exporter.batch_size == 250
    assert config.exporter.poll_interval == timedelta(seconds=2)
    assert config.metrics.tenant_label is False


def test_duplicate_keys_are_problems() -> None:
    _, problems = parse_yaml("a:\n  b: 1\n  b: 2\n", name="c.yaml")
    assert [str(problem) for problem in problems] == ["a.b: duplicate key (c.yaml:3)"]


def test_yaml_syntax_error() -> None:
    data, problems = parse_yaml("a: [1, 2\n", name="c.yaml")
    assert data is None
    assert len(problems) == 1
    assert str(problems[0]).startswith("invalid YAML: ")
    assert "(c.yaml:2:1)" in str(problems[0])


def test_format_location() -> None:
    assert format_location(["api", "tokens", 0, "sha256"]) == "api.tokens[0].sha256"
    assert format_location(["retention", "workflows", "a.b", "executions"]) == (
        'retention.workflows["a.b"].executions'
    )
    assert format_location([]) == ""


# --- schema --------------------------------------------------------------------------------------


def test_defaults() -> None:
    config = config_from_dict(minimal())
    assert config.source.dsn == DSN
    assert config.source.executions_table == "workflow_executions"
    assert config.source.workflows_table == "workflows"
    assert config.source.statement_timeout == timedelta(seconds=30)
    assert config.source.columns.model_dump() == {
        name: name
        for name in [
            "id",
            "tenant_id",
            "workflow_id",
            "contact_id",
            "status",
            "enrolled_at",
            "completed_at",
            "converted_at",
            "exited_at",
            "exit_reason",
            "current_step_id",
            "step_progress",
            "updated_at",
        ]
    } | {"failed_at": None}
    assert config.source.workflow_columns.model_dump() == {
        name: name for name in ("id", "tenant_id", "name", "steps", "updated_at")
    }
    store = config.store
    assert (store.dsn, store.backend, store.partition_interval, store.premake_partitions) == (
        DSN,
        "auto",
        timedelta(days=7),
        4,
    )
    assert (store.statement_timeout, store.pool_min_size, store.pool_max_size) == (
        timedelta(seconds=30),
        1,
        10,
    )
    assert (store.connect_retries, store.connect_retry_delay) == (10, timedelta(seconds=1))
    exporter = config.exporter
    assert exporter.poll_interval == timedelta(seconds=5)
    assert exporter.batch_size == 5000
    assert exporter.overlap == timedelta(seconds=30)
    assert exporter.refresh_interval == timedelta(seconds=30)
    assert exporter.conversion_window is None
    assert dict(exporter.conversion_windows) == {}
    assert exporter.lock_id == 727274
    metrics = config.metrics
    assert metrics.listen == "127.0.0.1:9464"
    assert metrics.snapshot_interval == timedelta(seconds=15)
    assert metrics.windows == (timedelta(hours=1), timedelta(hours=24), timedelta(days=7))
    assert metrics.tenant_label is True
    assert metrics.max_series == 50000
    assert (metrics.include, metrics.exclude, metrics.min_volume) == (("*",), (), 20)
    api = config.api
    assert (api.listen, api.tokens) == ("127.0.0.1:8080", ())
    assert (api.max_range, api.default_range) == (timedelta(days=400), timedelta(days=7))
    assert (api.sse_max_per_token, api.refresh_min_interval, api.max_body_bytes) == (
        20,
        timedelta(seconds=10),
        65536,
    )
    assert config.exports.directory == Path("./.wfa/exports")
    assert config.exports.max_age == timedelta(hours=24)
    assert config.exports.max_concurrent_per_tenant == 2
    retention = config.retention
    assert (retention.executions, retention.step_runs, retention.workflow_events) == (
        timedelta(days=90),
        timedelta(days=90),
        timedelta(days=90),
    )
    assert (retention.rollups_1h, retention.rollups_1d) == (
        timedelta(days=400),
        timedelta(days=730),
    )
    assert (dict(retention.workflows), retention.run_interval) == ({}, timedelta(hours=24))


def test_every_model_is_frozen_and_forbids_extra() -> None:
    models = [
        value
        for value in vars(schema).values()
        if isinstance(value, type)
        and issubclass(value, pydantic.BaseModel)
        and value.__module__ == schema.__name__
    ]
    # 12, the metrics tenant filter, the monitoring section and its 9 alert models
    assert len(models) == 23
    for model in models:
        assert model.model_config.get("extra") == "forbid", model
        assert model.model_config.get("frozen") is True, model


def test_config_is_deeply_immutable() -> None:
    config = config_from_dict(
        minimal(
            exporter={"conversion_windows": {"wf": "7d"}},
            api={"tokens": [{"name": "a", "sha256": SHA_A, "tenant": "t"}]},
            retention={"workflows": {"wf": {"executions": "7d"}}},
        )
    )
    with pytest.raises(pydantic.ValidationError):
        config.source = config.source  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.exporter.poll_interval = timedelta(seconds=1)  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.source.columns.status = "state"  # type: ignore[misc]
    with pytest.raises(pydantic.ValidationError):
        config.api.tokens[0].scopes = frozenset({"admin"})  # type: ignore[misc]
    with pytest.raises(TypeError):
        config.exporter.conversion_windows["other"] = timedelta(1)  # type: ignore[index]
    with pytest.raises(TypeError):
        config.retention.workflows["other"] = None  # type: ignore[index]
    assert isinstance(config.metrics.windows, tuple)
    assert isinstance(config.api.tokens, tuple)
    assert isinstance(config.api.tokens[0].scopes, frozenset)


def test_json_dump_round_trips() -> None:
    config = config_from_dict(
        minimal(
            exporter={"conversion_window": "1h30m", "conversion_windows": {"wf": "2w"}},
            retention={"workflows": {"wf": {"executions": "7d"}}},
        )
    )
    dumped = config.model_dump(mode="json")
    assert dumped["exporter"]["conversion_window"] == "1h30m"
    assert dumped["exporter"]["conversion_windows"] == {"wf": "14d"}
    assert dumped["metrics"]["windows"] == ["1h", "1d", "7d"]
    assert dumped["retention"]["workflows"] == {
        "wf": {
            "executions": "7d",
            "step_runs": None,
            "workflow_events": None,
            "rollups_1h": None,
            "rollups_1d": None,
        }
    }
    assert config_from_dict(dumped) == config


def test_store_dsn_defaults_to_source_dsn() -> None:
    assert config_from_dict(minimal()).store.dsn == DSN
    assert config_from_dict(minimal(store=None)).store.dsn == DSN
    other = "postgres://wfa@store/analytics"
    config = config_from_dict(minimal(store={"dsn": other}))
    assert (config.store.dsn, config.store_dsn) == (other, other)


def test_invalid_source_dsn_is_reported_once() -> None:
    assert problems_of({"source": {"dsn": "host=x"}}) == [
        "source.dsn: must be a postgresql:// or postgres:// URI"
    ]


def test_schema_qualified_tables_and_failed_at() -> None:
    config = config_from_dict(
        {
            "source": {
                "dsn": DSN,
                "executions_table": "app.workflow_executions",
                "workflows_table": "app.Workflows$2",
                "columns": {"failed_at": "failed_at", "status": "state"},
            }
        }
    )
    assert config.source.executions_table == "app.workflow_executions"
    assert config.source.columns.failed_at == "failed_at"
    assert config.source.columns.status == "state"


def test_identifier_length_limit() -> None:
    assert problems_of({"source": {"dsn": DSN, "columns": {"id": "a" * 64}}}) == [
        "source.columns.id: must be at most 63 characters"
    ]


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
        ("localhost:65535", ("localhost", 65535)),
        ("[::1]:9464", ("::1", 9464)),
        ("[::]:80", ("::", 80)),
    ],
)
def test_listen_accepts(value: str, parsed: tuple[str, int]) -> None:
    assert schema.parse_listen(value) == parsed
    assert config_from_dict(minimal(metrics={"listen": value})).metrics.listen == value


@pytest.mark.parametrize(
    "value", ["9464", ":9464", "host:", "host:0", "host:65536", "::1:80", "[]:80", "host:port"]
)
def test_listen_rejects(value: str) -> None:
    problems = problems_of(minimal(api={"listen": value}))
    assert len(problems) == 1
    assert problems[0].startswith("api.listen: ")


def test_tokens_and_ids() -> None:
    config = config_from_dict(
        minimal(
            api={
                "tokens": [
                    {"name": "a", "sha256": SHA_A.upper(), "tenant": 42},
                    {"name": "b", "sha256": SHA_B, "tenant": "t", "scopes": ["read", "export"]},
                ]
            },
            exporter={"conversion_windows": {17: "3d"}},
            metrics={"include": [17, "onboarding-*"], "exclude": ["test-*"]},
        )
    )
    first, second = config.api.tokens
    assert (first.sha256, first.tenant, first.scopes) == (SHA_A, "42", frozenset({"read"}))
    assert second.scopes == frozenset({"read", "export"})
    assert dict(config.exporter.conversion_windows) == {"17": timedelta(days=3)}
    assert config.metrics.include == ("17", "onboarding-*")


def test_retention_period_and_conversion_window_lookup() -> None:
    config = config_from_dict(
        minimal(
            exporter={"conversion_window": "30d", "conversion_windows": {"wf": "7d"}},
            retention={"workflows": {"wf": {"executions": "14d"}}},
        )
    )
    assert config.retention.period("executions", "wf") == timedelta(days=14)
    assert config.retention.period("step_runs", "wf") == timedelta(days=90)
    assert config.retention.period("executions", "other") == timedelta(days=90)
    assert config.retention.period("rollups_1d") == timedelta(days=730)
    with pytest.raises(KeyError):
        config.retention.period("bogus")
    assert config.exporter.conversion_window_for("wf") == timedelta(days=7)
    assert config.exporter.conversion_window_for("other") == timedelta(days=30)


# --- loading and problems ------------------------------------------------------------------------


def test_problem_messages() -> None:
    problems = problems_of(
        {
            "source": {"bogus": 1},
            "store": {"backend": "mysql"},
            "exporter": {"poll_interval": "fast"},
            "api": {"tokens": [{"name": "a", "sha256": "x", "tenant": "t"}]},
        }
    )
    assert problems == [
        "source.dsn: field required",
        "source.bogus: unknown key",
        "store.backend: must be one of auto, postgres, timescaledb",
        "exporter.poll_interval: invalid duration 'fast'",
        "api.tokens[0].sha256: must be 64 hexadecimal characters (the SHA-256 of the token)",
    ]


def test_config_error_lists_problems() -> None:
    error = ConfigError(["a: one", "b: two"])
    assert error.problems == ["a: one", "b: two"]
    assert str(error) == "a: one\nb: two"


def _fixture_expectations(path: Path) -> tuple[list[str], dict[str, str]]:
    """The `# expect:` problems and `# env:` variables written at the top of a fixture."""
    expected: list[str] = []
    environ: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if line.startswith("# expect: "):
            text = line.removeprefix("# expect: ")
            expected.append(text.replace("{file}", str(path)).replace("{dir}", str(path.parent)))
        elif line.startswith("# env: "):
            name, _, value = line.removeprefix("# env: ").partition("=")
            environ[name] = value
    return expected, environ


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("broken_*.yaml")), ids=lambda path: path.stem)
def test_broken_configs_report_every_problem(path: Path) -> None:
    expected, environ = _fixture_expectations(path)
    assert expected, f"{path.name} lists no expected problems"
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ)
    assert sorted(info.value.problems) == sorted(expected)
    assert len(info.value.problems) == len(set(info.value.problems))


def test_valid_minimal_fixture() -> None:
    config = load_config(FIXTURES / "valid_minimal.yaml", environ={})
    assert isinstance(config, Config)
    assert config.store.dsn == "postgresql://wfa@localhost:5432/app"


def test_example_config_loads(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    shutil.copy(REPO / "config.example.yaml", path)
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "reports-token.sha256").write_text(SHA_B + "\n")
    config = load_config(path, environ={"WFA_SOURCE_DSN": DSN, "WFA_GRAFANA_TOKEN_SHA256": SHA_A})
    assert config.source.dsn == config.store.dsn == DSN
    assert [token.sha256 for token in config.api.tokens] == [SHA_A, SHA_B]
    assert config.exporter.conversion_window_for("onboarding") == timedelta(days=14)
    assert config.retention.period("executions", "password-reset") == timedelta(days=14)
    defaults = config_from_dict(minimal())
    assert config.metrics == defaults.metrics
    assert config.store == defaults.store
    assert config.source == defaults.source
    assert config.monitoring == defaults.monitoring


def test_example_config_without_secrets_lists_each(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    shutil.copy(REPO / "config.example.yaml", path)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    locations = [problem.split(":")[0] for problem in info.value.problems]
    assert locations == ["source.dsn", "api.tokens[0].sha256", "api.tokens[1].sha256"]


def test_missing_variable_hides_follow_on_schema_error(tmp_path: Path) -> None:
    path = tmp_path / "wfa.yaml"
    path.write_text("source:\n  dsn: ${NO_DSN}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == [f"source.dsn: environment variable NO_DSN is not set ({path}:2)"]


def test_duplicate_key_does_not_hide_the_kept_value_problem(tmp_path: Path) -> None:
    path = tmp_path / "wfa.yaml"
    path.write_text(f"source:\n  dsn: {DSN}\n  dsn: mysql://x\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.problems == [
        f"source.dsn: duplicate key ({path}:3)",
        "source.dsn: must be a postgresql:// or postgres:// URI",
    ]


def test_unreadable_and_empty_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert info.value.problems == [f"{missing}: cannot read config: No such file or directory"]
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ConfigError) as info:
        load_config(empty)
    assert info.value.problems == ["source: field required"]


def test_config_path_from(monkeypatch: pytest.MonkeyPatch) -> None:
    assert config_path_from("a.yaml", environ={"WFA_CONFIG": "b.yaml"}) == Path("a.yaml")
    assert config_path_from(None, environ={"WFA_CONFIG": "b.yaml"}) == Path("b.yaml")
    with pytest.raises(ConfigError) as info:
        config_path_from(None, environ={"WFA_CONFIG": ""})
    assert info.value.problems == ["no config: pass --config FILE or set WFA_CONFIG"]
    monkeypatch.setenv("WFA_CONFIG", "/etc/wfa.yaml")
    assert config_path_from(None) == Path("/etc/wfa.yaml")
    monkeypatch.delenv("WFA_CONFIG")
    with pytest.raises(ConfigError):
        config_path_from(None)


@pytest.mark.parametrize(
    ("metrics", "api", "conflict"),
    [
        ("127.0.0.1:9464", "127.0.0.1:9464", True),
        ("0.0.0.0:8080", "127.0.0.1:8080", True),
        ("[::1]:8080", "[::]:8080", True),
        ("LOCALHOST:8080", "localhost:8080", True),
        ("127.0.0.1:9464", "127.0.0.1:8080", False),
        ("127.0.0.1:8080", "10.0.0.1:8080", False),
    ],
)
def test_listen_conflicts(metrics: str, api: str, conflict: bool) -> None:
    data = minimal(metrics={"listen": metrics}, api={"listen": api})
    if conflict:
        assert problems_of(data) == [f"api.listen: conflicts with metrics.listen ({metrics})"]
    else:
        config_from_dict(data)


def test_raw_retention_follows_refresh_interval() -> None:
    config_from_dict(minimal(retention={"executions": "1d", "step_runs": "1d"}))
    problems = problems_of(
        minimal(
            exporter={"refresh_interval": "1d"},
            retention={"executions": "1d", "step_runs": "2d", "workflow_events": "47h"},
        )
    )
    assert [problem.split(":")[0] for problem in problems] == [
        "retention.executions",
        "retention.workflow_events",
    ]
    assert "must be at least 2d" in problems[0]


# --- tenants: operator tokens and the metrics tenant filter -------------------------------------


def test_operator_token_takes_only_admin_and_star_is_no_pattern() -> None:
    """An operator token ("*") with a tenant's scopes, or "*" inside a tenant id, is refused."""
    ok = config_from_dict(
        minimal(api={"tokens": [{"name": "ops", "sha256": SHA_A, "tenant": "*",
                                 "scopes": ["admin"]}]})
    )
    assert ok.api.tokens[0].tenant == "*"
    problems = problems_of(
        minimal(
            api={
                "tokens": [
                    {"name": "o1", "sha256": SHA_A, "tenant": "*", "scopes": ["read", "admin"]},
                    {"name": "o2", "sha256": SHA_B, "tenant": "*"},
                    {"name": "t1", "sha256": "1" * 64, "tenant": "acme-*"},
                    {"name": "t2", "sha256": "2" * 64, "tenant": " * "},
                    {"name": "t3", "sha256": "3" * 64, "tenant": "**", "scopes": ["admin"]},
                ]
            }
        )
    )
    assert problems == [
        'api.tokens[0].scopes: an operator token (tenant "*") takes only the admin scope, not '
        "read: it manages store-wide retention and reads no tenant's analytics",
        'api.tokens[1].scopes: an operator token (tenant "*") takes only the admin scope, not '
        "read: it manages store-wide retention and reads no tenant's analytics",
        'api.tokens[2].tenant: must be one tenant id, or exactly "*" for the operator; '
        "'acme-*' is ambiguous (tenants are not patterns)",
        'api.tokens[3].tenant: must be one tenant id, or exactly "*" for the operator; '
        "' * ' is ambiguous (tenants are not patterns)",
        'api.tokens[4].tenant: must be one tenant id, or exactly "*" for the operator; '
        "'**' is ambiguous (tenants are not patterns)",
    ]


def test_metrics_tenant_filter_defaults_and_bad_values() -> None:
    cfg = config_from_dict(minimal())
    assert (cfg.metrics.tenants.include, cfg.metrics.tenants.exclude) == (("*",), ())
    cfg = config_from_dict(
        minimal(metrics={"tenants": {"include": ["acme-*", 7], "exclude": ["acme-test"]}})
    )
    assert cfg.metrics.tenants.include == ("acme-*", "7")
    assert problems_of(
        minimal(metrics={"tenants": {"include": "acme", "only": ["x"], "exclude": [""]}})
    ) == [
        "metrics.tenants.include: must be a list",
        "metrics.tenants.exclude[0]: must not be empty",
        "metrics.tenants.only: unknown key",
    ]
    assert problems_of(minimal(metrics={"tenants": ["acme"]})) == [
        "metrics.tenants: must be a mapping"
    ]


def test_check_config_names_the_bad_token_key_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from exporter.cli import main

    path = tmp_path / "wfa.yaml"
    path.write_text(
        f"source: {{dsn: '{DSN}'}}\n"
        f"api:\n  tokens:\n    - {{name: ops, sha256: {SHA_A}, tenant: '*', "
        "scopes: [admin, export]}\n"
    )
    with pytest.raises(SystemExit) as info:
        main(["check-config", "--config", str(path)])
    assert info.value.code == 1
    err = capsys.readouterr().err
    assert "api.tokens[0].scopes: an operator token" in err and "export" in err
# --- degraded operation ------------------------------------------------------------------------


def test_degradation_keys_have_defaults() -> None:
    """Readiness lag, header timeouts and the retry cap have working defaults."""
    cfg = config_from_dict(minimal())
    assert cfg.exporter.ready_max_lag == timedelta(minutes=5)
    assert cfg.api.header_timeout == cfg.metrics.header_timeout == timedelta(seconds=10)
    assert cfg.store.connect_retry_max_delay == timedelta(seconds=10)


@pytest.mark.parametrize(
    ("sections", "problem"),
    [
        ({"exporter": {"ready_max_lag": "0s"}}, "exporter.ready_max_lag: must be greater than 0"),
        ({"exporter": {"ready_max_lag": "soon"}}, "exporter.ready_max_lag: invalid duration"),
        (
            {"exporter": {"poll_interval": "1m", "ready_max_lag": "30s"}},
            "exporter.ready_max_lag: must be longer than exporter.poll_interval (60 s)",
        ),
        (
            {"exporter": {"poll_interval": "10m"}},  # the default lag is shorter
            "exporter.ready_max_lag: must be longer than exporter.poll_interval (600 s)",
        ),
        ({"api": {"header_timeout": 0}}, "api.header_timeout: must be greater than 0"),
        ({"api": {"header_timeout": "-1s"}}, "api.header_timeout: invalid duration"),
        ({"metrics": {"header_timeout": "0ms"}}, "metrics.header_timeout: must be greater than 0"),
        (
            {"store": {"connect_retry_max_delay": "0s"}},
            "store.connect_retry_max_delay: must be greater than 0",
        ),
    ],
)
def test_bad_degradation_keys_name_the_key(sections: dict[str, Any], problem: str) -> None:
    """Each bad value is reported with its key."""
    problems = problems_of(minimal(**sections))
    assert len(problems) == 1 and problems[0].startswith(problem), problems


# --- ingest safety keys ------------------------------------------------------------------------


def test_plausible_window_and_reconcile_interval() -> None:
    from datetime import UTC, datetime

    config = config_from_dict(minimal())
    assert config.source.valid_from == datetime(2000, 1, 1, tzinfo=UTC)
    assert config.source.valid_until == timedelta(days=1)
    assert config.exporter.reconcile_interval == timedelta(hours=6)
    config = config_from_dict(
        {
            "source": {"dsn": DSN, "valid_from": "2015-06-01T12:00:00+02:00", "valid_until": "2h"},
            "exporter": {"reconcile_interval": "30m"},
        }
    )
    assert config.source.valid_from == datetime(2015, 6, 1, 10, tzinfo=UTC)
    assert config.source.valid_until == timedelta(hours=2)
    assert config.exporter.reconcile_interval == timedelta(minutes=30)
    for off in ("off", "OFF", False, 0, "0s", None):
        disabled = config_from_dict(minimal(exporter={"reconcile_interval": off}))
        assert disabled.exporter.reconcile_interval is None, off
    dated = yaml.safe_load("source: {dsn: 'postgresql://x/y', valid_from: 2010-01-02}")
    assert config_from_dict(dated).source.valid_from == datetime(2010, 1, 2, tzinfo=UTC)
    naive = config_from_dict({"source": {"dsn": DSN, "valid_from": "2010-01-02 03:04:05"}})
    assert naive.source.valid_from == datetime(2010, 1, 2, 3, 4, 5, tzinfo=UTC)
    dumped = config.model_dump(mode="json")
    assert config_from_dict(dumped) == config


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"source": {"valid_from": "last tuesday"}}, "source.valid_from: must be a date or an ISO"),
        ({"source": {"valid_from": 12}}, "source.valid_from: must be a date or an ISO 8601"),
        ({"source": {"valid_until": "0s"}}, "source.valid_until: must be greater than 0"),
        ({"source": {"valid_until": "soon"}}, "source.valid_until: invalid duration 'soon'"),
        ({"exporter": {"reconcile_interval": "daily"}}, "exporter.reconcile_interval: invalid"),
        ({"exporter": {"reconcile_interval": -5}}, "exporter.reconcile_interval: invalid"),
        ({"exporter": {"reconcile_interval": [1]}}, "exporter.reconcile_interval: invalid"),
    ],
)
def test_bad_ingest_safety_values_name_the_key(data: dict, problem: str) -> None:
    merged = {"source": {"dsn": DSN, **data.get("source", {})}}
    if "exporter" in data:
        merged["exporter"] = data["exporter"]
    problems = problems_of(merged)
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_bad_ingest_safety_value_exits_1_naming_the_key(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "wfa.yaml"
    path.write_text(f"source: {{dsn: '{DSN}', valid_from: someday}}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "reconcile", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1 and "source.valid_from" in proc.stderr
