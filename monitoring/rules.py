"""Prometheus recording and alerting rules, generated from the monitoring settings.

Recording rules are named `level:metric:operation`; the alert thresholds are recorded once
(`wfa:alert_*:threshold`) so that Grafana and Prometheus show what the alerts compare with.
Workflow and step names are joined from `wfa_workflow_info` / `wfa_step_info`.
"""

from __future__ import annotations

from typing import Any

from exporter.metrics.snapshot import window_label
from monitoring.settings import Settings, human_duration, last, percent, prom_duration

Rule = dict[str, Any]
BY_STEP = "tenant, workflow, step"
BY_WORKFLOW = "tenant, workflow"
BY_ACTION = "tenant, workflow, step, action_type"
DAY = "1d"


def threshold(name: str) -> str:
    """The recorded threshold `name` as a scalar."""
    return f"scalar(wfa:alert_{name}:threshold)"


def with_step_names(expr: str, job: str) -> str:
    """`expr` (by tenant, workflow, step) with `step_name` and `workflow_name` labels."""
    return (
        f"{expr}\n"
        f"* on ({BY_STEP}) group_left (step_name)\n"
        f"  max by ({BY_STEP}, step_name) "
        f'(label_replace(wfa_step_info{{{job}}}, "step_name", "$1", "name", "(.*)"))\n'
        + _workflow_join(job)
    )


def with_workflow_names(expr: str, job: str) -> str:
    """`expr` (by tenant, workflow) with a `workflow_name` label."""
    return f"{expr}\n" + _workflow_join(job)


def _workflow_join(job: str) -> str:
    return (
        f"* on ({BY_WORKFLOW}) group_left (workflow_name)\n"
        f"  max by ({BY_WORKFLOW}, workflow_name) "
        f'(label_replace(wfa_workflow_info{{{job}}}, "workflow_name", "$1", "name", "(.*)"))'
    )


def _alert(
    name: str, expr: str, for_: Any, severity: str, summary: str, description: str, s: Settings
) -> Rule:
    return {
        "alert": name,
        "expr": expr,
        "for": prom_duration(for_),
        "labels": {"severity": severity},
        "annotations": {
            "summary": summary,
            "description": description,
            "runbook_url": s.monitoring.runbook(name),
        },
    }


# recording rules ---------------------------------------------------------------------------


def recording_groups(s: Settings) -> list[dict[str, Any]]:
    """The recording rule groups: thresholds, funnel ratios, action ratios and percentiles."""
    m, job = s.monitoring, s.job
    thresholds = {
        "dropoff_ratio": m.dropoff.ratio,
        "dropoff_jump": m.dropoff_jump.points,
        "min_volume": s.min_volume,
        "failure_ratio": m.failure.ratio,
        "conversion_drop": m.conversion_drop.share,
        "slowdown_factor": m.slowdown.factor,
        "ingest_lag_seconds": m.ingest_lag.lag.total_seconds(),
    }
    outcomes = f'wfa_step_outcomes_total{{{job}, outcome="succeeded"}}'
    finished = f'wfa_step_outcomes_total{{{job}, outcome=~"succeeded|failed"}}'
    buckets = f"wfa_step_duration_seconds_bucket{{{job}}}"
    return [
        {
            "name": "wfa-alert-config",
            "rules": [
                {"record": f"wfa:alert_{k}:threshold", "expr": f"vector({_number(v)})"}
                for k, v in thresholds.items()
            ],
        },
        {
            "name": "wfa-funnel",
            "rules": [
                {
                    "record": "workflow_step:wfa_funnel_step_conversion:ratio",
                    "expr": (
                        f"(wfa_funnel_reached{{{job}}} - wfa_funnel_dropped{{{job}}}"
                        f" - wfa_funnel_in_progress{{{job}}})\n"
                        f"  / (wfa_funnel_reached{{{job}}} > 0)"
                    ),
                },
                {
                    "record": "workflow_step:wfa_funnel_dropoff:ratio",
                    "expr": f"wfa_funnel_dropped{{{job}}} / (wfa_funnel_reached{{{job}}} > 0)",
                },
            ],
        },
        {
            "name": "wfa-actions",
            "rules": [
                {
                    "record": "workflow_step_action_type:wfa_step_outcomes:success_ratio_rate5m",
                    "expr": (
                        f"sum by ({BY_ACTION}) (rate({outcomes}[5m]))\n"
                        f"  / (sum by ({BY_ACTION}) (rate({finished}[5m])) > 0)"
                    ),
                },
                {
                    "record": "action_type:wfa_step_outcomes:success_ratio_rate5m",
                    "expr": (
                        f"sum by (action_type) (rate({outcomes}[5m]))\n"
                        f"  / (sum by (action_type) (rate({finished}[5m])) > 0)"
                    ),
                },
                {
                    "record": "workflow_step_action_type:wfa_step_duration_seconds:p95_rate5m",
                    "expr": (
                        f"histogram_quantile(0.95,\n"
                        f"  sum by ({BY_ACTION}, le) (rate({buckets}[5m]))) >= 0"
                    ),
                },
                {
                    "record": "action_type:wfa_step_duration_seconds:p95_rate5m",
                    "expr": (
                        f"histogram_quantile(0.95,\n"
                        f"  sum by (action_type, le) (rate({buckets}[5m]))) >= 0"
                    ),
                },
            ],
        },
    ]


