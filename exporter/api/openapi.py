"""The OpenAPI 3.1 document of the API, built from small schema helpers."""

from __future__ import annotations

from typing import Any

from exporter import __version__
from exporter.api.app import API_PREFIX
from exporter.api.params import MAX_BUCKETS, MAX_ID_CHARS, RANGES, TIME_PATTERN, time_zones
from exporter.timerange import GRANULARITIES

J = dict[str, Any]


def _ref(name: str) -> J:
    return {"$ref": f"#/components/schemas/{name}"}


def _int(minimum: int | None = 0) -> J:
    return {"type": "integer"} if minimum is None else {"type": "integer", "minimum": minimum}


def _nullable(schema: J) -> J:
    t = schema["type"]
    return {**schema, "type": [t, "null"]}


def _obj(props: J, required: list[str] | None = None, **extra: Any) -> J:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
        **extra,
    }


_STR = {"type": "string"}
_TIME = {"type": "string", "format": "date-time"}
_DATA_AS_OF = {
    "type": ["string", "null"],
    "format": "date-time",
    "description": "Freshness: the start of the last poll cycle that read the source until "
    "caught up. Every source change committed before it (with updated_at within the "
    "exporter's overlap of its commit) is in these numbers. Null before the first cycle.",
}
_RATIO = {"type": ["number", "null"], "minimum": 0}
_SECONDS = {"type": ["number", "null"], "minimum": 0}

_COUNTS = ("enrollments", "completions", "conversions", "exits", "failures")

