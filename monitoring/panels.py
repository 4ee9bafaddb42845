"""Plain-data builders for Grafana 11 dashboard JSON: data sources, variables, targets, panels."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SCHEMA_VERSION = 39
PROMETHEUS_UID = "wfa-prometheus"
STORE_UID = "wfa-store"
PROMETHEUS_TYPE = "prometheus"
POSTGRES_TYPE = "grafana-postgresql-datasource"
PROM = {"type": PROMETHEUS_TYPE, "uid": "${datasource}"}
"""Panel data source: the Prometheus chosen in the `datasource` variable."""
STORE = {"type": POSTGRES_TYPE, "uid": "${store}"}
"""Panel data source: the analytics store chosen in the `store` variable."""

Json = dict[str, Any]

GREEN, ORANGE, RED, BLUE = "green", "orange", "red", "blue"


def steps(*pairs: tuple[str, float | None]) -> Json:
    """Absolute thresholds from (color, value) pairs; the first value must be None (base)."""
    return {
        "mode": "absolute",
        "steps": [{"color": color, "value": value} for color, value in pairs],
    }


NEUTRAL = steps((GREEN, None))
"""Thresholds of a panel with no good or bad level: one base step."""


def high_is_bad(warn: float, crit: float) -> Json:
    """Green below `warn`, orange from `warn`, red from `crit`."""
    return steps((GREEN, None), (ORANGE, warn), (RED, crit))


def low_is_bad(warn: float, crit: float) -> Json:
    """Red below `crit`, orange below `warn`, green above."""
    return steps((RED, None), (ORANGE, crit), (GREEN, warn))


# variables ---------------------------------------------------------------------------------


def datasource_var(name: str, label: str, plugin: str, uid: str, text: str) -> Json:
    """A data source variable defaulting to the provisioned data source `uid`."""
    return {
        "name": name,
        "label": label,
        "type": "datasource",
        "query": plugin,
        "current": {"selected": True, "text": text, "value": uid},
        "hide": 0,
        "includeAll": False,
        "multi": False,
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "description": f"{label} data source used by the panels.",
    }


def sql_var(name: str, label: str, sql: str, description: str, *, multi: bool = True) -> Json:
    """A query variable answered by the store; `__value`/`__text` columns give value and label."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": STORE,
        "query": sql,
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]}
        if multi
        else {"selected": False, "text": "", "value": ""},
        "includeAll": multi,
        "multi": multi,
        "refresh": 1,
        "regex": "",
        "sort": 0,
        "hide": 0,
        "skipUrlSync": False,
        "description": description,
    }


def prom_var(name: str, label: str, query: str, description: str, all_value: str = ".*") -> Json:
    """A multi-value Prometheus query variable (`label_values(...)`) with a regex "All"."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": PROM,
        "query": {"query": query, "refId": "PrometheusVariableQueryEditor-VariableQuery"},
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "includeAll": True,
        "allValue": all_value,
        "multi": True,
        "refresh": 2,
        "regex": "",
        "sort": 1,
        "hide": 0,
        "skipUrlSync": False,
        "description": description,
    }


def custom_var(name: str, label: str, values: list[str], default: str, description: str) -> Json:
    """A single-value custom variable."""
    return {
        "name": name,
        "label": label,
        "type": "custom",
        "query": ",".join(values),
        "current": {"selected": True, "text": default, "value": default},
        "options": [{"selected": v == default, "text": v, "value": v} for v in values],
        "includeAll": False,
        "multi": False,
        "hide": 0,
        "skipUrlSync": False,
        "description": description,
    }


PROM_VAR = datasource_var("datasource", "Prometheus", "prometheus", PROMETHEUS_UID, "Prometheus")
STORE_VAR = datasource_var("store", "Store", POSTGRES_TYPE, STORE_UID, "TimescaleDB store")
TENANT_VAR = sql_var(
    "tenant",
    "Tenant",
    "SELECT DISTINCT tenant_id FROM wfa.workflows ORDER BY 1",
    "Tenants; narrows the workflow list.",
)
WORKFLOW_VAR = sql_var(
    "workflow",
    "Workflow",
    "SELECT workflow_id AS __value, name || ' (' || workflow_id || ')' AS __text "
    "FROM wfa.workflows WHERE tenant_id IN ($tenant) ORDER BY name, workflow_id",
    "Workflows of the selected tenants (value: workflow id, shown with its name).",
)
STEP_VAR = sql_var(
    "step",
    "Step",
    "SELECT s.step_id AS __value, string_agg(w.name || ' / ' || (s.step_index + 1) || '. ' "
    "|| s.name, ', ' ORDER BY w.name, s.workflow_id) AS __text "
    "FROM wfa.workflow_steps s JOIN wfa.workflows w USING (workflow_id) "
    "WHERE s.workflow_id IN ($workflow) AND s.removed_at IS NULL "
    "GROUP BY s.step_id ORDER BY min(w.name), min(s.step_index), 1",
    "Current steps of the selected workflows, in workflow order (a step id shared by several "
    "workflows selects it in each).",
)
FUNNEL_LINK = (
    "/d/wfa-funnel/funnel-and-drop-off"
    "?var-workflow=${__data.fields.workflow_id}&${__url_time_range}"
)
"""A table row's workflow (hidden `workflow_id` column) to its funnel, same time range."""
ACTIONS_LINK = (
    "/d/wfa-actions/action-performance?var-workflow=${__data.fields.workflow_id}"
    "&var-step=${__data.fields.step_id}&${__url_time_range}"
)
"""A table row's step (hidden `workflow_id`, `step_id`) to its action performance."""
MIN_VOLUME = "${min_volume:sqlstring}::int"
"""The min_volume variable in SQL: a quoted literal cast to int, so a non-number is an error."""