def _number(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


# alerts ------------------------------------------------------------------------------------


def _dropoff_high(s: Settings) -> Rule:
    d, job = s.monitoring.dropoff, s.job
    w = window_label(d.window)
    expr = with_step_names(
        "(\n"
        f'  max by ({BY_STEP}) (workflow_step:wfa_funnel_dropoff:ratio{{{job}, window="{w}"}})\n'
        f"    > {threshold('dropoff_ratio')}\n"
        f"  and on ({BY_STEP})\n"
        f'    max by ({BY_STEP}) (wfa_funnel_reached{{{job}, window="{w}"}})\n'
        f"      >= {threshold('min_volume')}\n"
        ")",
        job,
    )
    return _alert(
        "WfaStepDropoffHigh",
        expr,
        d.for_,
        "warning",
        "High drop-off at step {{ $labels.step_name }} of workflow {{ $labels.workflow_name }}",
        f"{{{{ $value | humanizePercentage }}}} of the executions enrolled in the last "
        f'{last(d.window)} that reached step "{{{{ $labels.step_name }}}}" '
        f'({{{{ $labels.step }}}}) of workflow "{{{{ $labels.workflow_name }}}}" '
        f"({{{{ $labels.workflow }}}}) dropped there, above {percent(d.ratio)}, for "
        f"{human_duration(d.for_)}.",
        s,
    )


def _dropoff_jump(s: Settings, daily: bool) -> Rule:
    j, job = s.monitoring.dropoff_jump, s.job
    w = window_label(j.window)
    ratio = f'workflow_step:wfa_funnel_dropoff:ratio{{{job}, window="{w}"}}'
    reached = f'wfa_funnel_reached{{{job}, window="{w}"}}'
    offset = prom_duration(j.window)
    if daily:
        base = f"avg_over_time({ratio}[{DAY}] offset {offset})"
        base_volume = f"avg_over_time({reached}[{DAY}] offset {offset})"
    else:
        base = f"{ratio} offset 1w"
        base_volume = f"{reached} offset 1w"
    expr = with_step_names(
        "(\n"
        f"  max by ({BY_STEP}) ({ratio})\n"
        f"    - max by ({BY_STEP}) ({base})\n"
        f"    > {threshold('dropoff_jump')}\n"
        f"  and on ({BY_STEP})\n"
        f"    max by ({BY_STEP}) ({reached}) >= {threshold('min_volume')}\n"
        f"  and on ({BY_STEP})\n"
        f"    max by ({BY_STEP}) ({base_volume}) >= {threshold('min_volume')}\n"
        ")",
        job,
    )
    cohort = f"the last {last(j.window)}'s cohort"
    if daily:
        name = "WfaStepDropoffJumpDaily"
        against = (
            "its average over the 24 hours before (works from the first day; the weekly "
            "comparison is WfaStepDropoffJump)"
        )
    else:
        name = "WfaStepDropoffJump"
        against = (
            "the same time one week earlier (needs a week of Prometheus history; until then "
            "WfaStepDropoffJumpDaily compares with the trailing 24 hours)"
        )
    return _alert(
        name,
        expr,
        j.for_,
        "warning",
        "Drop-off jumped at step {{ $labels.step_name }} of workflow {{ $labels.workflow_name }}",
        f'The drop-off ratio of {cohort} at step "{{{{ $labels.step_name }}}}" '
        f'({{{{ $labels.step }}}}) of workflow "{{{{ $labels.workflow_name }}}}" '
        f"({{{{ $labels.workflow }}}}) is {{{{ $value | humanizePercentage }}}} above {against}.",
        s,
    )


def _conversion_drop(s: Settings, daily: bool) -> Rule:
    c, job = s.monitoring.conversion_drop, s.job
    w = window_label(c.window)
    ratio = f'wfa_funnel_conversion_ratio{{{job}, window="{w}"}}'
    base = f"avg_over_time({ratio}[{DAY}] offset 1h)" if daily else f"{ratio} offset 1w"
    expr = with_workflow_names(
        "(\n"
        f"  max by ({BY_WORKFLOW}) ({ratio})\n"
        f"    < (1 - {threshold('conversion_drop')})\n"
        f"      * max by ({BY_WORKFLOW}) ({base})\n"
        f"  and on ({BY_WORKFLOW})\n"
        f'    max by ({BY_WORKFLOW}) (wfa_funnel_enrolled{{{job}, window="{w}"}})\n'
        f"      >= {threshold('min_volume')}\n"
        ")",
        job,
    )
    if daily:
        name = "WfaConversionRateDropDaily"
        against = (
            "its average over the 24 hours before the last hour (works from the first day; "
            "the weekly comparison is WfaConversionRateDrop)"
        )
    else:
        name = "WfaConversionRateDrop"
        against = (
            "the same time last week (needs a week of Prometheus history; until then "
            "WfaConversionRateDropDaily compares with the trailing 24 hours)"
        )
    return _alert(
        name,
        expr,
        c.for_,
        "warning",
        "Conversion rate of workflow {{ $labels.workflow_name }} dropped",
        f"Of the executions enrolled in the last {last(c.window)} in workflow "
        f'"{{{{ $labels.workflow_name }}}}" ({{{{ $labels.workflow }}}}), '
        f"{{{{ $value | humanizePercentage }}}} converted: down by more than "
        f"{percent(c.share)} against {against}.",
        s,
    )


def _failure_ratio(s: Settings) -> Rule:
    f, job = s.monitoring.failure, s.job
    r = prom_duration(f.window)
    failed = f'wfa_step_outcomes_total{{{job}, outcome="failed"}}'
    finished = f'wfa_step_outcomes_total{{{job}, outcome=~"succeeded|failed"}}'
    expr = with_step_names(
        "(\n"
        f"  sum by ({BY_ACTION}) (rate({failed}[{r}]))\n"
        f"    / sum by ({BY_ACTION}) (rate({finished}[{r}]))\n"
        f"    > {threshold('failure_ratio')}\n"
        f"  and on ({BY_ACTION})\n"
        f"    sum by ({BY_ACTION}) (increase({finished}[{r}]))\n"
        f"      >= {threshold('min_volume')}\n"
        ")",
        job,
    )
    return _alert(
        "WfaActionFailureRatioHigh",
        expr,
        f.for_,
        "warning",
        "Step {{ $labels.step_name }} ({{ $labels.action_type }}) of workflow "
        "{{ $labels.workflow_name }} is failing",
        f"{{{{ $value | humanizePercentage }}}} of the {{{{ $labels.action_type }}}} attempts "
        f'of step "{{{{ $labels.step_name }}}}" ({{{{ $labels.step }}}}) in workflow '
        f'"{{{{ $labels.workflow_name }}}}" ({{{{ $labels.workflow }}}}) failed over the last '
        f"{last(f.window)} (more than {percent(f.ratio)}).",
        s,
    )


def _slowdown(s: Settings) -> Rule:
    sl, job = s.monitoring.slowdown, s.job
    r = prom_duration(sl.window)
    buckets = f"wfa_step_duration_seconds_bucket{{{job}}}"
    now = f"(histogram_quantile(0.95, sum by ({BY_ACTION}, le) (rate({buckets}[{r}]))) >= 0)"
    before = (
        f"histogram_quantile(0.95, sum by ({BY_ACTION}, le) (rate({buckets}[{DAY}] offset {r})))"
    )
    count = f"wfa_step_duration_seconds_count{{{job}}}"
    expr = with_step_names(
        "(\n"
        f"  {now}\n"
        f"    > {threshold('slowdown_factor')}\n"
        f"      * {before}\n"
        f"  and on ({BY_ACTION})\n"
        f"    sum by ({BY_ACTION}) (increase({count}[{r}])) >= {threshold('min_volume')}\n"
        ")",
        job,
    )
    return _alert(
        "WfaStepSlowdown",
        expr,
        sl.for_,
        "warning",
        "Step {{ $labels.step_name }} ({{ $labels.action_type }}) of workflow "
        "{{ $labels.workflow_name }} is slow",
        f"The 95th percentile duration of the {{{{ $labels.action_type }}}} attempts of step "
        f'"{{{{ $labels.step_name }}}}" ({{{{ $labels.step }}}}) in workflow '
        f'"{{{{ $labels.workflow_name }}}}" ({{{{ $labels.workflow }}}}) over the last '
        f"{last(sl.window)} is {{{{ $value | humanizeDuration }}}}, more than "
        f"{_number(sl.factor)} times its 95th percentile over the day before (works from the "
        "first day).",
        s,
    )


def _exporter_alerts(s: Settings) -> list[Rule]:
    m, job = s.monitoring, s.job
    name = m.job
    absent = _alert(
        "WfaExporterAbsent",
        f"absent(up{{{job}}} == 1)",
        m.exporter_absent.for_,
        "critical",
        "No workflow-analytics exporter is up",
        f"Prometheus has scraped no healthy target of job {name} for "
        f"{human_duration(m.exporter_absent.for_)}: workflow metrics are stale and the funnel "
        "alerts cannot fire.",
        s,
    )
    leaders = _alert(
        "WfaExporterLeaders",
        f"(sum(wfa_exporter_leader{{{job}}}) or vector(0)) != 1\nand on () count(up{{{job}}} == 1)",
        m.exporter_absent.for_,
        "critical",
        "{{ $value }} exporter replicas hold the poll lock instead of one",
        f"Of the replicas of job {name} that are up, {{{{ $value }}}} report "
        f"wfa_exporter_leader 1 for {human_duration(m.exporter_absent.for_)}: with none, "
        "nothing is ingested and no workflow series are exported; with several, the workflow "
        "series are served twice.",
        s,
    )
    lag = _alert(
        "WfaIngestLagHigh",
        f"max by (instance, job) (wfa_exporter_ingest_lag_seconds{{{job}}})\n"
        f"  > {threshold('ingest_lag_seconds')}\n"
        f"and on (instance, job) (wfa_exporter_leader{{{job}}} == 1)\n"
        f"and on (instance, job)\n"
        f"  (\n"
        f"    sum by (instance, job) (rate(wfa_exporter_rows_ingested_total{{{job}}}[10m])) > 0\n"
        f"    or\n"
        f"    (time() - wfa_exporter_last_successful_poll_timestamp_seconds{{{job}}}) > 300\n"
        f"  )",
        m.ingest_lag.for_,
        "warning",
        "Exporter {{ $labels.instance }} is behind the source",
        "The newest source row ingested by {{ $labels.instance }} is "
        "{{ $value | humanizeDuration }} old while rows are still arriving, or no poll has "
        "succeeded for 5 minutes.",
        s,
    )
    errors = _alert(
        "WfaPollErrors",
        f"sum by (instance, job, reason) (rate(wfa_exporter_poll_errors_total{{{job}}}[5m])) > 0",
        m.poll_errors.for_,
        "warning",
        "Exporter {{ $labels.instance }} polls are failing ({{ $labels.reason }})",
        "Polls of {{ $labels.instance }} have kept failing with reason {{ $labels.reason }} for "
        f"{human_duration(m.poll_errors.for_)} "
        '({{ $value | printf "%.3f" }} errors per second).',
        s,
    )
    return [absent, leaders, lag, errors]


def alert_groups(s: Settings) -> list[dict[str, Any]]:
    """The alerting rule groups: funnel, actions, exporter."""
    return [
        {
            "name": "wfa-funnel-alerts",
            "rules": [
                _dropoff_high(s),
                _dropoff_jump(s, daily=False),
                _dropoff_jump(s, daily=True),
                _conversion_drop(s, daily=False),
                _conversion_drop(s, daily=True),
            ],
        },
        {"name": "wfa-action-alerts", "rules": [_failure_ratio(s), _slowdown(s)]},
        {"name": "wfa-exporter-alerts", "rules": _exporter_alerts(s)},
    ]


def alert_names(s: Settings) -> list[str]:
    """Names of every alert, in file order."""
    return [r["alert"] for g in alert_groups(s) for r in g["rules"]]
