"""The aiohttp analytics API: app factory, auth, problem responses, time filters, SSE."""

from exporter.api.app import API_PREFIX, ROUTE_MODULES, ApiSettings, create_app
from exporter.api.auth import Principal, require_scope
from exporter.api.errors import ProblemError, problem
from exporter.api.params import TimeQuery, TimeRange, parse_query, resolve_time

__all__ = [
    "API_PREFIX",
    "ROUTE_MODULES",
    "ApiSettings",
    "Principal",
    "ProblemError",
    "TimeQuery",
    "TimeRange",
    "create_app",
    "parse_query",
    "problem",
    "require_scope",
    "resolve_time",
]