def window_var(windows: list[str], default: str) -> Json:
    """The cohort window of the exporter's funnel gauges: one of metrics.windows."""
    return custom_var(
        "window",
        "Cohort window",
        windows,
        default,
        "Trailing cohort window of the exporter's funnel gauges (metrics.windows).",
    )


def min_volume_var(default: int) -> Json:
    """Minimum executions for the bottleneck: a fixed list that holds metrics.min_volume."""
    values = sorted({0, 5, 10, 20, 50, 100, 500, 1000, default})
    return custom_var(
        "min_volume",
        "Minimum volume",
        [str(v) for v in values],
        str(default),
        "Steps reached by fewer executions are not candidates for the bottleneck "
        "(default: metrics.min_volume).",
    )


# targets -----------------------------------------------------------------------------------


def prom(expr: str, legend: str = "__auto", ref: str = "A", *, instant: bool = False) -> Json:
    """A PromQL target (range query unless `instant`)."""
    target: Json = {
        "refId": ref,
        "datasource": PROM,
        "editorMode": "code",
        "expr": expr,
        "legendFormat": legend,
        "range": not instant,
        "instant": instant,
    }
    if instant:
        target["format"] = "table"
    return target


def sql(raw: str, ref: str = "A", fmt: str = "table") -> Json:
    """A raw SQL target on the store; `fmt` is "table" or "time_series"."""
    return {
        "refId": ref,
        "datasource": STORE,
        "editorMode": "code",
        "format": fmt,
        "rawQuery": True,
        "rawSql": raw,
    }


# panels ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pos:
    """Grid position: width and height in grid units (24 columns)."""

    w: int
    h: int


def _field_defaults(unit: str, thresholds: Json, **extra: Any) -> Json:
    return {"unit": unit, "thresholds": thresholds, "mappings": [], **extra}


def _panel(
    kind: str,
    title: str,
    description: str,
    size: Pos,
    targets: list[Json],
    defaults: Json,
    options: Json,
    overrides: list[Json] | None = None,
    **extra: Any,
) -> Json:
    ds = targets[0]["datasource"] if targets else None
    panel: Json = {
        "type": kind,
        "title": title,
        "description": description,
        "gridPos": {"h": size.h, "w": size.w, "x": 0, "y": 0},
        "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
        "options": options,
        "targets": targets,
        **extra,
    }
    if ds is not None:
        panel["datasource"] = ds
    return panel


def timeseries(
    title: str,
    description: str,
    targets: list[Json],
    *,
    unit: str,
    thresholds: Json = NEUTRAL,
    size: Pos = Pos(12, 8),
    stack: bool = False,
    min_value: float | None = 0,
    max_value: float | None = None,
    overrides: list[Json] | None = None,
    interval: str | None = None,
) -> Json:
    """A time series panel; thresholds other than the base step are drawn as lines."""
    custom = {
        "drawStyle": "line",
        "lineWidth": 1,
        "fillOpacity": 10,
        "showPoints": "never",
        "spanNulls": False,
        "stacking": {"mode": "normal" if stack else "none", "group": "A"},
        "thresholdsStyle": {"mode": "line" if len(thresholds["steps"]) > 1 else "off"},
    }
    defaults = _field_defaults(unit, thresholds, color={"mode": "palette-classic"}, custom=custom)
    if min_value is not None:
        defaults["min"] = min_value
    if max_value is not None:
        defaults["max"] = max_value
    options = {
        "legend": {
            "calcs": ["mean", "lastNotNull"],
            "displayMode": "table",
            "placement": "bottom",
            "showLegend": True,
        },
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    extra = {"interval": interval} if interval else {}
    return _panel(
        "timeseries", title, description, size, targets, defaults, options, overrides, **extra
    )


def stat(
    title: str,
    description: str,
    targets: list[Json],
    *,
    unit: str,
    thresholds: Json = NEUTRAL,
    size: Pos = Pos(4, 4),
    decimals: int | None = None,
    graph: bool = True,
    color_mode: str = "value",
) -> Json:
    """A single-value stat panel (last value, with a sparkline when `graph`)."""
    defaults = _field_defaults(unit, thresholds, color={"mode": "thresholds"})
    if decimals is not None:
        defaults["decimals"] = decimals
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": color_mode,
        "graphMode": "area" if graph else "none",
        "justifyMode": "auto",
        "orientation": "auto",
        "textMode": "auto",
        "wideLayout": True,
        "showPercentChange": False,
        "percentChangeColorMode": "standard",
    }
    return _panel("stat", title, description, size, targets, defaults, options)


