"""Export datasets: what to export (the spec), their documents and their rows."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import asyncpg

from exporter import queries
from exporter.exports.formats import iso

DATASETS = ("summary", "funnel", "actions", "executions")
MODES = ("cohort", "activity")

SUMMARY_COLUMNS = ("bucket", *queries.SERIES_FIELDS)
FUNNEL_COLUMNS = (
    "index",
    "step_id",
    "name",
    "action_type",
    "reached",
    "in_progress",
    "dropped",
    "dropoff_ratio",
    "conversion_from_previous",
    "conversion_from_start",
    "bottleneck",
)
PERF_FIELDS = ("executions", "succeeded", "failed", "skipped", "running", "success_rate")
ACTIONS_COLUMNS = (
    "scope",
    "index",
    "step_id",
    "name",
    "action_type",
    *PERF_FIELDS,
    "duration_avg_seconds",
    "duration_p50_seconds",
    "duration_p95_seconds",
    "duration_p99_seconds",
    "top_error",
    "top_error_count",
)
EXECUTIONS_COLUMNS = (
    "execution_id",
    "workflow_id",
    "contact_id",
    "status",
    "enrolled_at",
    "completed_at",
    "converted_at",
    "converted_in_window",
    "exited_at",
    "exit_reason",
    "failed_at",
    "current_step_id",
)
COLUMNS: dict[str, tuple[str, ...]] = {
    "summary": SUMMARY_COLUMNS,
    "funnel": FUNNEL_COLUMNS,
    "actions": ACTIONS_COLUMNS,
    "executions": EXECUTIONS_COLUMNS,
}
"""Columns of each dataset in CSV and NDJSON."""

_DURATIONS = ("avg", "p50", "p95", "p99")


@dataclass(frozen=True, slots=True)
class ExportSpec:
    """One export: whose, which workflow, which dataset in which format, over which range."""

    tenant: str
    workflow_id: str
    dataset: str
    format: str
    start: datetime
    end: datetime
    granularity: str
    tz: str
    mode: str = "cohort"

    def range_json(self) -> dict[str, str]:
        """The resolved range as the analytics endpoints show it."""
        return {
            "from": iso(self.start),
            "to": iso(self.end),
            "granularity": self.granularity,
            "tz": self.tz,
        }

    def params(self) -> dict[str, str]:
        """What a stored job keeps besides its own columns."""
        return {**self.range_json(), "mode": self.mode}

    @classmethod
    def from_job(cls, job: Any, params: dict[str, str]) -> ExportSpec:
        """The spec of a stored job row."""
        return cls(
            tenant=job["tenant_id"],
            workflow_id=job["workflow_id"],
            dataset=job["dataset"],
            format=job["format"],
            start=datetime.fromisoformat(params["from"].replace("Z", "+00:00")),
            end=datetime.fromisoformat(params["to"].replace("Z", "+00:00")),
            granularity=params["granularity"],
            tz=params["tz"],
            mode=params.get("mode", "cohort"),
        )

    def to_json(self) -> dict[str, Any]:
        """The spec as plain JSON values."""
        out = asdict(self)
        out["start"], out["end"] = iso(self.start), iso(self.end)
        return out


def _perf(p: dict[str, Any]) -> dict[str, Any]:
    return {k: p[k] for k in (*PERF_FIELDS, "duration_seconds", "top_errors")}


async def document(
    conn: asyncpg.Connection, wf: queries.Workflow, spec: ExportSpec
) -> dict[str, Any]:
    """The analytics document of summary, funnel or actions, shaped like the API's."""
    t, s, e = spec.tenant, spec.start, spec.end
    if spec.dataset == "summary":
        d = await queries.summary(conn, t, wf, s, e, spec.granularity, spec.tz)
        keys = (
            *queries.SERIES_FIELDS,
            "exits_by_reason",
            "completion_rate",
            "conversion_rate",
            "time_to_complete_seconds",
            "time_to_convert_seconds",
            "series",
        )
        return {k: d[k] for k in keys}
    if spec.dataset == "funnel":
        if spec.mode == "cohort":
            f = await queries.cohort_funnel(conn, t, wf, s, e)
        else:
            f = await queries.activity_funnel(conn, t, wf, s, e)
        keys = ("enrolled", "completed", "converted", "in_progress", "steps")
        return {"mode": spec.mode, **{k: f[k] for k in keys}}
    if spec.dataset == "actions":
        a = await queries.actions(conn, t, wf, s, e)
        return {
            "actions": [
                {
                    **{k: x[k] for k in ("index", "step_id", "name", "action_type")},
                    **_perf(x),
                }
                for x in a["actions"]
            ],
            "action_types": [
                {"action_type": x["action_type"], **_perf(x)} for x in a["action_types"]
            ],
        }
    raise ValueError(f"{spec.dataset} has no document form")


def table(spec: ExportSpec, doc: dict[str, Any]) -> list[tuple[Any, ...]]:
    """Rows of a summary, funnel or actions document in `COLUMNS[dataset]` order."""
    if spec.dataset == "summary":
        return [tuple(p[c] for c in SUMMARY_COLUMNS) for p in doc["series"]]
    if spec.dataset == "funnel":
        return [tuple(s[c] for c in FUNNEL_COLUMNS) for s in doc["steps"]]
    rows = []
    for scope, items in (("step", doc["actions"]), ("action_type", doc["action_types"])):
        for x in items:
            top = x["top_errors"][0] if x["top_errors"] else {"error": None, "count": None}
            rows.append(
                (
                    scope,
                    x.get("index"),
                    x.get("step_id"),
                    x.get("name"),
                    x["action_type"],
                    *(x[k] for k in PERF_FIELDS),
                    *(x["duration_seconds"][k] for k in _DURATIONS),
                    top["error"],
                    top["count"],
                )
            )
    return rows


async def report(conn: asyncpg.Connection, wf: queries.Workflow, spec: ExportSpec) -> dict:
    """Everything the PDF report shows: summary, cohort funnel and action performance."""
    t, s, e = spec.tenant, spec.start, spec.end
    return {
        "summary": await queries.summary(conn, t, wf, s, e, spec.granularity, spec.tz),
        "funnel": await queries.cohort_funnel(conn, t, wf, s, e),
        "actions": await queries.actions(conn, t, wf, s, e),
    }