SCHEMAS: J = {
    "Problem": _obj(
        {
            "type": _STR,
            "title": _STR,
            "status": {"type": "integer", "minimum": 400, "maximum": 599},
            "detail": _STR,
            "param": _STR,
            "instance": _STR,
            "request_id": _STR,
            "data_as_of": {
                "type": ["string", "null"],
                "format": "date-time",
                "description": "On /readyz: the store's freshness, as on analytics answers.",
            },
            "ingest_lag_seconds": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "On /readyz: now minus data_as_of.",
            },
        },
        required=["type", "title", "status"],
        description="RFC 9457 problem details; `param` names the offending parameter.",
    ),
    "Range": _obj(
        {
            "from": {**_TIME, "description": "Inclusive start (UTC)."},
            "to": {**_TIME, "description": "Exclusive end (UTC)."},
            "granularity": {"type": "string", "enum": list(GRANULARITIES)},
            "tz": _STR,
        },
        description="The resolved half-open time range of the answer.",
    ),
    "Step": _obj(
        {"index": _int(), "step_id": _STR, "name": _STR, "action_type": _STR},
    ),
    "Workflow": _obj(
        {
            "workflow_id": _STR,
            "name": _STR,
            "updated_at": _TIME,
            "steps": {"type": "array", "items": _ref("Step")},
        }
    ),
    "WorkflowList": _obj({"workflows": {"type": "array", "items": _ref("Workflow")}}),
    "TimeStats": _obj({"avg": _SECONDS, "p50": _SECONDS, "p95": _SECONDS}),
    "SeriesPoint": _obj({"bucket": _TIME, **{k: _int() for k in _COUNTS}}),
    "Summary": _obj(
        {
            "workflow_id": _STR,
            "range": _ref("Range"),
            "data_as_of": _DATA_AS_OF,
            **{k: _int() for k in _COUNTS},
            "exits_by_reason": {"type": "object", "additionalProperties": _int()},
            "completion_rate": _RATIO,
            "conversion_rate": _RATIO,
            "time_to_complete_seconds": _ref("TimeStats"),
            "time_to_convert_seconds": _ref("TimeStats"),
            "series": {"type": "array", "items": _ref("SeriesPoint")},
        }
    ),
    "FunnelStep": _obj(
        {
            "index": _int(),
            "step_id": _STR,
            "name": _STR,
            "action_type": _STR,
            "reached": _int(),
            "in_progress": _nullable(_int()),
            "dropped": _nullable(_int(None)),
            "dropoff_ratio": {"type": ["number", "null"]},
            "conversion_from_previous": _RATIO,
            "conversion_from_start": _RATIO,
            "bottleneck": {"type": ["boolean", "null"]},
        },
        description="In activity mode the cohort-only fields are null.",
    ),
    "Funnel": _obj(
        {
            "workflow_id": _STR,
            "range": _ref("Range"),
            "data_as_of": _DATA_AS_OF,
            "mode": {"type": "string", "enum": ["cohort", "activity"]},
            "enrolled": _int(),
            "completed": _int(),
            "converted": _int(),
            "in_progress": _nullable(_int()),
            "steps": {"type": "array", "items": _ref("FunnelStep")},
        }
    ),
    "Durations": _obj({"avg": _SECONDS, "p50": _SECONDS, "p95": _SECONDS, "p99": _SECONDS}),
    "TopError": _obj({"error": _STR, "count": _int()}),
    "ActionStep": _obj(
        {
            "index": {
                "type": ["integer", "null"],
                "minimum": 0,
                "description": "Null for a step no longer in the workflow.",
            },
            "step_id": _STR,
            "name": _STR,
            "action_type": _STR,
            "executions": _int(),
            "succeeded": _int(),
            "failed": _int(),
            "skipped": _int(),
            "running": _int(),
            "success_rate": _RATIO,
            "duration_seconds": _ref("Durations"),
            "top_errors": {"type": "array", "items": _ref("TopError")},
        }
    ),
    "ActionType": _obj(
        {
            "action_type": _STR,
            "executions": _int(),
            "succeeded": _int(),
            "failed": _int(),
            "skipped": _int(),
            "running": _int(),
            "success_rate": _RATIO,
            "duration_seconds": _ref("Durations"),
            "top_errors": {"type": "array", "items": _ref("TopError")},
        }
    ),
    "Actions": _obj(
        {
            "workflow_id": _STR,
            "range": _ref("Range"),
            "data_as_of": _DATA_AS_OF,
            "actions": {"type": "array", "items": _ref("ActionStep")},
            "action_types": {"type": "array", "items": _ref("ActionType")},
        }
    ),
    "RefreshRequest": _obj({"rollups": {"type": "boolean", "default": True}}, required=[]),
    "RefreshResult": _obj(
        {
            "workflow_id": _STR,
            "ingested": {"type": "boolean"},
            "workflow_changed": {"type": "boolean"},
            "rollups_refreshed": {"type": "boolean"},
            "seconds": {"type": "number", "minimum": 0},
        },
        required=["workflow_id", "ingested", "workflow_changed", "rollups_refreshed", "seconds"],
    ),
    "Status": _obj({"status": {"type": "string", "enum": ["alive", "ready"]}}),
    "Ready": _obj(
        {
            "status": {"type": "string", "enum": ["ready"]},
            "data_as_of": _DATA_AS_OF,
            "ingest_lag_seconds": {
                "type": ["number", "null"],
                "minimum": 0,
                "description": "Now minus data_as_of; at most exporter.ready_max_lag.",
            },
        }
    ),
}

_TEXT_PARAM = {"type": "string", "maxLength": 64}
PARAMETERS: J = {
    "workflow_id": {
        "name": "workflow_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string", "minLength": 1, "maxLength": MAX_ID_CHARS},
    },
    "from": {
        "name": "from",
        "in": "query",
        "description": "Inclusive start: RFC 3339, epoch milliseconds, or relative (now-7d, "
        "now/d, now-1d/d). Default: `to` minus the configured default range (7 days).",
        "schema": {**_TEXT_PARAM, "pattern": TIME_PATTERN},
    },
    "to": {
        "name": "to",
        "in": "query",
        "description": "Exclusive end, same forms as `from` (a rounding goes to the start "
        "of the next unit). Default: now.",
        "schema": {**_TEXT_PARAM, "pattern": TIME_PATTERN},
    },
    "range": {
        "name": "range",
        "in": "query",
        "description": "Shorthand for the last N up to now; not with `from`/`to`.",
        "schema": {"type": "string", "enum": list(RANGES)},
    },
    "granularity": {
        "name": "granularity",
        "in": "query",
        "description": "Series bucket size; default hour up to 3 days, day up to 92, else "
        f"week; at most {MAX_BUCKETS} buckets.",
        "schema": {"type": "string", "enum": list(GRANULARITIES)},
    },
    "tz": {
        "name": "tz",
        "in": "query",
        "description": "IANA time zone of day/week/month buckets and calendar rounding.",
        "schema": {"type": "string", "enum": sorted(time_zones()), "default": "UTC"},
    },
    "mode": {
        "name": "mode",
        "in": "query",
        "schema": {"type": "string", "enum": ["cohort", "activity"], "default": "cohort"},
    },
    "Last-Event-ID": {
        "name": "Last-Event-ID",
        "in": "header",
        "description": "Resume: the id of the last event received.",
        "schema": {"type": "string", "maxLength": 128},
    },
}


