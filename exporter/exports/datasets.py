"""Export datasets: what to export (the spec), their documents and their rows."""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg

from exporter import queries
from exporter.exports.formats import FORMATS, iso
from exporter.models import DOCUMENTS

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
NAME_ID_CHARS = 48
"""Most characters of a workflow id kept in a download's file name."""
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def safe_id(workflow_id: str) -> str:
    """A workflow id as a file-name part: [A-Za-z0-9_-] only, bounded, distinct when altered.

    An id that had to change (other characters, too long) gets a short digest of the original,
    so that two ids cleaned to the same text still give different names.
    """
    cleaned = _UNSAFE.sub("_", workflow_id).strip("_")[:NAME_ID_CHARS].rstrip("_")
    if cleaned == workflow_id:
        return cleaned
    digest = hashlib.sha256(workflow_id.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{cleaned}_{digest}" if cleaned else digest


def stamp(t: datetime, tz: str) -> str:
    """A compact local time with its offset for file names: 20261125T1513+0100, ...Z for UTC."""
    local = t.astimezone(ZoneInfo(tz))
    text = f"{local:%Y%m%dT%H%M}" + (f"{local:%S}" if local.second else "")
    offset = f"{local:%z}"
    return text + ("Z" if offset == "+0000" else offset)


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

    def download_name(self) -> str:
        """The file name a download is offered under: what, which workflow, which range."""
        what = "report" if self.format == "pdf" else self.dataset
        if self.dataset == "funnel" and self.format != "pdf":
            what = f"funnel-{self.mode}"
        return (
            f"wfa-{what}-{safe_id(self.workflow_id)}-{stamp(self.start, self.tz)}-"
            f"{stamp(self.end, self.tz)}.{FORMATS[self.format][1]}"
        )

    def to_json(self) -> dict[str, Any]:
        """The spec as plain JSON values."""
        out = asdict(self)
        out["start"], out["end"] = iso(self.start), iso(self.end)
        return out


async def document(
    conn: asyncpg.Connection, wf: queries.Workflow, spec: ExportSpec
) -> dict[str, Any]:
    """The analytics document of summary, funnel or actions: the API answer's own model."""
    t, s, e = spec.tenant, spec.start, spec.end
    if spec.dataset == "summary":
        d = await queries.summary(conn, t, wf, s, e, spec.granularity, spec.tz)
    elif spec.dataset == "funnel":
        if spec.mode == "cohort":
            d = {"mode": "cohort", **await queries.cohort_funnel(conn, t, wf, s, e)}
        else:
            d = {"mode": "activity", **await queries.activity_funnel(conn, t, wf, s, e)}
    elif spec.dataset == "actions":
        d = await queries.actions(conn, t, wf, s, e)
    else:
        raise ValueError(f"{spec.dataset} has no document form")
    return DOCUMENTS[spec.dataset].model_validate(d).model_dump(by_alias=True)


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
    """Everything the PDF report shows: summary with a daily series, cohort funnel, actions."""
    t, s, e = spec.tenant, spec.start, spec.end
    return {
        "summary": await queries.summary(conn, t, wf, s, e, "day", spec.tz),
        "funnel": await queries.cohort_funnel(conn, t, wf, s, e),
        "actions": await queries.actions(conn, t, wf, s, e),
    }
