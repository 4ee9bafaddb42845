"""PromQL fragments shared by the dashboards: selectors and joins with the info metrics."""

from __future__ import annotations

from monitoring.settings import Settings


def wf(s: Settings) -> str:
    """Matchers of the exporter job and the selected workflows."""
    return f'{s.job}, workflow=~"$workflow"'


def wf_step(s: Settings) -> str:
    """Matchers of the exporter job and the selected workflows and steps."""
    return f'{s.job}, workflow=~"$workflow", step=~"$step"'


def step_names(expr: str, s: Settings, by: str = "workflow, step") -> str:
    """`expr` (labelled by workflow and step) with a `step_name` label from wfa_step_info."""
    return (
        f"({expr})\n* on ({by}) group_left (step_name)\n"
        f"  max by ({by}, step_name) (label_replace(wfa_step_info{{{wf(s)}}}, "
        '"step_name", "$1", "name", "(.*)"))'
    )


def workflow_names(expr: str, s: Settings) -> str:
    """`expr` (labelled by workflow) with a `workflow_name` label from wfa_workflow_info."""
    return (
        f"({expr})\n* on (workflow) group_left (workflow_name)\n"
        f"  max by (workflow, workflow_name) (label_replace(wfa_workflow_info{{{wf(s)}}}, "
        '"workflow_name", "$1", "name", "(.*)"))'
    )


def all_names(expr: str, s: Settings) -> str:
    """`expr` (labelled by workflow and step) with both `workflow_name` and `step_name`."""
    return workflow_names(step_names(expr, s), s)


def increase(metric: str, matchers: str, window: str = "$__range") -> str:
    """`increase(metric{matchers}[window])`."""
    return f"increase({metric}{{{matchers}}}[{window}])"


def rate(metric: str, matchers: str, window: str = "$__rate_interval") -> str:
    """`rate(metric{matchers}[window])`."""
    return f"rate({metric}{{{matchers}}}[{window}])"


def quantile(q: float, by: str, metric: str, matchers: str, window: str) -> str:
    """`histogram_quantile(q, sum by (by, le) (rate|increase(metric_bucket[window])))`, without
    the NaN of an empty histogram (`>= 0` drops it)."""
    fn = "increase" if window == "$__range" else "rate"
    sel = f"{fn}({metric}_bucket{{{matchers}}}[{window}])"
    group = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({group}) ({sel})) >= 0"
