"""The API's response bodies as pydantic models: the one definition of each shape.

Routes build and serialise them, the exports reuse the analytics documents, and the OpenAPI
document's schemas are generated from them (`schemas()`): a new endpoint adds its model to
`RESPONSE_MODELS` (or a request body to `REQUEST_MODELS`) and refers to it by class name.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import models_json_schema

from exporter.timerange import GRANULARITIES

REF_TEMPLATE = "#/components/schemas/{model}"

Count = Annotated[int, Field(ge=0)]
Ratio = Annotated[float, Field(ge=0)] | None
Seconds = Annotated[float, Field(ge=0)] | None
Granularity = Literal[GRANULARITIES]  # type: ignore[valid-type]
Mode = Literal["cohort", "activity"]
RetentionDataset = Literal["executions", "step_runs", "workflow_events", "rollups_1h", "rollups_1d"]
ExportFormat = Literal["csv", "json", "ndjson", "pdf"]
ExportDataset = Literal["summary", "funnel", "actions", "executions"]
DATA_AS_OF = (
    "Freshness: the start of the last poll cycle that read the source until caught up. Every "
    "source change committed before it (with updated_at within the exporter's overlap of its "
    "commit) is in these numbers. Null before the first cycle."
)
DURATION = "A duration such as 90d, 400d, 2w or 36h."


class Body(BaseModel):
    """A response body: serialised with times as RFC 3339, non-finite floats as null, and
    documented without properties beyond its fields.

    Built from the read queries' dicts, which may carry more (internal) keys: those are left
    out, so each body says once what it shows.
    """

    model_config = ConfigDict(
        extra="ignore",
        populate_by_name=True,
        ser_json_inf_nan="null",
        json_schema_extra={"additionalProperties": False},
    )

    def json_bytes(self) -> bytes:
        """The compact JSON of this body (field aliases such as `from`)."""
        return self.model_dump_json(by_alias=True).encode()


# analytics ----------------------------------------------------------------------------------


class Range(Body):
    """The resolved half-open time range of the answer."""

    from_: datetime = Field(alias="from", description="Inclusive start (UTC).")
    to: datetime = Field(description="Exclusive end (UTC).")
    granularity: Granularity
    tz: str


class Step(Body):
    """A step of a workflow, in order."""

    index: Count
    step_id: str
    name: str
    action_type: str


class Workflow(Body):
    """A workflow of the token's tenant with its steps."""

    workflow_id: str
    name: str
    updated_at: datetime
    steps: list[Step]


class WorkflowList(Body):
    """GET /workflows: a page of the tenant's workflows, by id."""

    workflows: list[Workflow]
    next: str | None = Field(
        None, description="URL of the next page (also in the `Link` header); null on the last."
    )


class TimeStats(Body):
    """Average and interpolated quantiles, in seconds."""

    avg: Seconds
    p50: Seconds
    p95: Seconds


class Durations(TimeStats):
    """Average and interpolated quantiles of attempt durations, in seconds."""

    p99: Seconds


class SeriesPoint(Body):
    """Activity counts of one bucket."""

    bucket: datetime
    enrollments: Count
    completions: Count
    conversions: Count
    exits: Count
    failures: Count


class Answer(Body):
    """What every analytics answer carries: whose numbers, over which range, how fresh."""

    workflow_id: str
    range: Range
    data_as_of: datetime | None = Field(description=DATA_AS_OF)


class SummaryDocument(Body):
    """Activity counts, cohort rates, time to complete/convert and a series."""

    enrollments: Count
    completions: Count
    conversions: Count
    exits: Count
    failures: Count
    exits_by_reason: dict[str, Count]
    completion_rate: Ratio
    conversion_rate: Ratio
    time_to_complete_seconds: TimeStats
    time_to_convert_seconds: TimeStats
    series: list[SeriesPoint]


class Summary(SummaryDocument, Answer):
    """GET /workflows/{id}/analytics."""


class FunnelStep(Body):
    """In activity mode the cohort-only fields are null."""

    index: Count
    step_id: str
    name: str
    action_type: str
    reached: Count
    in_progress: Count | None
    dropped: int | None
    dropoff_ratio: float | None
    conversion_from_previous: Ratio
    conversion_from_start: Ratio
    bottleneck: bool | None


