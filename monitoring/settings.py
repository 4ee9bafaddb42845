"""What the generated monitoring files depend on: the metrics and monitoring config sections."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from exporter.config import Config, format_duration, load_config
from exporter.config.schema import MetricsConfig, MonitoringConfig


@dataclass(frozen=True, slots=True)
class Settings:
    """Thresholds, windows, durations, job and runbook of every generated file."""

    metrics: MetricsConfig
    monitoring: MonitoringConfig

    @classmethod
    def defaults(cls) -> Settings:
        """The settings of the committed files: every key at its default."""
        return cls(MetricsConfig(), MonitoringConfig())

    @classmethod
    def of(cls, cfg: Config) -> Settings:
        """The settings of a loaded config."""
        return cls(cfg.metrics, cfg.monitoring)

    @classmethod
    def load(cls, path: Path) -> Settings:
        """The settings of a config file (ConfigError lists its problems)."""
        return cls.of(load_config(path))

    @property
    def job(self) -> str:
        """The `job="..."` matcher of every exporter series."""
        return f'job="{self.monitoring.job}"'

    @property
    def min_volume(self) -> int:
        """Executions a step (or attempts a cohort) needs before a ratio alerts or bottlenecks."""
        return self.metrics.min_volume


def prom_duration(d: timedelta) -> str:
    """A Prometheus duration ("15m", "1d", "1h30m"); whole seconds at least."""
    seconds = max(1, round(d.total_seconds()))
    return format_duration(timedelta(seconds=seconds))


_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def human_duration(d: timedelta) -> str:
    """A duration in words: "15 minutes", "1 day", "1 hour 30 minutes"."""
    left = max(1, round(d.total_seconds()))
    parts = []
    for name, seconds in _UNITS:
        n, left = divmod(left, seconds)
        if n:
            parts.append(f"{n} {name}{'' if n == 1 else 's'}")
    return " ".join(parts)


def last(d: timedelta) -> str:
    """A trailing window in words after "the last": "day", "hour", "30 minutes"."""
    text = human_duration(d)
    return text[2:] if text.startswith("1 ") and " " not in text[2:] else text


def percent(x: float) -> str:
    """A share as a percentage without needless decimals: 0.5 -> "50%", 0.125 -> "12.5%"."""
    return f"{x * 100:.4g}%"
