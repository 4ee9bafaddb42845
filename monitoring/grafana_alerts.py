"""Grafana-managed drop-off alerts (file provisioning), with the thresholds of the rules.

They query the exporter's metrics directly (no recording rules needed), for installations
without Alertmanager, and go through the organisation's own notification policies.
"""

from __future__ import annotations

from typing import Any

from exporter.metrics.snapshot import window_label
from monitoring.panels import PROMETHEUS_UID
from monitoring.rules import BY_STEP, DAY, with_step_names
from monitoring.settings import Settings, human_duration, last, percent, prom_duration

Json = dict[str, Any]
FOLDER = "Workflow analytics"


def _query(expr: str) -> Json:
    return {
        "refId": "A",
        "relativeTimeRange": {"from": 600, "to": 0},
        "datasourceUid": PROMETHEUS_UID,
        "model": {
            "refId": "A",
            "editorMode": "code",
            "instant": True,
            "range": False,
            "intervalMs": 60000,
            "maxDataPoints": 43200,
            "expr": expr,
        },
    }


def _expr(ref: str, kind: str, **model: Any) -> Json:
    return {
        "refId": ref,
        "datasourceUid": "__expr__",
        "model": {
            "refId": ref,
            "type": kind,
            **model,
            "datasource": {"type": "__expr__", "uid": "__expr__"},
        },
    }


def _rule(uid: str, title: str, expr: str, above: float, for_: Any, ann: Json, s: Settings) -> Json:
    return {
        "uid": uid,
        "title": title,
        "condition": "C",
        "data": [
            _query(expr),
            _expr("B", "reduce", expression="A", reducer="last"),
            _expr(
                "C",
                "threshold",
                expression="B",
                conditions=[{"evaluator": {"type": "gt", "params": [above]}}],
            ),
        ],
        "for": prom_duration(for_),
        "noDataState": "OK",
        "execErrState": "Error",
        "labels": {"severity": "warning"},
        "annotations": {**ann, "runbook_url": s.monitoring.runbook(title)},
    }


def _high(s: Settings) -> Json:
    d, job, v = s.monitoring.dropoff, s.job, s.min_volume
    w = window_label(d.window)
    expr = with_step_names(
        "(\n"
        f'  max by ({BY_STEP}) (wfa_funnel_dropoff_ratio{{{job}, window="{w}"}})\n'
        f"  and on ({BY_STEP})\n"
        f'    max by ({BY_STEP}) (wfa_funnel_reached{{{job}, window="{w}"}}) >= {v}\n'
        ")",
        job,
    )
    return _rule(
        "wfa-step-dropoff-high",
        "WfaStepDropoffHigh",
        expr,
        d.ratio,
        d.for_,
        {
            "summary": "High drop-off at step {{ $labels.step_name }} of workflow "
            "{{ $labels.workflow_name }}",
            "description": f"{{{{ $values.B.Value | humanizePercentage }}}} of the executions "
            f'enrolled in the last {last(d.window)} that reached step "{{{{ '
            f'$labels.step_name }}}}" ({{{{ $labels.step }}}}) of workflow "{{{{ '
            f'$labels.workflow_name }}}}" ({{{{ $labels.workflow }}}}) dropped there '
            f"(threshold {percent(d.ratio)}, at least {v} executions) for "
            f"{human_duration(d.for_)}.",
        },
        s,
    )


def _jump(s: Settings, daily: bool) -> Json:
    j, job, v = s.monitoring.dropoff_jump, s.job, s.min_volume
    w = window_label(j.window)
    ratio = f'wfa_funnel_dropoff_ratio{{{job}, window="{w}"}}'
    reached = f'wfa_funnel_reached{{{job}, window="{w}"}}'
    offset = prom_duration(j.window)
    if daily:
        base = f"avg_over_time({ratio}[{DAY}] offset {offset})"
        base_volume = f"avg_over_time({reached}[{DAY}] offset {offset})"
        title, uid = "WfaStepDropoffJumpDaily", "wfa-step-dropoff-jump-daily"
        against = "its average over the 24 hours before (works from the first day)"
    else:
        base, base_volume = f"{ratio} offset 1w", f"{reached} offset 1w"
        title, uid = "WfaStepDropoffJump", "wfa-step-dropoff-jump"
        against = "the same time last week (needs a week of Prometheus history)"
    expr = with_step_names(
        "(\n"
        f"  max by ({BY_STEP}) ({ratio})\n"
        f"    - max by ({BY_STEP}) ({base})\n"
        f"  and on ({BY_STEP})\n"
        f"    max by ({BY_STEP}) ({reached}) >= {v}\n"
        f"  and on ({BY_STEP})\n"
        f"    max by ({BY_STEP}) ({base_volume}) >= {v}\n"
        ")",
        job,
    )
    return _rule(
        uid,
        title,
        expr,
        j.points,
        j.for_,
        {
            "summary": "Drop-off jumped at step {{ $labels.step_name }} of workflow "
            "{{ $labels.workflow_name }}",
            "description": f"The drop-off ratio of the last {last(j.window)}'s "
            f'cohort at step "{{{{ $labels.step_name }}}}" ({{{{ $labels.step }}}}) of '
            f'workflow "{{{{ $labels.workflow_name }}}}" ({{{{ $labels.workflow }}}}) is '
            f"{{{{ $values.B.Value | humanizePercentage }}}} above {against} (threshold "
            f"{percent(j.points)} points, at least {v} executions in both).",
        },
        s,
    )


def provisioning(s: Settings) -> Json:
    """The alert rule provisioning document (apiVersion 1, one group, no policy tree)."""
    return {
        "apiVersion": 1,
        "groups": [
            {
                "orgId": 1,
                "name": "wfa-funnel",
                "folder": FOLDER,
                "interval": "1m",
                "rules": [_high(s), _jump(s, daily=False), _jump(s, daily=True)],
            }
        ],
    }