def _problem(description: str, headers: J | None = None) -> J:
    out: J = {
        "description": description,
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }
    if headers:
        out["headers"] = headers
    return out


_RETRY_AFTER = {"Retry-After": {"schema": {"type": "string"}}}
_FRESHNESS = {
    "X-Data-As-Of": {
        "description": "The body's data_as_of (absent before the first poll cycle).",
        "schema": {"type": "string", "format": "date-time"},
    }
}
RESPONSES: J = {
    "BadRequest": _problem("An invalid parameter or body, named in `param`."),
    "Unauthorized": _problem(
        "No or an unknown bearer token.", {"WWW-Authenticate": {"schema": {"type": "string"}}}
    ),
    "Forbidden": _problem(
        "The token lacks the scope, or the action is store-wide and the token is not an "
        'operator\'s (tenant "*").'
    ),
    "NotFound": _problem("No such workflow for the token's tenant."),
    "UriTooLong": _problem("The query string is too long."),
    "TooMany": _problem("Rate or connection limit reached.", _RETRY_AFTER),
    "Unavailable": _problem(
        "The store is not reachable, not migrated or too slow (try again after "
        "`Retry-After` seconds), or a dependency of the operation is missing.",
        _RETRY_AFTER,
    ),
    "Timeout": _problem("The request body did not arrive in time."),
}


def _resp(name: str) -> J:
    return {"$ref": f"#/components/responses/{name}"}


def _json(schema: str, description: str = "OK") -> J:
    return {"description": description, "content": {"application/json": {"schema": _ref(schema)}}}


def _params(*names: str) -> list[J]:
    return [{"$ref": f"#/components/parameters/{n}"} for n in names]


_TIME_PARAMS = ("from", "to", "range", "granularity", "tz")
_AUTH_ERRORS = {
    "401": _resp("Unauthorized"),
    "403": _resp("Forbidden"),
    "503": _resp("Unavailable"),
}


def _analytics_op(summary: str, schema: str, op_id: str, *extra: str) -> J:
    return {
        "get": {
            "operationId": op_id,
            "summary": summary,
            "tags": ["analytics"],
            "parameters": _params("workflow_id", *_TIME_PARAMS, *extra),
            "responses": {
                "200": {**_json(schema), "headers": _FRESHNESS},
                "400": _resp("BadRequest"),
                **_AUTH_ERRORS,
                "404": _resp("NotFound"),
                "414": _resp("UriTooLong"),
                "503": _resp("Unavailable"),
            },
        }
    }


def _probe(op_id: str, summary: str, ready: bool) -> J:
    responses: J = {"200": _json("Ready" if ready else "Status"), "400": _resp("BadRequest")}
    if ready:
        responses["503"] = _problem(
            "Not ready: the store is unreachable or not migrated, the exporter in this process "
            "is starting or cannot reach the source, or ingestion lags more than "
            "exporter.ready_max_lag (then data_as_of and ingest_lag_seconds are given).",
            _RETRY_AFTER,
        )
    return {
        "get": {
            "operationId": op_id,
            "summary": summary,
            "tags": ["health"],
            "security": [],
            "responses": responses,
        }
    }


# exports and retention -----------------------------------------------------------------------

_EXPORT_FORMATS = ["csv", "json", "ndjson", "pdf"]
_EXPORT_DATASETS = ["summary", "funnel", "actions", "executions"]
_RETENTION_DATASETS = ["executions", "step_runs", "workflow_events", "rollups_1h", "rollups_1d"]
_NTIME = {"type": ["string", "null"], "format": "date-time"}
_NSTR = {"type": ["string", "null"]}
_NINT = {"type": ["integer", "null"], "minimum": 0}
_DURATION = {"type": "string", "description": "A duration such as 90d, 400d, 2w or 36h."}


