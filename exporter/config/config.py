"""Load, validate and cross-check the configuration into a frozen `Config`."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from .durations import format_duration
from .schema import (
    RAW_DATASETS,
    ApiConfig,
    Config,
    ExporterConfig,
    MetricsConfig,
    MonitoringConfig,
    RetentionConfig,
    StoreConfig,
    parse_listen,
    token_problems,
)
from .yaml import ConfigError, Problem, format_location, read_yaml

__all__ = ["ConfigError", "config_from_dict", "config_path_from", "load_config"]

CONFIG_ENV = "WFA_CONFIG"
"""Environment variable naming the config file when --config is not given."""

MIN_RAW_RETENTION = timedelta(days=1)
"""Lower bound for the retention of data a rollup refresh reads."""

_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "*"})

_MESSAGES: dict[str, str] = {
    "missing": "field required",
    "extra_forbidden": "unknown key",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "set_type": "must be a list",
    "frozen_set_type": "must be a list",
    "dict_type": "must be a mapping",
    "model_type": "must be a mapping",
    "model_attributes_type": "must be a mapping",
    "path_type": "must be a path",
}


def config_path_from(cli_value: str | None, environ: Mapping[str, str] | None = None) -> Path:
    """The config file: the --config value, else $WFA_CONFIG; ConfigError if neither is set."""
    env = os.environ if environ is None else environ
    value = cli_value or env.get(CONFIG_ENV)
    if not value:
        raise ConfigError([f"no config: pass --config FILE or set {CONFIG_ENV}"])
    return Path(value)


def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, validate and cross-check a YAML config file; ConfigError lists every problem."""
    data, problems = read_yaml(path, environ)
    if data is None and problems:
        raise ConfigError([str(problem) for problem in problems])
    return _build(data if data is not None else {}, problems)


def config_from_dict(data: Mapping[str, Any]) -> Config:
    """Validate and cross-check already-parsed config data (tests, demo, simulate)."""
    return _build(data, [])


def _build(data: Any, reading_problems: list[Problem]) -> Config:
    """Validate data; raise ConfigError with reading, schema and cross-check problems."""
    config: Config | None = None
    schema_problems: list[Problem] = []
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        schema_problems = [_translate(error) for error in exc.errors(include_url=False)]
    hidden = [problem.location for problem in reading_problems if problem.value_missing]
    problems = [
        *reading_problems,
        *(problem for problem in schema_problems if not _under_any(problem.location, hidden)),
        *_cross_check(config, data, schema_problems),
    ]
    if problems or config is None:
        raise ConfigError(list(dict.fromkeys(str(problem) for problem in problems)))
    return config


def _under_any(location: str, prefixes: list[str]) -> bool:
    """Whether a location is one of, or inside one of, the given locations."""
    return any(
        prefix and (location == prefix or location.startswith((f"{prefix}.", f"{prefix}[")))
        for prefix in prefixes
    )


def _translate(error: ErrorDetails) -> Problem:
    """Turn one pydantic error into "<dotted.location>: <message>"."""
    parts = [part for part in error["loc"] if part != "[key]"]
    location = format_location(parts) or "config"
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind in _MESSAGES:
        message = _MESSAGES[kind]
        if kind in ("model_type", "dict_type") and not parts:
            message = "must be a mapping of sections"
    elif kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(ctx.get("expected", "")))
        message = f"must be one of {', '.join(choices)}"
    elif kind == "greater_than_equal":
        message = f"must be at least {ctx['ge']}"
    elif kind == "less_than_equal":
        message = f"must be at most {ctx['le']}"
    elif kind == "too_short":
        minimum = ctx.get("min_length", 1)
        message = "must not be empty" if minimum == 1 else f"must have at least {minimum} items"
    else:
        message = error["msg"].removeprefix("Value error, ")
    return Problem(location, message)


def _cross_check(config: Config | None, data: Any, schema_problems: list[Problem]) -> list[Problem]:
    """Run every cross-check in the same pass as the schema checks.

    A section with invalid fields is checked without them (their defaults stand in), and a
    cross-check problem that involves a left-out field is not reported: that field already has
    its own problem.
    """
    sections: dict[str, BaseModel] = {}
    left_out: list[str] = []
    if config is not None:
        sections = {name: getattr(config, name) for name in Config.model_fields}
    elif isinstance(data, Mapping):
        bad = [re.split(r"[.\[]", p.location)[:2] for p in schema_problems]
        for name, field in Config.model_fields.items():
            model = field.annotation
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                continue
            if any(len(parts) == 1 and parts[0] == name for parts in bad):
                continue
            raw = data.get(name) or {}
            drop = {parts[1] for parts in bad if len(parts) == 2 and parts[0] == name}
            if drop and isinstance(raw, Mapping):
                raw = {k: v for k, v in raw.items() if k not in drop}
                left_out += [f"{name}.{key}" for key in drop]
            try:
                sections[name] = model.model_validate(raw)
            except ValidationError:
                continue
    problems: list[Problem] = []
    for names, check in _CHECKS:
        if all(name in sections for name in names):
            problems.extend(
                p for p in check(*(sections[name] for name in names))
                if not _involves(p, left_out)
            )
    return problems


