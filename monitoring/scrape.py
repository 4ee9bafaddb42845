"""The Prometheus configuration of the stack: the exporter's scrape job and the rule files.

Workflow series (counters, histograms, funnel gauges, info metrics and the persisted
rejected-rows counter) come from the store, not from the replica that serves them: only the
leader serves them, and their `instance` label is dropped so that a failover continues the
same series. A counter then keeps its value across the switch and `increase()` shows the real
change. Self-metrics (`wfa_exporter_*`, `process_*`) keep `instance`.
"""

from __future__ import annotations

from typing import Any

from monitoring.settings import Settings

STORE_SERIES = r"wfa_(workflow|step|funnel)_.+|wfa_exporter_rejected_rows_total"
"""Series read from the store (the same on every replica): relabelled without `instance`."""


def store_series_relabel() -> list[dict[str, Any]]:
    """metric_relabel_configs that drop `instance` from the store series."""
    return [
        {
            "source_labels": ["__name__"],
            "regex": STORE_SERIES,
            "target_label": "instance",
            "replacement": "",
            "action": "replace",
        }
    ]


def exporter_job(s: Settings, targets: list[str], interval: str | None = None) -> dict[str, Any]:
    """The scrape job of the exporter replicas."""
    job: dict[str, Any] = {"job_name": s.monitoring.job, "metrics_path": "/metrics"}
    if interval:
        job["scrape_interval"] = interval
    job["static_configs"] = [{"targets": targets}]
    job["metric_relabel_configs"] = store_series_relabel()
    return job


def prometheus_config(
    s: Settings,
    targets: list[str],
    rule_files: list[str],
    *,
    interval: str = "15s",
    self_target: str | None = "localhost:9090",
) -> dict[str, Any]:
    """A whole prometheus.yml: global intervals, rule files, the exporter job (and itself)."""
    jobs = [exporter_job(s, targets)]
    if self_target:
        jobs.append({"job_name": "prometheus", "static_configs": [{"targets": [self_target]}]})
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "rule_files": rule_files,
        "scrape_configs": jobs,
    }


def shipped(s: Settings) -> dict[str, Any]:
    """The prometheus.yml of docker-compose.yml (exporter service at exporter:9464)."""
    return prometheus_config(s, ["exporter:9464"], ["rules/*.yml"])