def _or_null(name: str) -> J:
    return {"oneOf": [_ref(name), {"type": "null"}]}


_POLICY = {
    "dataset": {"type": "string", "enum": _RETENTION_DATASETS},
    "period": _DURATION,
    "period_seconds": _int(),
    "source": {"type": "string", "enum": ["config", "store"]},
    "updated_at": _NTIME,
    "updated_by": _NSTR,
}
SCHEMAS.update(
    {
        "ExportRequest": _obj(
            {
                "format": {"type": "string", "enum": _EXPORT_FORMATS, "default": "csv"},
                "dataset": {"type": "string", "enum": _EXPORT_DATASETS, "default": "summary"},
                "mode": {"type": "string", "enum": ["cohort", "activity"], "default": "cohort"},
                "from": _STR,
                "to": _STR,
                "range": {"type": "string", "enum": list(RANGES)},
                "granularity": {"type": "string", "enum": list(GRANULARITIES)},
                "tz": _STR,
            },
            required=[],
            description="The same parameters as the query string (give one or the other).",
        ),
        "ExportJob": _obj(
            {
                "job_id": {"type": "string", "format": "uuid"},
                "status": {
                    "type": "string",
                    "enum": ["queued", "running", "succeeded", "failed", "expired"],
                },
                "workflow_id": _STR,
                "dataset": {"type": "string", "enum": _EXPORT_DATASETS},
                "format": {"type": "string", "enum": _EXPORT_FORMATS},
                "mode": {"type": "string", "enum": ["cohort", "activity"]},
                "range": _ref("Range"),
                "created_at": _TIME,
                "started_at": _NTIME,
                "finished_at": _NTIME,
                "expires_at": {**_TIME, "description": "When the file is deleted."},
                "attempts": {**_int(), "description": "Starts; a restart mid-job starts again."},
                "rows": _NINT,
                "bytes": _NINT,
                "error": {**_NSTR, "description": "Why the job failed."},
                "status_url": _STR,
                "download_url": {**_NSTR, "description": "Set once the job succeeded."},
            },
            required=[
                "job_id", "status", "workflow_id", "dataset", "format", "range", "created_at",
                "started_at", "finished_at", "expires_at", "attempts", "rows", "bytes",
                "error", "status_url", "download_url",
            ],
        ),
        "RetentionPolicy": _obj(
            {"workflow_id": _STR, **_POLICY},
            required=list(_POLICY),
            description="A period in force; `source` store means set over the API.",
        ),
        "RetentionDataset": _obj(
            {
                **_POLICY,
                "dropped_before": {
                    **_NTIME,
                    "description": "Rows before this time were dropped by a run.",
                },
                "workflows": {"type": "array", "items": _ref("RetentionPolicy")},
            }
        ),
        "RetentionRunSummary": _obj(
            {
                "id": _int(),
                "started_at": _TIME,
                "finished_at": _TIME,
                "trigger": {"type": "string", "enum": ["api", "scheduler"]},
                "actor": _STR,
                "dry_run": {"type": "boolean"},
                "rows": _int(),
            }
        ),
        "RetentionOverview": _obj(
            {
                "backend": {"type": "string", "enum": ["postgres", "timescaledb"]},
                "minimum_period": _DURATION,
                "minimum_applies_to": {"type": "array", "items": _STR},
                "run_interval": _DURATION,
                "datasets": {"type": "array", "items": _ref("RetentionDataset")},
                "last_run": _or_null("RetentionRunSummary"),
            }
        ),
        "RetentionPolicyRequest": _obj(
            {
                "period": {
                    "type": ["string", "null"],
                    "maxLength": 32,
                    "description": "New period; null goes back to the configured one.",
                },
                "workflow_id": {**_STR, "description": "Only this workflow (own tenant)."},
            },
            required=["period"],
        ),
        "RetentionChange": _obj(
            {
                "id": _int(),
                "changed_at": _TIME,
                "actor": _STR,
                "dataset": {"type": "string", "enum": _RETENTION_DATASETS},
                "workflow_id": _NSTR,
                "old_period": _NSTR,
                "new_period": _NSTR,
                "old_source": {"type": "string", "enum": ["config", "store", "none"]},
                "new_source": {"type": "string", "enum": ["config", "store", "none"]},
            }
        ),
        "RetentionPolicyResult": _obj(
            {"policy": _or_null("RetentionPolicy"), "change": _ref("RetentionChange")}
        ),
        "RetentionAudit": _obj(
            {"changes": {"type": "array", "items": _ref("RetentionChange")}}
        ),
        "RetentionPiece": _obj(
            {
                "relation": _STR,
                "table": _NSTR,
                "from": _NTIME,
                "to": _NTIME,
                "rows": {**_int(), "description": "Row estimate from the catalog or a count."},
            },
            description="A partition or chunk dropped, or rollup rows deleted.",
        ),
        "RetentionDelete": _obj(
            {
                "workflow_id": {
                    **_NSTR,
                    "description": "null: every workflow without a period of its own.",
                },
                "period": _DURATION,
                "before": _TIME,
                "rows": _int(),
            },
            description="Rows deleted one by one for a period shorter than the longest.",
        ),
        "RetentionDatasetRun": _obj(
            {
                "dataset": {"type": "string", "enum": _RETENTION_DATASETS},
                "period": _DURATION,
                "cutoff": _TIME,
                "applied_cutoff": {
                    **_NTIME,
                    "description": "Held below `cutoff` where the rollups above end.",
                },
                "held": {"type": "boolean"},
                "dropped": {"type": "array", "items": _ref("RetentionPiece")},
                "deleted": {"type": "array", "items": _ref("RetentionDelete")},
                "rows": _int(),
                "error": _NSTR,
            }
        ),
        "RetentionRun": _obj(
            {
                "run_id": _int(),
                "scope": {
                    "type": "string",
                    "enum": ["store", "tenant"],
                    "description": "store: an operator's run over every tenant; tenant: the "
                    "token's tenant's rows only (rows deleted one by one, no partition dropped).",
                },
                "dry_run": {"type": "boolean"},
                "started_at": _TIME,
                "finished_at": _TIME,
                "rows": _int(),
                "datasets": {"type": "array", "items": _ref("RetentionDatasetRun")},
            }
        ),
    }
)
PARAMETERS.update(
    {
        "format": {
            "name": "format",
            "in": "query",
            "schema": {"type": "string", "enum": _EXPORT_FORMATS, "default": "csv"},
        },
        "dataset": {
            "name": "dataset",
            "in": "query",
            "description": "summary: the series; funnel and actions: per step; executions: "
            "the raw executions enrolled in the range. A PDF is the full report.",
            "schema": {"type": "string", "enum": _EXPORT_DATASETS, "default": "summary"},
        },
        "job_id": {
            "name": "job_id",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "format": "uuid"},
        },
        "retention_dataset": {
            "name": "dataset",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": _RETENTION_DATASETS},
        },
        "dry_run": {
            "name": "dry_run",
            "in": "query",
            "schema": {"type": "string", "enum": ["true", "false"], "default": "true"},
        },
        "limit": {
            "name": "limit",
            "in": "query",
            "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
        },
        "retention_workflow_id": {
            "name": "workflow_id",
            "in": "query",
            "description": "Reset only this workflow's period (own tenant; any for an operator).",
            "schema": {"type": "string", "minLength": 1, "maxLength": 256},
        },
    }
)
RESPONSES.update(
    {
        "Conflict": _problem("Not possible in the current state.", _RETRY_AFTER),
        "Gone": _problem("The export file has expired."),
        "NoJob": _problem("No such export job for the token's tenant."),
    }
)
_FILES = {
    "text/csv": {"schema": {"type": "string"}},
    "application/json": {"schema": {"type": "object"}},
    "application/x-ndjson": {"schema": {"type": "string"}},
    "application/pdf": {"schema": {"type": "string", "format": "binary"}},
}
_COMMON_ERRORS = {
    "400": _resp("BadRequest"),
    **_AUTH_ERRORS,
    "414": _resp("UriTooLong"),
    "503": _resp("Unavailable"),
}


