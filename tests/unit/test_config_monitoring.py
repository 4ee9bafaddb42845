"""The monitoring section and the bounded-label keys: defaults, and bad values named by key."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from exporter.config import ConfigError, config_from_dict

DSN = "postgresql://wfa@localhost/wfa"
REPO = Path(__file__).resolve().parents[2]


def _problems(**sections: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        config_from_dict({"source": {"dsn": DSN}, **sections})
    return info.value.problems


def test_defaults() -> None:
    cfg = config_from_dict({"source": {"dsn": DSN}})
    m = cfg.monitoring
    assert (m.job, m.dropoff.ratio, m.dropoff.window, m.dropoff.for_) == (
        "wfa-exporter",
        0.5,
        timedelta(days=1),
        timedelta(minutes=15),
    )
    assert m.conversion_drop.for_ == timedelta(minutes=30)
    assert m.runbook("WfaStepDropoffHigh") == "http://localhost:9464/runbook/WfaStepDropoffHigh"
    assert (cfg.metrics.exit_reasons, cfg.metrics.top_reasons) == ((), 10)
    wiki = config_from_dict(
        {"source": {"dsn": DSN}, "monitoring": {"runbook_url": "https://w.example/rb#{anchor}"}}
    )
    assert wiki.monitoring.runbook("WfaPollErrors") == "https://w.example/rb#wfapollerrors"


@pytest.mark.parametrize(
    ("sections", "problem"),
    [
        ({"monitoring": {"job": 'wfa"} or up{job="x'}}, "monitoring.job: must be 1 to 100"),
        ({"monitoring": {"job": ""}}, "monitoring.job: must be 1 to 100"),
        ({"monitoring": {"runbook_url": "docs/runbook.md#x"}}, "monitoring.runbook_url: must be"),
        ({"monitoring": {"runbook_url": "http://x/{name}"}}, "monitoring.runbook_url: must be"),
        (
            {"monitoring": {"dropoff": {"ratio": 1.5}}},
            "monitoring.dropoff.ratio: must be at most 1",
        ),
        ({"monitoring": {"dropoff": {"ratio": 0}}}, "monitoring.dropoff.ratio"),
        ({"monitoring": {"dropoff": {"ratio": True}}}, "monitoring.dropoff.ratio"),
        ({"monitoring": {"dropoff": {"for": "soon"}}}, "monitoring.dropoff.for: invalid duration"),
        ({"monitoring": {"dropoff": {"for": "0s"}}}, "monitoring.dropoff.for: must be greater"),
        ({"monitoring": {"dropoff": {"windw": "1d"}}}, "monitoring.dropoff.windw: unknown key"),
        ({"monitoring": {"slowdown": {"factor": 1}}}, "monitoring.slowdown.factor"),
        ({"monitoring": {"alerts": {}}}, "monitoring.alerts: unknown key"),
        (
            {"monitoring": {"dropoff": {"window": "2h"}}},
            "monitoring.dropoff.window: must be one of metrics.windows (1h, 1d, 7d), got 2h",
        ),
        (
            {"metrics": {"windows": ["1h"]}},
            "monitoring.dropoff.window: must be one of metrics.windows (1h), got 1d",
        ),
        ({"metrics": {"exit_reasons": ["other"]}}, "metrics.exit_reasons[0]: 'other' is reserved"),
        ({"metrics": {"exit_reasons": ["a\tb"]}}, "metrics.exit_reasons[0]: must be 1 to 64"),
        ({"metrics": {"exit_reasons": ["x" * 65]}}, "metrics.exit_reasons[0]: must be 1 to 64"),
        ({"metrics": {"top_reasons": 101}}, "metrics.top_reasons: must be at most 100"),
        ({"metrics": {"top_reasons": -1}}, "metrics.top_reasons: must be at least 0"),
        ({"metrics": {"top_reasons": True}}, "metrics.top_reasons: must be an integer"),
    ],
)
def test_bad_values_name_the_key(sections: dict[str, Any], problem: str) -> None:
    problems = _problems(**sections)
    assert any(p.startswith(problem) for p in problems), problems


def test_check_config_exits_1_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "wfa.yaml"
    path.write_text(f"source: {{dsn: '{DSN}'}}\nmonitoring: {{failure: {{ratio: 3}}}}\n")
    run = subprocess.run(
        [sys.executable, "-m", "exporter", "check-config", "--config", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert run.returncode == 1
    assert "monitoring.failure.ratio: must be at most 1" in run.stderr