class FunnelDocument(Body):
    """Cohort or activity funnel per step."""

    mode: Mode
    enrolled: Count
    completed: Count
    converted: Count
    in_progress: Count | None
    steps: list[FunnelStep]


class Funnel(FunnelDocument, Answer):
    """GET /workflows/{id}/analytics/funnel."""


class TopError(Body):
    """A step error and how often it occurred."""

    error: str
    count: Count


class Performance(Body):
    """Outcomes and durations of a set of step attempts."""

    executions: Count
    succeeded: Count
    failed: Count
    skipped: Count
    running: Count
    success_rate: Ratio
    duration_seconds: Durations
    top_errors: list[TopError]


class ActionStep(Performance):
    """Performance of one step."""

    index: Count | None = Field(description="Null for a step no longer in the workflow.")
    step_id: str
    name: str
    action_type: str


class ActionType(Performance):
    """Performance of one action type over every step of that type."""

    action_type: str


class ActionsDocument(Body):
    """Action performance per step and per action type."""

    actions: list[ActionStep]
    action_types: list[ActionType]


class Actions(ActionsDocument, Answer):
    """GET /workflows/{id}/analytics/actions."""


DOCUMENTS: dict[str, type[Body]] = {
    "summary": SummaryDocument,
    "funnel": FunnelDocument,
    "actions": ActionsDocument,
}
"""The document of each analytics dataset (what an export of it holds)."""
ANSWERS: dict[str, type[Answer]] = {"summary": Summary, "funnel": Funnel, "actions": Actions}
"""The API answer of each analytics dataset."""


class RefreshResult(Body):
    """POST /workflows/{id}/analytics/refresh: what the cycle did for this workflow."""

    workflow_id: str
    ingested: bool
    workflow_changed: bool
    rollups_refreshed: bool
    seconds: Annotated[float, Field(ge=0)]


# health and errors -------------------------------------------------------------------------


class Status(Body):
    """GET /healthz."""

    status: Literal["alive", "ready"]


class Ready(Body):
    """GET /readyz."""

    status: Literal["ready"]
    data_as_of: datetime | None = Field(description=DATA_AS_OF)
    ingest_lag_seconds: Seconds = Field(
        description="Now minus data_as_of; at most exporter.ready_max_lag."
    )


class Problem(Body):
    """RFC 9457 problem details; `param` names the offending parameter."""

    type: str
    title: str
    status: Annotated[int, Field(ge=400, le=599)]
    detail: str | None = None
    param: str | None = None
    instance: str | None = None
    request_id: str | None = None
    data_as_of: datetime | None = Field(
        None, description="On /readyz: the store's freshness, as on analytics answers."
    )
    ingest_lag_seconds: Seconds = Field(None, description="On /readyz: now minus data_as_of.")


# exports -----------------------------------------------------------------------------------


class ExportRequest(BaseModel):
    """The same parameters as the query string (give one or the other)."""

    model_config = ConfigDict(json_schema_extra={"additionalProperties": False})

    format: ExportFormat = "csv"
    dataset: ExportDataset = "summary"
    mode: Mode = "cohort"
    from_: str | None = Field(None, alias="from")
    to: str | None = None
    range: str | None = None
    granularity: Granularity | None = None
    tz: str | None = None


class ExportJob(Body):
    """An export job and where to fetch its file."""

    job_id: str = Field(json_schema_extra={"format": "uuid"})
    status: Literal["queued", "running", "succeeded", "failed", "expired"]
    workflow_id: str
    dataset: ExportDataset
    format: ExportFormat
    mode: Mode | None = None
    range: Range
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    expires_at: datetime = Field(description="When the file is deleted.")
    attempts: Count = Field(description="Starts; a restart mid-job starts again.")
    rows: Count | None
    bytes: Count | None
    error: str | None = Field(description="Why the job failed.")
    status_url: str
    download_url: str | None = Field(description="Set once the job succeeded.")


class ExportJobList(Body):
    """GET /exports: a page of the tenant's export jobs, newest first."""

    jobs: list[ExportJob]
    next: str | None = Field(
        None, description="URL of the next page (also in the `Link` header); null on the last."
    )


# retention ---------------------------------------------------------------------------------


class PeriodInForce(Body):
    """A retention period and where it comes from."""

    dataset: RetentionDataset
    period: str = Field(description=DURATION)
    period_seconds: Count
    source: Literal["config", "store"]
    updated_at: datetime | None
    updated_by: str | None