def _export_paths() -> J:
    wf = f"{API_PREFIX}/workflows/{{workflow_id}}/analytics/export"
    job = f"{API_PREFIX}/exports/{{job_id}}"
    params = _params("workflow_id", "format", "dataset", *_TIME_PARAMS, "mode")
    return {
        wf: {
            "get": {
                "operationId": "streamExport",
                "summary": "Stream the export in the response (scope `export`); rows come "
                "from a cursor, so memory stays flat however many there are.",
                "tags": ["exports"],
                "parameters": params,
                "responses": {
                    "200": {
                        "description": "The file, as an attachment.",
                        "content": _FILES,
                        "headers": _FRESHNESS,
                    },
                    **_COMMON_ERRORS,
                    "404": _resp("NotFound"),
                    "429": _resp("TooMany"),
                },
            },
            "post": {
                "operationId": "createExport",
                "summary": "Start an export job (scope `export`); parameters in the query or "
                "as a JSON body. Unfinished jobs per tenant are limited.",
                "tags": ["exports"],
                "parameters": params,
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("ExportRequest")}},
                },
                "responses": {
                    "202": {
                        **_json("ExportJob", "Accepted; poll `status_url`."),
                        "headers": {"Location": {"schema": {"type": "string"}}},
                    },
                    **_COMMON_ERRORS,
                    "404": _resp("NotFound"),
                    "408": _resp("Timeout"),
                    "413": _problem("The body is too large."),
                    "429": _resp("TooMany"),
                },
            },
        },
        job: {
            "get": {
                "operationId": "getExport",
                "summary": "Status, row count and size of an export job.",
                "tags": ["exports"],
                "parameters": _params("job_id"),
                "responses": {
                    "200": _json("ExportJob"),
                    **_COMMON_ERRORS,
                    "404": _resp("NoJob"),
                },
            }
        },
        f"{job}/download": {
            "get": {
                "operationId": "downloadExport",
                "summary": "The finished file.",
                "tags": ["exports"],
                "parameters": _params("job_id"),
                "responses": {
                    "200": {"description": "The file, as an attachment.", "content": _FILES},
                    **_COMMON_ERRORS,
                    "404": _resp("NoJob"),
                    "409": _resp("Conflict"),
                    "410": _resp("Gone"),
                },
            }
        },
    }