def table(
    title: str,
    description: str,
    targets: list[Json],
    *,
    unit: str = "short",
    thresholds: Json = NEUTRAL,
    size: Pos = Pos(24, 9),
    overrides: list[Json] | None = None,
    sort_by: list[Json] | None = None,
    transformations: list[Json] | None = None,
) -> Json:
    """A table panel; per-column units and colours come from `overrides`."""
    defaults = _field_defaults(
        unit,
        thresholds,
        color={"mode": "thresholds"},
        custom={
            "align": "auto",
            "cellOptions": {"type": "auto"},
            "filterable": True,
            "inspect": False,
        },
    )
    options = {
        "showHeader": True,
        "frameIndex": 0,
        "cellHeight": "sm",
        "footer": {"show": False, "reducer": ["sum"], "fields": [], "countRows": False},
        "sortBy": sort_by or [],
    }
    extra = {"transformations": transformations} if transformations else {}
    return _panel("table", title, description, size, targets, defaults, options, overrides, **extra)


def bargauge(
    title: str,
    description: str,
    targets: list[Json],
    *,
    unit: str,
    thresholds: Json = NEUTRAL,
    size: Pos = Pos(12, 9),
    min_value: float | None = 0,
    max_value: float | None = None,
) -> Json:
    """A horizontal bar gauge, one bar per series or row."""
    defaults = _field_defaults(unit, thresholds, color={"mode": "thresholds"})
    if min_value is not None:
        defaults["min"] = min_value
    if max_value is not None:
        defaults["max"] = max_value
    options = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": True},
        "displayMode": "gradient",
        "orientation": "horizontal",
        "showUnfilled": True,
        "valueMode": "color",
        "namePlacement": "left",
        "sizing": "auto",
        "minVizHeight": 16,
        "minVizWidth": 8,
        "maxVizHeight": 300,
        "legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": False},
    }
    return _panel("bargauge", title, description, size, targets, defaults, options)


def row(title: str, repeat: str | None = None) -> Json:
    """A row header; `repeat` repeats the row and its panels per value of a variable."""
    out: Json = {
        "type": "row",
        "title": title,
        "collapsed": False,
        "panels": [],
        "gridPos": {"h": 1, "w": 24, "x": 0, "y": 0},
    }
    if repeat:
        out["repeat"] = repeat
    return out


def override(column: str, **props: Any) -> Json:
    """Field override by column name, e.g. override("Ratio", unit="percentunit")."""
    ids = {
        "unit": "unit",
        "thresholds": "thresholds",
        "min": "min",
        "max": "max",
        "decimals": "decimals",
        "cell": "custom.cellOptions",
        "width": "custom.width",
        "mappings": "mappings",
        "display_name": "displayName",
        "hidden": "custom.hidden",
        "color": "color",
        "links": "links",
    }
    return {
        "matcher": {"id": "byName", "options": column},
        "properties": [{"id": ids[k], "value": v} for k, v in props.items()],
    }


def layout(panels: list[Json]) -> list[Json]:
    """Assign ids and flow panels left to right into 24-column rows; rows start a new line."""
    x = y = line_h = 0
    out = []
    for pid, p in enumerate(panels, start=1):
        p = {**p, "id": pid}
        w, h = p["gridPos"]["w"], p["gridPos"]["h"]
        if p["type"] == "row" or x + w > 24:
            x, y, line_h = 0, y + line_h, 0
        p["gridPos"] = {"h": h, "w": w, "x": x, "y": y}
        if p["type"] == "row":
            y += h
        else:
            x += w
            line_h = max(line_h, h)
        out.append(p)
    return out


def dashboard(
    uid: str,
    title: str,
    description: str,
    panels: list[Json],
    variables: list[Json],
    *,
    tags: tuple[str, ...] = (),
    time_from: str = "now-24h",
    links: list[Json] | None = None,
) -> Json:
    """A complete dashboard: 10 s refresh with live updates, shared crosshair, UTC."""
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["workflow-analytics", *tags],
        "editable": True,
        "graphTooltip": 1,
        "liveNow": True,
        "refresh": "10s",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": time_from, "to": "now"},
        "timepicker": {"refresh_intervals": ["10s", "30s", "1m", "5m", "15m", "1h"]},
        "timezone": "utc",
        "weekStart": "",
        "fiscalYearStartMonth": 0,
        "annotations": {
            "list": [
                {
                    "builtIn": 1,
                    "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                    "enable": True,
                    "hide": True,
                    "iconColor": "rgba(0, 211, 255, 1)",
                    "name": "Annotations & Alerts",
                    "type": "dashboard",
                }
            ]
        },
        "links": links if links is not None else [DASHBOARD_LINKS],
        "templating": {"list": variables},
        "panels": layout(panels),
    }


DASHBOARD_LINKS: Json = {
    "title": "Workflow analytics",
    "type": "dashboards",
    "tags": ["workflow-analytics"],
    "asDropdown": True,
    "includeVars": True,
    "keepTime": True,
    "targetBlank": False,
    "icon": "external link",
    "tooltip": "",
    "url": "",
}
