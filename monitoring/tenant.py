"""What the dashboards read from the store, and their copies for one tenant's organization.

The relations a dashboard reads are found in its SQL (panel targets and query variables),
so the database grants follow the generator. A tenant's copy keeps only the store panels
(Prometheus is the operator's view) and reads every `wfa.<relation>` from the tenant's own
schema of filtered views instead; any reference left unrewritten fails for the tenant's
role, which cannot use the `wfa` schema.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from monitoring import rendered

Json = dict[str, Any]

SQL_DATASOURCE = "grafana-postgresql-datasource"
_REFERENCE = re.compile(r"(?<![\w.\"$])wfa\.([A-Za-z_][A-Za-z0-9_]*)")
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class RewriteError(ValueError):
    """A dashboard cannot be rewritten for a tenant."""


def _is_sql(node: Mapping[str, Any] | None) -> bool:
    return bool(node) and node.get("type") == SQL_DATASOURCE  # type: ignore[union-attr]


def _sql_targets(panel: Json) -> Iterator[Json]:
    for target in panel.get("targets", []):
        if _is_sql(target.get("datasource") or panel.get("datasource")):
            yield target


def _sql_variables(dashboard: Json) -> Iterator[Json]:
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query" and _is_sql(var.get("datasource")):
            yield var


def _panels(panels: list[Json]) -> Iterator[Json]:
    for p in panels:
        yield p
        yield from _panels(p.get("panels", []))


def sql_texts(dashboard: Json) -> list[str]:
    """Every SQL text a dashboard sends to the store: panel targets and query variables."""
    out = [t["rawSql"] for p in _panels(dashboard["panels"]) for t in _sql_targets(p)]
    for var in _sql_variables(dashboard):
        q = var["query"]
        out.append(q["rawSql"] if isinstance(q, dict) else q)
    return out


def referenced_relations(dashboards: Mapping[str, Json] | None = None) -> list[str]:
    """`wfa.<name>` of every relation the (generated) dashboards read, sorted."""
    boards = dashboards or {n: json.loads(t) for n, t in rendered().items()}
    found = {
        f"wfa.{m.group(1)}"
        for d in boards.values()
        for text in sql_texts(d)
        for m in _REFERENCE.finditer(text)
    }
    return sorted(found)


def _rewrite(text: str, schema: str) -> str:
    return _REFERENCE.sub(lambda m: f"{schema}.{m.group(1)}", text)


def _store_panel(panel: Json) -> bool:
    if panel.get("type") == "row":
        return True
    if any(True for _ in _sql_targets(panel)):
        return all(
            _is_sql(t.get("datasource") or panel.get("datasource"))
            for t in panel.get("targets", [])
        )
    return False


def _without_empty_rows(panels: list[Json]) -> list[Json]:
    out: list[Json] = []
    for i, p in enumerate(panels):
        if p.get("type") == "row" and not p.get("panels"):
            following = panels[i + 1 :]
            nxt = next((q for q in following if q.get("type") == "row"), None)
            body = following[: following.index(nxt)] if nxt is not None else following
            if not body:
                continue
        out.append(p)
    return out


def for_tenant(dashboard: Json, schema: str, datasource: Mapping[str, str]) -> Json:
    """A tenant's copy: store panels only, relations read from `schema`, its data source.

    `datasource` holds the `uid` and `name` of the tenant's store data source.
    """
    if not _SCHEMA.fullmatch(schema):
        raise RewriteError(f"schema {schema!r} is not a plain lower-case identifier")
    d = copy.deepcopy(dashboard)
    kept = []
    for p in d["panels"]:
        if not _store_panel(p):
            continue
        if p.get("panels"):
            p["panels"] = [q for q in p["panels"] if _store_panel(q)]
        kept.append(p)
    d["panels"] = _without_empty_rows(kept)
    for p in _panels(d["panels"]):
        for t in _sql_targets(p):
            t["rawSql"] = _rewrite(t["rawSql"], schema)
    variables = []
    for var in d.get("templating", {}).get("list", []):
        if var.get("type") == "datasource":
            if var.get("query") != SQL_DATASOURCE:
                continue
            var["current"] = {
                "selected": True,
                "text": datasource["name"],
                "value": datasource["uid"],
            }
        elif var.get("type") == "query":
            if not _is_sql(var.get("datasource")):
                continue
            q = var["query"]
            if isinstance(q, dict):
                q["rawSql"] = _rewrite(q["rawSql"], schema)
            else:
                var["query"] = _rewrite(q, schema)
            if isinstance(var.get("definition"), str):
                var["definition"] = _rewrite(var["definition"], schema)
        variables.append(var)
    d.setdefault("templating", {})["list"] = variables
    left = [m.group(0) for text in sql_texts(d) for m in _REFERENCE.finditer(text)]
    if left:
        raise RewriteError(f"references left in the wfa schema: {sorted(set(left))}")
    return d


def tenant_dashboards(schema: str, datasource: Mapping[str, str]) -> dict[str, Json]:
    """File name -> the tenant's copy of every generated dashboard that reads the store."""
    out = {}
    for name, text in rendered().items():
        d = json.loads(text)
        if sql_texts(d):
            out[name] = for_tenant(d, schema, datasource)
    return out