def _retention_paths() -> J:
    p = f"{API_PREFIX}/retention"
    return {
        p: {
            "get": {
                "operationId": "getRetention",
                "summary": "Each dataset's retention in force, the per-workflow periods of "
                "the token's tenant (of every tenant for an operator), and the last run of "
                "the same scope (scope `admin`).",
                "tags": ["retention"],
                "responses": {"200": _json("RetentionOverview"), **_COMMON_ERRORS},
            }
        },
        f"{p}/audit": {
            "get": {
                "operationId": "getRetentionAudit",
                "summary": "Policy changes, newest first: who, when, old and new; a tenant "
                "sees the changes of its own workflows, an operator every change.",
                "tags": ["retention"],
                "parameters": _params("limit"),
                "responses": {"200": _json("RetentionAudit"), **_COMMON_ERRORS},
            }
        },
        f"{p}/run": {
            "post": {
                "operationId": "runRetention",
                "summary": "Apply every policy now, or with dry_run=true (the default) report "
                "what would be dropped: ranges and row estimates. An operator's run covers "
                "the store; a tenant's deletes only its own rows.",
                "tags": ["retention"],
                "parameters": _params("dry_run"),
                "responses": {
                    "200": _json("RetentionRun"),
                    **_COMMON_ERRORS,
                    "409": _resp("Conflict"),
                },
            }
        },
        f"{p}/{{dataset}}": {
            "put": {
                "operationId": "putRetention",
                "summary": "Set a dataset's period (operator only), or one workflow's; "
                "refused when shorter than the rollup refresh window for data the refresh "
                "reads, or for a tenant when longer than the dataset's period.",
                "tags": ["retention"],
                "parameters": _params("retention_dataset"),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("RetentionPolicyRequest")}},
                },
                "responses": {
                    "200": _json("RetentionPolicyResult"),
                    **_COMMON_ERRORS,
                    "404": _problem("No such dataset, or workflow of the token's tenant."),
                    "408": _resp("Timeout"),
                    "413": _problem("The body is too large."),
                },
            },
            "delete": {
                "operationId": "resetRetention",
                "summary": "Go back to the configured period of a dataset (operator only) or "
                "of one workflow; the same as PUT with a null period.",
                "tags": ["retention"],
                "parameters": _params("retention_dataset", "retention_workflow_id"),
                "responses": {
                    "200": _json("RetentionPolicyResult"),
                    **_COMMON_ERRORS,
                    "404": _problem("No such dataset, or workflow of the token's tenant."),
                },
            },
        },
    }


