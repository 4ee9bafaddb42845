"""The OpenAPI 3.1 document of the API: paths and parameters here, schemas from the models."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from exporter import __version__, models
from exporter.api.app import API_PREFIX
from exporter.api.pages import MAX_LIMIT
from exporter.api.params import (
    MAX_BUCKETS,
    MAX_ID_CHARS,
    RANGE_EXAMPLES,
    RANGE_PATTERN,
    TIME_PATTERN,
    RefreshBody,
    time_zones,
)
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
        "description": "The last N up to now, any duration with units (s m h d w), e.g. "
        "`90m`, `12h`, `3d`, `6w`, `1d12h`; not with `from`/`to`; at most the configured "
        "maximum range.",
        "schema": {**_TEXT_PARAM, "pattern": RANGE_PATTERN, "examples": list(RANGE_EXAMPLES)},
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
_LINK = {
    "Link": {
        "description": 'The next page: `<URL>; rel="next"` (absent on the last page).',
        "schema": {"type": "string"},
    }
}
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
PARAMETERS.update(
    {
        "format": {
            "name": "format",
            "in": "query",
            "description": "File format. Without it, a GET picks it from the `Accept` header "
            "(text/csv, application/json, application/x-ndjson, application/pdf; q-values and "
            "wildcards honoured; 406 when none fits) and a job is csv.",
            "schema": {"type": "string", "enum": _EXPORT_FORMATS},
        },
        "dataset": {
            "name": "dataset",
            "in": "query",
            "description": "summary: the series; funnel and actions: per step; executions: "
            "the raw executions enrolled in the range. A PDF is the full report.",
            "schema": {"type": "string", "enum": _EXPORT_DATASETS, "default": "summary"},
        },
        "page_limit": {
            "name": "limit",
            "in": "query",
            "description": "Items per page (default: 500 workflows, 50 export jobs).",
            "schema": {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
        },
        "cursor": {
            "name": "cursor",
            "in": "query",
            "description": "Where the previous page stopped: take the `next` URL as it is.",
            "schema": {"type": "string", "maxLength": 512},
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
                    "406": _problem("The `Accept` header allows none of the formats."),
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
        f"{API_PREFIX}/exports": {
            "get": {
                "operationId": "listExports",
                "summary": "The tenant's export jobs (status, created, expires, size), newest "
                "first, a page at a time.",
                "tags": ["exports"],
                "parameters": _params("page_limit", "cursor"),
                "responses": {
                    "200": {**_json("ExportJobList"), "headers": _LINK},
                    **_COMMON_ERRORS,
                },
            }
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
                    "content": {"application/json": {"schema": _ref("PolicyBody")}},
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


def _analytics_paths() -> J:
    wf = f"{API_PREFIX}/workflows/{{workflow_id}}/analytics"
    return {
        f"{API_PREFIX}/workflows": {
            "get": {
                "operationId": "listWorkflows",
                "summary": "The tenant's workflows with their steps, by id, a page at a time.",
                "tags": ["workflows"],
                "parameters": _params("page_limit", "cursor"),
                "responses": {
                    "200": {**_json("WorkflowList"), "headers": _LINK},
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
                    "content": {"application/json": {"schema": _ref("RefreshBody")}},
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



def _problem_paths() -> J:
    kind = {
        "type": "object",
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "integer"},
            "title": {"type": "string"},
            "when": {"type": "string"},
        },
        "required": ["type", "status", "title", "when"],
    }
    meta = {"tags": ["meta"], "security": []}
    return {
        f"{API_PREFIX}/problems": {
            "get": {
                "operationId": "listProblemTypes",
                "summary": "Every kind of error (problem `type`) this API answers.",
                **meta,
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {
                            "application/json": {
                                "schema": _obj(
                                    {"problems": {"type": "array", "items": kind}}, ["problems"]
                                )
                            }
                        },
                    },
                    "400": _resp("BadRequest"),
                },
            }
        },
        f"{API_PREFIX}/problems/{{kind}}": {
            "get": {
                "operationId": "getProblemType",
                "summary": "What one problem `type` URI means.",
                **meta,
                "parameters": [
                    {"name": "kind", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "OK",
                        "content": {"application/json": {"schema": kind}},
                    },
                    "400": _resp("BadRequest"),
                    "404": _problem("No such problem type."),
                },
            }
        },
    }


def openapi_document() -> J:
    """The OpenAPI 3.1 document served at /api/v1/openapi.json."""
    paths = _analytics_paths()
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
    paths.update(_problem_paths())
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
            "schemas": models.schemas(_request_models()),
            "parameters": PARAMETERS,
            "responses": RESPONSES,
        },
    }


def _request_models() -> tuple[type[BaseModel], ...]:
    """The request bodies the routes parse, documented from their own models."""
    from exporter.api.retention import PolicyBody

    return (RefreshBody, PolicyBody)
