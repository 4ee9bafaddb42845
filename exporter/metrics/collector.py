"""Custom collectors: workflow families from the current snapshot, self-metrics from live state."""

from __future__ import annotations

import bisect
import math
import platform
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client import generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from exporter import __version__
from exporter.ingest import HEAL_REASONS
from exporter.metrics.snapshot import COUNTER, GAUGE, HISTOGRAM, SPECS, Snapshot
from exporter.service import ExporterState

POLL_BOUNDS: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
    math.inf,
)
POLL_ERROR_REASONS = ("statement_timeout", "unreachable", "database_error", "internal")
"""Poll error reasons always exposed (at 0 until they happen), see exporter.service.error_reason."""
SNAPSHOT_ERROR_REASONS = (*POLL_ERROR_REASONS, "timeout")
"""Snapshot error reasons: the poll's, and `timeout` when a build outlives the store timeout."""


@dataclass(slots=True)
class PollDurations:
    """An in-process histogram of poll cycle durations."""

    counts: list[int] = field(default_factory=lambda: [0] * len(POLL_BOUNDS))
    total: float = 0.0

    def observe(self, seconds: float) -> None:
        """Count one poll that took `seconds`."""
        self.counts[bisect.bisect_left(POLL_BOUNDS, seconds)] += 1
        self.total += seconds


@dataclass(slots=True)
class MetricsState:
    """The metrics side's own state: current snapshot, snapshot errors, poll durations."""

    started_at: float = field(default_factory=time.time)
    snapshot: Snapshot | None = None
    snapshot_errors: Counter = field(default_factory=Counter)
    dropped_total: int = 0
    polls: PollDurations = field(default_factory=PollDurations)
    job_failures: Mapping[str, int] = field(default_factory=dict)
    """Scheduled job runs that ended with an error, by job (the process's `Jobs` counter)."""

    def publish(self, snapshot: Snapshot) -> None:
        """Make `snapshot` current and add its dropped series to the running total."""
        self.snapshot = snapshot
        self.dropped_total += snapshot.dropped_series

    def snapshot_age(self, now: float | None = None) -> float:
        """Seconds since the current snapshot was read (since start when there is none yet)."""
        now = time.time() if now is None else now
        base = self.snapshot.built_at if self.snapshot else self.started_at
        return max(0.0, now - base)


def _family(name: str, kind: str, doc: str, labels: list[str]) -> Metric:
    if kind == COUNTER:
        return CounterMetricFamily(name, doc, labels=labels)
    if kind == GAUGE:
        return GaugeMetricFamily(name, doc, labels=labels)
    return HistogramMetricFamily(name, doc, labels=labels)


class SnapshotCollector:
    """Yields fresh families from the snapshot `current()` returns; nothing when it is None."""

    def __init__(self, current: Callable[[], Snapshot | None]):
        self.current = current

    def collect(self) -> Iterator[Metric]:
        """Workflow families, then the snapshot's own figures."""
        snap = self.current()
        if snap is None:
            return
        yield from workflow_families(snap)
        yield from summary_families(snap)


def workflow_families(snap: Snapshot) -> Iterator[Metric]:
    """The workflow families of a snapshot, in SPECS order."""
    for spec in SPECS:
        fam = _family(spec.name, spec.kind, spec.doc, snap.label_names(spec))
        rows = snap.samples.get(spec.name, ())
        if spec.kind == COUNTER or spec.kind == GAUGE:
            for labels, value in rows:
                fam.add_metric(labels, value)
        else:
            for labels, (buckets, total) in rows:
                fam.add_metric(labels, [(floatToGoString(le), n) for le, n in buckets], total)
        yield fam


def summary_families(snap: Snapshot) -> Iterator[Metric]:
    """What the snapshot says about itself and the store: rejected rows, series kept and dropped."""
    rej = CounterMetricFamily(
        "wfa_exporter_rejected_rows", "Source rows rejected, by reason.", labels=["reason"]
    )
    for reason, n in sorted(snap.rejected.items()):
        rej.add_metric([reason], n)
    yield rej
    persisted = snap.exporter_counters
    yield CounterMetricFamily(
        "wfa_exporter_late_commits",
        "Source row versions first seen behind the cursor (committed late, within the overlap).",
        value=sum(persisted.get("late_commits", {}).values()),
    )
    healed = CounterMetricFamily(
        "wfa_exporter_reconciled_rows",
        "Rows reconcile re-ingested because the store missed them, by reason.",
        labels=["reason"],
    )
    counts = persisted.get("reconciled_rows", {})
    for reason in sorted({*HEAL_REASONS, *counts}):
        healed.add_metric([reason], counts.get(reason, 0))
    yield healed
    yield GaugeMetricFamily(
        "wfa_exporter_snapshot_series", "Series in the current snapshot.", value=snap.series
    )
    yield GaugeMetricFamily(
        "wfa_exporter_snapshot_series_dropped",
        "Series left out of the current snapshot by the cardinality guard.",
        value=snap.dropped_series,
    )
    yield GaugeMetricFamily(
        "wfa_exporter_snapshot_duration_seconds",
        "Seconds the current snapshot took to read and build.",
        value=snap.duration,
    )


class _Families:
    def __init__(self, families: Iterable[Metric]):
        self.families = families

    def collect(self) -> Iterable[Metric]:
        return self.families


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _label_text(names: list[str], values: Iterable[str]) -> list[str]:
    return [f'{k}="{_escape(v)}"' for k, v in zip(names, values, strict=True)]


