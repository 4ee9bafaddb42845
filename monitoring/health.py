"""The "Exporter health" dashboard: ingest lag, polls, rows, errors, snapshot and cardinality."""

from __future__ import annotations

from monitoring.panels import (
    PROM_VAR,
    Json,
    Pos,
    dashboard,
    high_is_bad,
    prom,
    prom_var,
    row,
    stat,
    steps,
    timeseries,
)
from monitoring.settings import Settings

UID = "wfa-exporter"


def instance_var(s: Settings) -> Json:
    """The exporter replicas scraped by Prometheus (All: every replica)."""
    return prom_var(
        "instance",
        "Instance",
        f"label_values(wfa_exporter_build_info{{{s.job}}}, instance)",
        "Exporter instances (replicas) scraped by Prometheus.",
    )
_LAG = high_is_bad(60, 300)
_AGE = high_is_bad(60, 300)
_UP = steps(("red", None), ("green", 1))


def _quantile(q: float, inst: str) -> str:
    return (
        f"histogram_quantile({q}, sum by (instance, le) "
        f"(rate(wfa_exporter_poll_duration_seconds_bucket{{{inst}}}[$__rate_interval]))) >= 0"
    )


def panels(s: Settings) -> list[Json]:
    """Panels of the exporter health dashboard."""
    inst = f'{s.job}, instance=~"$instance"'
    job = s.job
    return [
        row("Now"),
        stat(
            "Store reachable",
            "1 when the exporter's last store access succeeded (lowest over the instances).",
            [prom(f"min(wfa_exporter_store_up{{{inst}}})", "store up")],
            unit="bool_yes_no",
            thresholds=_UP,
            graph=False,
            color_mode="background",
        ),
        stat(
            "Polling replicas",
            "Replicas holding the poll lock; exactly one is expected.",
            [prom(f"sum(wfa_exporter_leader{{{inst}}})", "leaders")],
            unit="short",
            thresholds=steps(("red", None), ("green", 1), ("red", 2)),
            graph=False,
            color_mode="background",
        ),
        stat(
            "Ingest lag now",
            "Now minus the newest source updated_at ingested (grows when the source is idle).",
            [prom(f"max(wfa_exporter_ingest_lag_seconds{{{inst}}})", "lag")],
            unit="s",
            thresholds=_LAG,
        ),
        stat(
            "Since last successful poll",
            "Time since the last poll that finished without error.",
            [
                prom(
                    f"time() - max(wfa_exporter_last_successful_poll_timestamp_seconds{{{inst}}})",
                    "since",
                )
            ],
            unit="s",
            thresholds=high_is_bad(60, 300),
        ),
        stat(
            "Snapshot age now",
            "Age of the metrics snapshot served on /metrics.",
            [prom(f"max(wfa_exporter_snapshot_age_seconds{{{inst}}})", "age")],
            unit="s",
            thresholds=_AGE,
        ),
        stat(
            "Series dropped (cardinality guard)",
            "Series left out of the current snapshot because of metrics.max_series (leader).",
            [prom(f"max(wfa_exporter_snapshot_series_dropped{{{inst}}})", "dropped")],
            unit="short",
            decimals=0,
            thresholds=high_is_bad(1, 1000),
        ),
        row("Polling"),
        timeseries(
            "Ingest lag",
            "Now minus the newest ingested source updated_at, per instance.",
            [prom(f"wfa_exporter_ingest_lag_seconds{{{inst}}}", "{{instance}}")],
            unit="s",
            thresholds=_LAG,
        ),
        timeseries(
            "Poll duration",
            "p50, p95 and p99 of poll cycle durations.",
            [
                prom(_quantile(q, inst), f"p{int(q * 100)} {{{{instance}}}}", ref)
                for ref, q in (("A", 0.5), ("B", 0.95), ("C", 0.99))
            ],
            unit="s",
            thresholds=high_is_bad(5, 30),
        ),
        timeseries(
            "Rows ingested per second",
            "Rows written to the store per second, per table.",
            [
                prom(
                    "sum by (table) "
                    f"(rate(wfa_exporter_rows_ingested_total{{{inst}}}[$__rate_interval]))",
                    "{{table}}",
                )
            ],
            unit="rowsps",
            stack=True,
        ),
        timeseries(
            "Poll errors per minute",
            "Failed polls per minute, by reason (unreachable, statement_timeout, ...).",
            [
                prom(
                    "sum by (reason) "
                    f"(rate(wfa_exporter_poll_errors_total{{{inst}}}[$__rate_interval])) * 60",
                    "{{reason}}",
                )
            ],
            unit="cpm",
            thresholds=high_is_bad(0.1, 1),
        ),
        timeseries(
            "Rejected rows per minute",
            "Source rows quarantined in wfa.rejected_rows per minute, by reason (a store "
            "counter served by the leader: not per instance).",
            [
                prom(
                    "sum by (reason) "
                    f"(rate(wfa_exporter_rejected_rows_total{{{job}}}[$__rate_interval])) * 60",
                    "{{reason}}",
                )
            ],
            unit="cpm",
            thresholds=high_is_bad(1, 10),
        ),
        row("Snapshot and cardinality"),
        timeseries(
            "Snapshot age",
            "Age of the metrics snapshot; it is rebuilt every metrics.snapshot_interval.",
            [prom(f"wfa_exporter_snapshot_age_seconds{{{inst}}}", "{{instance}}")],
            unit="s",
            thresholds=_AGE,
            size=Pos(8, 8),
        ),
        timeseries(
            "Series in the snapshot",
            "Workflow series served from the snapshot, and those left out by the guard.",
            [
                prom(f"max(wfa_exporter_snapshot_series{{{inst}}})", "served", "A"),
                prom(f"max(wfa_exporter_snapshot_series_dropped{{{inst}}})", "dropped", "B"),
            ],
            unit="short",
            size=Pos(8, 8),
        ),
        timeseries(
            "Series dropped by the cardinality guard",
            "Series left out by the cardinality guard, summed over snapshots, per minute.",
            [
                prom(
                    "sum(rate(wfa_exporter_series_dropped_total"
                    f"{{{inst}}}[$__rate_interval])) * 60",
                    "dropped",
                )
            ],
            unit="cpm",
            thresholds=high_is_bad(1, 1000),
            size=Pos(8, 8),
        ),
    ]


def build(s: Settings) -> Json:
    """The exporter health dashboard."""
    return dashboard(
        UID,
        "Exporter health",
        "The workflow-analytics exporter itself: lag, polls, rows, errors, snapshot, cardinality.",
        panels(s),
        [PROM_VAR, instance_var(s)],
        tags=("exporter",),
        time_from="now-6h",
    )