def _involves(problem: Problem, locations: list[str]) -> bool:
    """Whether a problem is at, inside or names one of `locations`."""
    return _under_any(problem.location, locations) or any(
        re.search(rf"\b{re.escape(loc)}\b", problem.message) for loc in locations
    )


def _check_retention(exporter: ExporterConfig, retention: RetentionConfig) -> Iterator[Problem]:
    """Data a rollup refresh reads must outlive the refresh window, or a refresh empties it."""
    minimum = max(2 * exporter.refresh_interval, MIN_RAW_RETENTION)
    why = (
        f"must be at least {format_duration(minimum)}: longer than the rollup refresh window"
        f" (twice exporter.refresh_interval, and at least {format_duration(MIN_RAW_RETENTION)})"
    )
    for dataset in (*RAW_DATASETS, "rollups_1h"):
        if getattr(retention, dataset) < minimum:
            yield Problem(f"retention.{dataset}", why)
    for workflow_id, override in retention.workflows.items():
        for dataset in (*RAW_DATASETS, "rollups_1h"):
            value = getattr(override, dataset)
            if value is not None and value < minimum:
                yield Problem(
                    format_location(["retention", "workflows", workflow_id, dataset]), why
                )


def _check_tokens(api: ApiConfig) -> Iterator[Problem]:
    """Token digests and names are unique; operator tokens hold only `admin`."""
    for index, token in enumerate(api.tokens):
        for field, message in token_problems(token.tenant, token.scopes):
            yield Problem(f"api.tokens[{index}].{field}", message)
    for field in ("sha256", "name"):
        first: dict[str, int] = {}
        for index, token in enumerate(api.tokens):
            value = getattr(token, field)
            if value in first:
                yield Problem(
                    f"api.tokens[{index}].{field}",
                    f"duplicate of api.tokens[{first[value]}].{field}",
                )
            else:
                first[value] = index


def _check_ranges(api: ApiConfig) -> Iterator[Problem]:
    """The default query range must fit in the maximum one."""
    if api.default_range > api.max_range:
        yield Problem(
            "api.default_range", f"must not exceed api.max_range ({format_duration(api.max_range)})"
        )


def _check_listen(metrics: MetricsConfig, api: ApiConfig) -> Iterator[Problem]:
    """The metrics and API endpoints must not bind the same address."""
    metrics_host, metrics_port = parse_listen(metrics.listen)
    api_host, api_port = parse_listen(api.listen)
    same_host = (
        metrics_host.lower() == api_host.lower()
        or metrics_host in _WILDCARD_HOSTS
        or api_host in _WILDCARD_HOSTS
    )
    if metrics_port == api_port and same_host:
        yield Problem("api.listen", f"conflicts with metrics.listen ({metrics.listen})")


def _check_pool(store: StoreConfig) -> Iterator[Problem]:
    """The pool's minimum size must not exceed its maximum."""
    if store.pool_min_size > store.pool_max_size:
        yield Problem(
            "store.pool_min_size", f"must not exceed store.pool_max_size ({store.pool_max_size})"
        )


def _check_alert_windows(metrics: MetricsConfig, monitoring: MonitoringConfig) -> Iterator[Problem]:
    """Alerts on funnel gauges read windows the exporter serves."""
    served = ", ".join(format_duration(w) for w in metrics.windows) or "none"
    for name in ("dropoff", "dropoff_jump", "conversion_drop"):
        window = getattr(monitoring, name).window
        if window not in metrics.windows:
            yield Problem(
                f"monitoring.{name}.window",
                f"must be one of metrics.windows ({served}), got {format_duration(window)}",
            )


_CHECKS: tuple[tuple[tuple[str, ...], Callable[..., Iterator[Problem]]], ...] = (
    (("store",), _check_pool),
    (("exporter", "retention"), _check_retention),
    (("api",), _check_tokens),
    (("api",), _check_ranges),
    (("metrics", "api"), _check_listen),
    (("metrics", "monitoring"), _check_alert_windows),
)