def render_snapshot(snap: Snapshot) -> bytes:
    """Exactly `generate_latest` of a SnapshotCollector on `snap`, rendered many times faster."""
    out: list[str] = []
    add = out.append
    fmt = floatToGoString
    for spec in SPECS:
        names = snap.label_names(spec)
        order = sorted(range(len(names)), key=names.__getitem__)
        sorted_names = [names[i] for i in order]
        doc = spec.doc.replace("\\", r"\\").replace("\n", r"\n")
        add(f"# HELP {spec.name} {doc}\n# TYPE {spec.name} {spec.kind}\n")
        rows = snap.samples.get(spec.name, ())
        if spec.kind != HISTOGRAM:
            for labels, value in rows:
                text = ",".join(_label_text(sorted_names, [labels[i] for i in order]))
                add(f"{spec.name}{{{text}}} {fmt(value)}\n")
            continue
        at = bisect.bisect_left(sorted_names, "le")
        bucket = f"{spec.name}_bucket"
        for labels, (buckets, total) in rows:
            parts = _label_text(sorted_names, [labels[i] for i in order])
            text = ",".join(parts)
            before = ",".join(parts[:at]) + "," if at else ""
            after = "," + ",".join(parts[at:]) if at < len(parts) else ""
            for le, n in buckets:
                add(f'{bucket}{{{before}le="{fmt(le)}"{after}}} {fmt(n)}\n')
            add(f"{spec.name}_count{{{text}}} {fmt(buckets[-1][1])}\n")
            add(f"{spec.name}_sum{{{text}}} {fmt(total)}\n")
    return "".join(out).encode() + generate_latest(_Families(list(summary_families(snap))))


class SelfCollector:
    """Exporter self-metrics read at scrape time from the exporter's and the metrics' state."""

    def __init__(self, exporter: ExporterState, metrics: MetricsState):
        self.exporter = exporter
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        """Self-metrics; never touches the database."""
        ex, ms, now = self.exporter, self.metrics, time.time()
        polls = ms.polls
        running, buckets = 0, []
        for le, n in zip(POLL_BOUNDS, polls.counts, strict=True):
            running += n
            buckets.append((floatToGoString(le), running))
        h = HistogramMetricFamily(
            "wfa_exporter_poll_duration_seconds", "Duration of successful poll cycles."
        )
        h.add_metric([], buckets, polls.total)
        yield h
        rows = CounterMetricFamily(
            "wfa_exporter_rows_ingested", "Rows written to the store, by table.", labels=["table"]
        )
        for table, n in sorted(ex.rows.items()):
            rows.add_metric([table], n)
        yield rows
        newest = [
            t for t in (ex.newest_updated_at, ms.snapshot and ms.snapshot.newest_ingested) if t
        ]
        if newest:
            yield GaugeMetricFamily(
                "wfa_exporter_ingest_lag_seconds",
                "Now minus the newest ingested source updated_at.",
                value=max(0.0, now - max(newest).timestamp()),
            )
        errors = CounterMetricFamily(
            "wfa_exporter_poll_errors", "Failed poll cycles, by reason.", labels=["reason"]
        )
        for reason in sorted({*POLL_ERROR_REASONS, *ex.errors}):
            errors.add_metric([reason], ex.errors.get(reason, 0))
        yield errors
        if ex.last_success is not None:
            yield GaugeMetricFamily(
                "wfa_exporter_last_successful_poll_timestamp_seconds",
                "Unix time of the last successful poll cycle.",
                value=ex.last_success,
            )
        yield GaugeMetricFamily(
            "wfa_exporter_snapshot_age_seconds",
            "Seconds since the served snapshot was read (since start before the first).",
            value=ms.snapshot_age(now),
        )
        snap_errors = CounterMetricFamily(
            "wfa_exporter_snapshot_errors",
            "Failed snapshot builds, by reason.",
            labels=["reason"],
        )
        for reason in sorted({*SNAPSHOT_ERROR_REASONS, *ms.snapshot_errors}):
            snap_errors.add_metric([reason], ms.snapshot_errors.get(reason, 0))
        yield snap_errors
        jobs = CounterMetricFamily(
            "wfa_exporter_job_failures",
            "Scheduled job runs (poll, snapshot, retention, ...) that ended with an error.",
            labels=["job"],
        )
        for job, n in sorted(ms.job_failures.items()):
            jobs.add_metric([job], n)
        yield jobs
        yield CounterMetricFamily(
            "wfa_exporter_series_dropped",
            "Series left out by the cardinality guard, summed over snapshots.",
            value=ms.dropped_total,
        )
        yield GaugeMetricFamily(
            "wfa_exporter_store_up",
            "1 when the analytics store answered its last use or probe.",
            value=1 if ex.health.store_up else 0,
        )
        yield GaugeMetricFamily(
            "wfa_exporter_source_up",
            "1 when the source database answered its last use or probe.",
            value=1 if ex.health.source_up else 0,
        )
        yield GaugeMetricFamily(
            "wfa_exporter_leader",
            "1 on the replica holding the poll lock (the only one serving workflow series).",
            value=1 if ex.is_leader else 0,
        )
        info = GaugeMetricFamily(
            "wfa_exporter_build_info", "Exporter build; always 1.", labels=["version", "python"]
        )
        info.add_metric([__version__, platform.python_version()], 1)
        yield info
