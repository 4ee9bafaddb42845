"""Pydantic models of the configuration file; every model is frozen and forbids unknown keys."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationInfo,
    WrapSerializer,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from exporter.store import locks

from .durations import Duration, PositiveDuration

__all__ = [
    "DATASETS",
    "OPERATOR",
    "RAW_DATASETS",
    "SCOPES",
    "ApiConfig",
    "ApiToken",
    "Config",
    "ExecutionColumns",
    "ExporterConfig",
    "ExportsConfig",
    "MetricsConfig",
    "MonitoringConfig",
    "RetentionConfig",
    "RetentionOverride",
    "SourceConfig",
    "StoreConfig",
    "TenantFilter",
    "WorkflowColumns",
    "parse_listen",
    "token_problems",
]

RAW_DATASETS: tuple[str, ...] = ("executions", "step_runs", "workflow_events")
"""Datasets holding raw rows; rollups are refreshed from them."""

DATASETS: tuple[str, ...] = (*RAW_DATASETS, "rollups_1h", "rollups_1d")
"""Every dataset with a retention period."""

_IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_$]*"
_IDENTIFIER_RE = re.compile(_IDENTIFIER)
_TABLE_RE = re.compile(rf"(?:{_IDENTIFIER}\.)?{_IDENTIFIER}")
_MAX_IDENTIFIER_LENGTH = 63  # PostgreSQL truncates longer names silently.
_SHA256_RE = re.compile(r"[0-9a-f]{64}")
_PORT_RE = re.compile(r"[0-9]{1,5}")
_BIGINT_MIN, _BIGINT_MAX = -(2**63), 2**63 - 1


def _error(kind: str, message: str) -> PydanticCustomError:
    """A validation error whose message is shown as is."""
    return PydanticCustomError(kind, "{message}", {"message": message})


def _no_bool(value: object) -> object:
    """Reject booleans where an integer is expected (pydantic would read true as 1)."""
    if isinstance(value, bool):
        raise _error("int_type", "must be an integer")
    return value


def _text_id(value: object) -> object:
    """Accept integer ids (YAML reads `42` as a number) as text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def _non_empty(value: str) -> str:
    """Reject empty or blank strings."""
    if not value.strip():
        raise _error("empty", "must not be empty")
    return value


def _identifier(value: str) -> str:
    """Validate a bare SQL identifier."""
    if not _IDENTIFIER_RE.fullmatch(value):
        raise _error(
            "sql_identifier",
            f"must be a SQL identifier (letters, digits, _ or $, not starting with a digit),"
            f" got {value!r}",
        )
    if len(value) > _MAX_IDENTIFIER_LENGTH:
        raise _error("sql_identifier", f"must be at most {_MAX_IDENTIFIER_LENGTH} characters")
    return value


def _table_name(value: str) -> str:
    """Validate a table name: an identifier with an optional `schema.` prefix."""
    if not _TABLE_RE.fullmatch(value):
        raise _error(
            "sql_identifier",
            f"must be a table name (identifier or schema.identifier), got {value!r}",
        )
    if any(len(part) > _MAX_IDENTIFIER_LENGTH for part in value.split(".")):
        raise _error(
            "sql_identifier", f"each part must be at most {_MAX_IDENTIFIER_LENGTH} characters"
        )
    return value


def _dsn(value: str) -> str:
    """Validate a PostgreSQL connection URI without echoing it (it may hold a password)."""
    if not value.strip():
        raise _error("empty", "must not be empty")
    if not value.startswith(("postgresql://", "postgres://")):
        raise _error("dsn", "must be a postgresql:// or postgres:// URI")
    return value