def openapi_document() -> J:
    """The OpenAPI 3.1 document served at /api/v1/openapi.json."""
    wf = f"{API_PREFIX}/workflows/{{workflow_id}}/analytics"
    paths: J = {
        f"{API_PREFIX}/workflows": {
            "get": {
                "operationId": "listWorkflows",
                "summary": "The tenant's workflows with their steps.",
                "tags": ["workflows"],
                "responses": {
                    "200": _json("WorkflowList"),
                    "400": _resp("BadRequest"),
                    **_AUTH_ERRORS,
                    "414": _resp("UriTooLong"),
                    "503": _resp("Unavailable"),
                },
            }
        },
        wf: _analytics_op(
            "Activity counts, cohort rates, time to complete/convert and a series.",
            "Summary",
            "getSummary",
        ),
        f"{wf}/funnel": _analytics_op(
            "Cohort or activity funnel per step.", "Funnel", "getFunnel", "mode"
        ),
        f"{wf}/actions": _analytics_op(
            "Action performance per step and per action type.", "Actions", "getActions"
        ),
        f"{wf}/stream": {
            "get": {
                "operationId": "streamSummary",
                "summary": "Server-Sent Events: `analytics` events carrying the Summary "
                "document whenever ingestion touches the workflow (at most one per second), "
                "comment heartbeats, a `retry` hint, `close` on shutdown.",
                "tags": ["analytics"],
                "parameters": _params("workflow_id", *_TIME_PARAMS, "Last-Event-ID"),
                "responses": {
                    "200": {
                        "description": "An event stream; each `data` is a Summary document.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    "400": _resp("BadRequest"),
                    **_AUTH_ERRORS,
                    "404": _resp("NotFound"),
                    "414": _resp("UriTooLong"),
                    "429": _resp("TooMany"),
                    "503": _resp("Unavailable"),
                },
            }
        },
        f"{wf}/refresh": {
            "post": {
                "operationId": "refreshNow",
                "summary": "Run an ingest cycle and the rollup refresh now (rate limited "
                "per tenant; needs the exporter in the same process).",
                "tags": ["analytics"],
                "parameters": _params("workflow_id"),
                "requestBody": {
                    "required": False,
                    "content": {"application/json": {"schema": _ref("RefreshRequest")}},
                },
                "responses": {
                    "200": _json("RefreshResult"),
                    "400": _resp("BadRequest"),
                    **_AUTH_ERRORS,
                    "404": _resp("NotFound"),
                    "408": _resp("Timeout"),
                    "413": _problem("The body is too large."),
                    "414": _resp("UriTooLong"),
                    "429": _resp("TooMany"),
                    "503": _resp("Unavailable"),
                },
            }
        },
        f"{API_PREFIX}/openapi.json": {
            "get": {
                "operationId": "getOpenApi",
                "summary": "This document.",
                "tags": ["meta"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    },
                    "400": _resp("BadRequest"),
                },
            }
        },
    }
    for prefix, tag in ((API_PREFIX, "Api"), ("", "")):
        paths[f"{prefix}/healthz"] = _probe(f"healthz{tag}", "The process is alive.", False)
        paths[f"{prefix}/readyz"] = _probe(
            f"readyz{tag}",
            "Ready to answer with fresh numbers: the store is reachable and migrated, the "
            "source reachable (when the exporter runs in this process), and the ingest lag "
            "(now - data_as_of) within exporter.ready_max_lag.",
            True,
        )
    paths.update(_export_paths())
    paths.update(_retention_paths())
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "workflow-analytics API",
            "version": __version__,
            "description": "Workflow analytics per tenant. Times are half-open [from, to). "
            "Errors are application/problem+json.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": SCHEMAS,
            "parameters": PARAMETERS,
            "responses": RESPONSES,
        },
    }
