"""Prometheus metrics: a store snapshot served by custom collectors on a private registry."""

from exporter.metrics.collector import (
    MetricsState,
    SelfCollector,
    SnapshotCollector,
    render_snapshot,
)
from exporter.metrics.server import MetricsServer, attach_metrics
from exporter.metrics.snapshot import SPECS, Snapshot, build_snapshot, window_label

__all__ = [
    "SPECS",
    "MetricsServer",
    "MetricsState",
    "SelfCollector",
    "Snapshot",
    "SnapshotCollector",
    "attach_metrics",
    "build_snapshot",
    "render_snapshot",
    "window_label",
]