def parse_listen(value: str) -> tuple[str, int]:
    """Split "host:port" or "[v6]:port" into (host, port); raise ValueError if invalid."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host or "[" in host or "]" in host:
            raise ValueError(f"must be host:port, got {value!r}")
    elif ":" in host or "[" in host or "]" in host:
        raise ValueError(f"must be host:port (IPv6 as [addr]:port), got {value!r}")
    if not sep or not host or not _PORT_RE.fullmatch(port):
        raise ValueError(f"must be host:port, got {value!r}")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    return host, int(port)


def _listen(value: str) -> str:
    """Pydantic validator for a listen address."""
    try:
        parse_listen(value)
    except ValueError as exc:
        raise _error("listen", str(exc)) from None
    return value


def _sha256(value: str) -> str:
    """Validate (and lower-case) a hex SHA-256 digest."""
    digest = value.strip().lower()
    if not _SHA256_RE.fullmatch(digest):
        raise _error("sha256", "must be 64 hexadecimal characters (the SHA-256 of the token)")
    return digest


def _instant(value: object) -> object:
    """Read a date (midnight UTC) or a timestamp (UTC when it has no offset)."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, date):
        return datetime.combine(value, time(), UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            raise _error(
                "timestamp", f"must be a date or an ISO 8601 timestamp, got {value!r}"
            ) from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    raise _error("timestamp", "must be a date or an ISO 8601 timestamp")


def _off(value: object) -> object:
    """`off`, `false` or a zero duration disable a periodic job (None)."""
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in ("off", "false", "never"):
        return None
    return value


def _zero_is_none(value: timedelta | None) -> timedelta | None:
    """A zero interval means the same as `off`."""
    return None if value is not None and value <= timedelta(0) else value


def _freeze(value: dict[Any, Any]) -> Mapping[Any, Any]:
    """Wrap a validated dict in a read-only view."""
    return MappingProxyType(value)


def _thaw(value: Mapping[Any, Any], handler: SerializerFunctionWrapHandler) -> Any:
    """Serialize a read-only mapping as a plain dict."""
    return handler(dict(value))


def _unique_durations(values: tuple[timedelta, ...]) -> tuple[timedelta, ...]:
    """Reject repeated durations in a list."""
    if len(set(values)) != len(values):
        raise _error("duplicate", "must not repeat a duration")
    return values


PositiveInt = Annotated[int, BeforeValidator(_no_bool), Field(ge=1)]
"""An integer of at least 1 (booleans rejected)."""

NonNegativeInt = Annotated[int, BeforeValidator(_no_bool), Field(ge=0)]
"""An integer of at least 0 (booleans rejected)."""

BigInt = Annotated[int, BeforeValidator(_no_bool), Field(ge=_BIGINT_MIN, le=_BIGINT_MAX)]
"""An integer in PostgreSQL's bigint range."""

NonEmptyStr = Annotated[str, AfterValidator(_non_empty)]
"""A string that is not empty or blank."""

TextId = Annotated[str, BeforeValidator(_text_id), AfterValidator(_non_empty)]
"""An id kept as text; YAML integers are accepted."""

Identifier = Annotated[str, AfterValidator(_identifier)]
"""A bare SQL identifier (column name)."""

TableName = Annotated[str, AfterValidator(_table_name)]
"""A SQL table name, optionally `schema.`-qualified."""

Dsn = Annotated[str, AfterValidator(_dsn)]
"""A PostgreSQL connection URI."""

Listen = Annotated[str, AfterValidator(_listen)]
"""A "host:port" listen address; IPv6 hosts in brackets."""

Sha256 = Annotated[str, AfterValidator(_sha256)]
"""A hex SHA-256 digest, stored lower-case."""

Instant = Annotated[datetime, BeforeValidator(_instant)]
"""A point in time: a date (midnight UTC) or an ISO 8601 timestamp (UTC without an offset)."""

OptionalInterval = Annotated[
    Duration | None, BeforeValidator(_off), AfterValidator(_zero_is_none)
]
"""An interval of a periodic job; `off`, `false` or 0 disable it (None)."""

Scope = Literal["read", "export", "admin"]
"""An API token scope."""

SCOPES: tuple[str, ...] = ("read", "export", "admin")
"""Every API token scope, in the order they are listed."""

OPERATOR = "*"
"""The tenant of an operator token: store-wide retention, every tenant's audit, no analytics."""


def token_problems(tenant: str, scopes: frozenset[str] | set[str]) -> list[tuple[str, str]]:
    """(field, message) for each ambiguous or unknown part of a token's tenant and scopes."""
    out: list[tuple[str, str]] = []
    unknown = sorted(s for s in scopes if s not in SCOPES)
    if unknown:
        out.append(
            (
                "scopes",
                f"unknown scope {', '.join(repr(s) for s in unknown)}: "
                f"choose among {', '.join(SCOPES)}",
            )
        )
    elif not scopes:
        out.append(("scopes", f"must name at least one of {', '.join(SCOPES)}"))
    if not tenant.strip():
        out.append(("tenant", "must not be empty"))
    elif tenant == OPERATOR:
        extra = sorted(s for s in scopes if s in SCOPES and s != "admin")
        if extra:
            out.append(
                (
                    "scopes",
                    f'an operator token (tenant "{OPERATOR}") takes only the admin scope, not '
                    f"{', '.join(extra)}: it manages store-wide retention and reads no "
                    "tenant's analytics",
                )
            )
    elif "*" in tenant:
        out.append(
            (
                "tenant",
                f'must be one tenant id, or exactly "{OPERATOR}" for the operator; '
                f"{tenant!r} is ambiguous (tenants are not patterns)",
            )
        )
    return out


_LABEL_VALUE_RE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")
_REASON_RE = re.compile(r"[^\x00-\x1f\x7f]{1,64}")


def _label_value(value: str) -> str:
    """A Prometheus label value safe to paste between double quotes in generated PromQL."""
    if not _LABEL_VALUE_RE.fullmatch(value):
        raise _error(
            "label_value",
            f"must be 1 to 100 letters, digits, '_', '.', ':' or '-', got {value!r}",
        )
    return value


def _reason(value: str) -> str:
    """An exit reason allowed as a label value as is."""
    if value in ("other", "unspecified"):
        raise _error("reason", f"{value!r} is reserved for the reasons that are not listed")
    if not _REASON_RE.fullmatch(value):
        raise _error(
            "reason",
            f"must be 1 to 64 characters without control characters, got {value!r}",
        )
    return value


def _runbook_url(value: str) -> str:
    """An absolute http(s) URL template with optional {alert} and {anchor} fields."""
    if not re.fullmatch(r"https?://[^\s{}]+(?:\{(?:alert|anchor)\}[^\s{}]*)*", value):
        raise _error(
            "runbook_url",
            "must be an absolute http:// or https:// URL; {alert} and {anchor} are the only"
            f" placeholders, got {value!r}",
        )
    return value


LabelValue = Annotated[str, AfterValidator(_label_value)]
"""A label value that generated PromQL may quote as is."""

ExitReason = Annotated[str, BeforeValidator(_text_id), AfterValidator(_reason)]
"""An exit reason (source free text) allowed as a `reason` label value."""

Ratio = Annotated[float, BeforeValidator(_no_bool), Field(gt=0, le=1)]
"""A share in (0, 1]."""


class ExecutionColumns(BaseModel):
    """Column names of the source executions table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Identifier = "id"
    tenant_id: Identifier = "tenant_id"
    workflow_id: Identifier = "workflow_id"
    contact_id: Identifier = "contact_id"
    status: Identifier = "status"
    enrolled_at: Identifier = "enrolled_at"
    completed_at: Identifier = "completed_at"
    converted_at: Identifier = "converted_at"
    exited_at: Identifier = "exited_at"
    exit_reason: Identifier = "exit_reason"
    current_step_id: Identifier = "current_step_id"
    step_progress: Identifier = "step_progress"
    updated_at: Identifier = "updated_at"
    failed_at: Identifier | None = None


class WorkflowColumns(BaseModel):
    """Column names of the source workflows table."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Identifier = "id"
    tenant_id: Identifier = "tenant_id"
    name: Identifier = "name"
    steps: Identifier = "steps"
    updated_at: Identifier = "updated_at"


class SourceConfig(BaseModel):
    """The application database the exporter polls."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dsn: Dsn
    executions_table: TableName = "workflow_executions"
    workflows_table: TableName = "workflows"
    columns: ExecutionColumns = Field(default_factory=ExecutionColumns)
    workflow_columns: WorkflowColumns = Field(default_factory=WorkflowColumns)
    statement_timeout: PositiveDuration = timedelta(seconds=30)
    valid_from: Instant = datetime(2000, 1, 1, tzinfo=UTC)
    valid_until: PositiveDuration = timedelta(days=1)


class StoreConfig(BaseModel):
    """The analytics store; `dsn` defaults to the source's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dsn: Dsn | None = None
    backend: Literal["auto", "postgres", "timescaledb"] = "auto"
    partition_interval: PositiveDuration = timedelta(days=7)
    premake_partitions: PositiveInt = 4
    use_policies: bool = False
    compress_after: PositiveDuration | None = None
    statement_timeout: PositiveDuration = timedelta(seconds=30)
    pool_min_size: NonNegativeInt = 1
    pool_max_size: PositiveInt = 10
    connect_retries: NonNegativeInt = 10
    connect_retry_delay: Duration = timedelta(seconds=1)
    connect_retry_max_delay: PositiveDuration = timedelta(seconds=10)


class ExporterConfig(BaseModel):
    """The poll loop and rollup refresh."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    poll_interval: PositiveDuration = timedelta(seconds=5)
    batch_size: Annotated[int, BeforeValidator(_no_bool), Field(ge=1, le=100_000)] = 5000
    overlap: Duration = timedelta(seconds=30)
    refresh_interval: PositiveDuration = timedelta(seconds=30)
    conversion_window: PositiveDuration | None = None
    conversion_windows: Annotated[
        dict[TextId, PositiveDuration], AfterValidator(_freeze), WrapSerializer(_thaw)
    ] = Field(default_factory=dict)
    lock_id: BigInt = locks.POLL
    ready_max_lag: PositiveDuration = Field(timedelta(minutes=5), validate_default=True)

    @field_validator("ready_max_lag")
    @classmethod
    def _lag_above_interval(cls, value: timedelta, info: ValidationInfo) -> timedelta:
        """A readiness lag within the poll interval would report every healthy exporter late."""
        interval = info.data.get("poll_interval")
        if isinstance(interval, timedelta) and value <= interval:
            raise _error(
                "ready_max_lag",
                f"must be longer than exporter.poll_interval ({interval.total_seconds():g} s)",
            )
        return value
    reconcile_interval: OptionalInterval = timedelta(hours=6)

    def conversion_window_for(self, workflow_id: str) -> timedelta | None:
        """The conversion window of a workflow: its own, else the global one, else None."""
        return self.conversion_windows.get(workflow_id, self.conversion_window)


class TenantFilter(BaseModel):
    """Tenants whose workflows /metrics serves, as glob patterns; exclude wins."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    include: tuple[TextId, ...] = ("*",)
    exclude: tuple[TextId, ...] = ()


class MetricsConfig(BaseModel):
    """The Prometheus /metrics endpoint and its snapshot."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: Listen = "127.0.0.1:9464"
    snapshot_interval: PositiveDuration = timedelta(seconds=15)
    windows: Annotated[tuple[PositiveDuration, ...], AfterValidator(_unique_durations)] = (
        timedelta(hours=1),
        timedelta(hours=24),
        timedelta(days=7),
    )
    tenant_label: bool = True
    max_series: PositiveInt = 50_000
    include: tuple[TextId, ...] = ("*",)
    exclude: tuple[TextId, ...] = ()
    tenants: TenantFilter = Field(default_factory=TenantFilter)
    min_volume: NonNegativeInt = 20
    header_timeout: PositiveDuration = timedelta(seconds=10)
    exit_reasons: tuple[ExitReason, ...] = ()
    top_reasons: Annotated[int, BeforeValidator(_no_bool), Field(ge=0, le=100)] = 10


class ApiToken(BaseModel):
    """One API bearer token, stored as the SHA-256 of the secret."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: NonEmptyStr
    sha256: Sha256
    tenant: TextId
    scopes: Annotated[frozenset[Scope], Field(min_length=1)] = frozenset({"read"})


def _origin(value: object) -> object:
    """An origin is `*` or scheme://host[:port], nothing after it."""
    if isinstance(value, str) and value != "*" and not re.fullmatch(
        r"https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?", value
    ):
        raise _error("origin", "must be * or an origin like https://app.example.com[:port]")
    return value


CorsOrigin = Annotated[str, BeforeValidator(_origin)]


class ApiConfig(BaseModel):
    """The aiohttp API service."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    listen: Listen = "127.0.0.1:8080"
    tokens: tuple[ApiToken, ...] = ()
    max_range: PositiveDuration = timedelta(days=400)
    default_range: PositiveDuration = timedelta(days=7)
    sse_max_per_token: PositiveInt = 20
    refresh_min_interval: Duration = timedelta(seconds=10)
    max_body_bytes: PositiveInt = 65536
    header_timeout: PositiveDuration = timedelta(seconds=10)
    cors_origins: tuple[CorsOrigin, ...] = ()
    """Browser origins allowed to call the API (CORS), e.g. `https://app.example.com`; `*`
    allows any. Empty (the default): no CORS headers."""


class ExportsConfig(BaseModel):
    """Export files produced by the API."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    directory: Path = Path("./.wfa/exports")
    max_age: PositiveDuration = timedelta(hours=24)
    max_concurrent_per_tenant: PositiveInt = 2

    @field_validator("directory", mode="before")
    @classmethod
    def _directory_not_empty(cls, value: object) -> object:
        """Reject an empty directory (Path("") would mean the working directory)."""
        if isinstance(value, str) and not value.strip():
            raise _error("empty", "must not be empty")
        return value


class RetentionOverride(BaseModel):
    """Per-workflow retention periods; unset datasets use the global period."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    executions: PositiveDuration | None = None
    step_runs: PositiveDuration | None = None
    workflow_events: PositiveDuration | None = None
    rollups_1h: PositiveDuration | None = None
    rollups_1d: PositiveDuration | None = None


class RetentionConfig(BaseModel):
    """How long each dataset is kept, globally and per workflow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    executions: PositiveDuration = timedelta(days=90)
    step_runs: PositiveDuration = timedelta(days=90)
    workflow_events: PositiveDuration = timedelta(days=90)
    rollups_1h: PositiveDuration = timedelta(days=400)
    rollups_1d: PositiveDuration = timedelta(days=730)
    workflows: Annotated[
        dict[TextId, RetentionOverride], AfterValidator(_freeze), WrapSerializer(_thaw)
    ] = Field(default_factory=dict)
    run_interval: PositiveDuration = timedelta(hours=24)

    def period(self, dataset: str, workflow_id: str | None = None) -> timedelta:
        """Retention of a dataset, for one workflow when it has an override."""
        if dataset not in DATASETS:
            raise KeyError(dataset)
        override = self.workflows.get(workflow_id) if workflow_id is not None else None
        value: timedelta | None = getattr(override, dataset) if override else None
        return value if value is not None else getattr(self, dataset)


class _Alert(BaseModel):
    """How long a condition must hold before its alert fires."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    for_: Annotated[PositiveDuration, Field(alias="for")] = timedelta(minutes=15)


class DropoffAlert(_Alert):
    """WfaStepDropoffHigh: drop-off ratio of a step in a cohort window."""

    ratio: Ratio = 0.5
    window: PositiveDuration = timedelta(days=1)


class DropoffJumpAlert(_Alert):
    """WfaStepDropoffJump*: drop-off ratio of a short cohort window against a baseline."""

    points: Ratio = 0.2
    window: PositiveDuration = timedelta(hours=1)


class ConversionDropAlert(_Alert):
    """WfaConversionRateDrop*: cohort conversion rate against a baseline."""

    for_: Annotated[PositiveDuration, Field(alias="for")] = timedelta(minutes=30)
    share: Ratio = 0.3
    window: PositiveDuration = timedelta(days=1)


class FailureAlert(_Alert):
    """WfaActionFailureRatioHigh: failed / finished attempts of a step over a rate window."""

    ratio: Ratio = 0.1
    window: PositiveDuration = timedelta(minutes=30)


class SlowdownAlert(_Alert):
    """WfaStepSlowdown: p95 step duration over a rate window against the trailing day's p95."""

    factor: Annotated[float, BeforeValidator(_no_bool), Field(gt=1, le=1000)] = 3.0
    window: PositiveDuration = timedelta(minutes=30)


class IngestLagAlert(_Alert):
    """WfaIngestLagHigh: the leader is behind the source."""

    for_: Annotated[PositiveDuration, Field(alias="for")] = timedelta(minutes=10)
    lag: PositiveDuration = timedelta(minutes=10)


class ExporterAlert(_Alert):
    """WfaExporterAbsent and WfaPollErrors."""

    for_: Annotated[PositiveDuration, Field(alias="for")] = timedelta(minutes=5)


class PollErrorsAlert(_Alert):
    """WfaPollErrors: polls keep failing."""

    for_: Annotated[PositiveDuration, Field(alias="for")] = timedelta(minutes=10)


class MonitoringConfig(BaseModel):
    """Prometheus rules, Grafana-managed alerts and dashboards, generated from these values."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job: LabelValue = "wfa-exporter"
    runbook_url: Annotated[str, AfterValidator(_runbook_url)] = (
        "http://localhost:9464/runbook/{alert}"
    )
    dropoff: DropoffAlert = Field(default_factory=DropoffAlert)
    dropoff_jump: DropoffJumpAlert = Field(default_factory=DropoffJumpAlert)
    conversion_drop: ConversionDropAlert = Field(default_factory=ConversionDropAlert)
    failure: FailureAlert = Field(default_factory=FailureAlert)
    slowdown: SlowdownAlert = Field(default_factory=SlowdownAlert)
    ingest_lag: IngestLagAlert = Field(default_factory=IngestLagAlert)
    exporter_absent: ExporterAlert = Field(default_factory=ExporterAlert)
    poll_errors: PollErrorsAlert = Field(default_factory=PollErrorsAlert)

    def runbook(self, alert: str) -> str:
        """The runbook link of one alert."""
        return self.runbook_url.format(alert=alert, anchor=alert.lower())


_SECTIONS = (
    "source",
    "store",
    "exporter",
    "metrics",
    "api",
    "exports",
    "retention",
    "monitoring",
)


class Config(BaseModel):
    """The whole configuration; only `source` is required."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: SourceConfig
    store: StoreConfig = Field(default_factory=StoreConfig)
    exporter: ExporterConfig = Field(default_factory=ExporterConfig)
    metrics: MetricsConfig = Field(default_factory=MetricsConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    exports: ExportsConfig = Field(default_factory=ExportsConfig)
    retention: RetentionConfig = Field(default_factory=RetentionConfig)
    monitoring: MonitoringConfig = Field(default_factory=MonitoringConfig)

    @model_validator(mode="before")
    @classmethod
    def _fill_defaults(cls, data: Any) -> Any:
        """Treat empty sections (`store:`) as {} and default store.dsn to source.dsn."""
        if not isinstance(data, Mapping):
            return data
        data = {
            key: ({} if key in _SECTIONS and value is None else value)
            for key, value in data.items()
        }
        source, store = data.get("source"), data.get("store", {})
        source_dsn = (
            source.get("dsn") if isinstance(source, Mapping) else getattr(source, "dsn", None)
        )
        if not isinstance(source_dsn, str):
            return data
        try:
            _dsn(source_dsn)
        except PydanticCustomError:
            return data
        if isinstance(store, Mapping) and store.get("dsn") is None:
            data["store"] = {**store, "dsn": source_dsn}
        elif isinstance(store, StoreConfig) and store.dsn is None:
            data["store"] = store.model_copy(update={"dsn": source_dsn})
        return data

    @property
    def store_dsn(self) -> str:
        """The store DSN (the source's when `store.dsn` is not set)."""
        return self.store.dsn or self.source.dsn