class RetentionPolicy(PeriodInForce):
    """A period in force; `source` store means set over the API."""

    workflow_id: str | None = None


class RetentionDatasetPolicy(PeriodInForce):
    """A dataset's period in force and the periods of single workflows."""

    dropped_before: datetime | None = Field(
        description="Rows before this time were dropped by a run."
    )
    workflows: list[RetentionPolicy]


class RetentionRunSummary(Body):
    """The last run of the same scope."""

    id: Count
    started_at: datetime
    finished_at: datetime
    trigger: Literal["api", "scheduler"]
    actor: str
    dry_run: bool
    rows: Count


class RetentionOverview(Body):
    """GET /retention."""

    backend: Literal["postgres", "timescaledb"]
    minimum_period: str = Field(description=DURATION)
    minimum_applies_to: list[str]
    run_interval: str = Field(description=DURATION)
    datasets: list[RetentionDatasetPolicy]
    last_run: RetentionRunSummary | None


class RetentionChange(Body):
    """One audited policy change."""

    id: Count
    changed_at: datetime
    actor: str
    dataset: RetentionDataset
    workflow_id: str | None
    old_period: str | None
    new_period: str | None
    old_source: Literal["config", "store", "none"]
    new_source: Literal["config", "store", "none"]


class RetentionPolicyResult(Body):
    """PUT or DELETE /retention/{dataset}: the policy now in force and the change."""

    policy: RetentionPolicy | None
    change: RetentionChange


class RetentionAudit(Body):
    """GET /retention/audit."""

    changes: list[RetentionChange]


class RetentionPiece(Body):
    """A partition or chunk dropped, or rollup rows deleted."""

    relation: str
    table: str | None
    from_: datetime | None = Field(alias="from")
    to: datetime | None
    rows: Count = Field(description="Row estimate from the catalog or a count.")


class RetentionDelete(Body):
    """Rows deleted one by one for a period shorter than the longest."""

    workflow_id: str | None = Field(
        description="null: every workflow without a period of its own."
    )
    period: str = Field(description=DURATION)
    before: datetime
    rows: Count


class RetentionDatasetRun(Body):
    """What a run did (or would do) to one dataset."""

    dataset: RetentionDataset
    period: str = Field(description=DURATION)
    cutoff: datetime
    applied_cutoff: datetime | None = Field(
        description="Held below `cutoff` where the rollups above end."
    )
    held: bool
    dropped: list[RetentionPiece]
    deleted: list[RetentionDelete]
    rows: Count
    error: str | None


class RetentionRun(Body):
    """POST /retention/run."""

    run_id: Count
    scope: Literal["store", "tenant"] = Field(
        description="store: an operator's run over every tenant; tenant: the token's tenant's "
        "rows only (rows deleted one by one, no partition dropped)."
    )
    dry_run: bool
    started_at: datetime
    finished_at: datetime
    rows: Count
    datasets: list[RetentionDatasetRun]


RESPONSE_MODELS: tuple[type[BaseModel], ...] = (
    Problem, Status, Ready, WorkflowList, Summary, Funnel, Actions, RefreshResult, ExportJob,
    ExportJobList, RetentionOverview, RetentionPolicyResult, RetentionAudit, RetentionRun,
)
"""Every response body the API documents (nested models come along)."""
REQUEST_MODELS: tuple[type[BaseModel], ...] = (ExportRequest,)
"""Request bodies documented from models defined here; routes add their own parsers'."""


def schemas(requests: tuple[type[BaseModel], ...] = ()) -> dict[str, Any]:
    """components/schemas of the OpenAPI document, generated from the models."""
    pairs: list[tuple[type[BaseModel], Literal["validation", "serialization"]]] = [
        (m, "serialization") for m in RESPONSE_MODELS
    ]
    pairs += [(m, "validation") for m in (*REQUEST_MODELS, *requests)]
    _, top = models_json_schema(pairs, ref_template=REF_TEMPLATE)
    return _untitled(top.get("$defs", {}))


def _untitled(node: Any) -> Any:
    """The schema without the `title` pydantic gives every property (noise in the document)."""
    if isinstance(node, dict):
        return {
            k: _untitled(v)
            for k, v in node.items()
            if not (k == "title" and isinstance(v, str) and "properties" not in node)
        }
    if isinstance(node, list):
        return [_untitled(v) for v in node]
    return node
