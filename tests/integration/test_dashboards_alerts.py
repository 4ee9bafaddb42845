"""Alerts seen firing: `wfa simulate --live --incident ...` stages incidents, a real `wfa exporter`
serves them, a real Prometheus evaluates the rules generated from the same config file (short
windows and `for:` there, the shipped files untouched): the drop-off, failure-ratio and
slowdown alerts fire for the right workflow and step, and the drop-off alert resolves once its
incident is over. The exporter's log stays quiet meanwhile."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import yaml

from exporter.simulate.model import SimStep, SimWorkflow
from exporter.simulate.writer import create_source_schema, upsert_workflows
from monitoring.settings import Settings
from tests.integration.prom_server import Prometheus, free_port, needs_prometheus

ROOT = Path(__file__).resolve().parents[2]
INCIDENTS = [
    "workflow=wf-drop,step=2,dropoff=0.9,after=20s,for=25s",
    "workflow=wf-fail,step=3,failure=0.8,after=20s,for=40s",
    "workflow=wf-slow,step=3,slowdown=20,after=25s,for=40s",
]
WANTED = {
    "WfaStepDropoffHigh": ("wf-drop", "wf-drop-s2"),
    "WfaActionFailureRatioHigh": ("wf-fail", "wf-fail-s3"),
    "WfaStepSlowdown": ("wf-slow", "wf-slow-s3"),
}


def _workflows() -> list[SimWorkflow]:
    types = ["send_email", "update_field", "webhook", "send_email"]
    updated = datetime.now(UTC) - timedelta(days=1)
    return [
        SimWorkflow(
            wf_id,
            "tenant-1",
            name,
            [SimStep(f"{wf_id}-s{k + 1}", f"Step {k + 1}", t) for k, t in enumerate(types)],
            updated,
        )
        for wf_id, name in (("wf-drop", "Drop"), ("wf-fail", "Fail"), ("wf-slow", "Slow"))
    ]


def _config(dsn: str, port: int) -> dict[str, Any]:
    return {
        "source": {"dsn": dsn},
        "exporter": {"poll_interval": "1s", "refresh_interval": "2s"},
        "metrics": {
            "listen": f"127.0.0.1:{port}",
            "snapshot_interval": "1s",
            "windows": ["30s", "1h", "1d"],
            "min_volume": 5,
        },
        "monitoring": {
            "dropoff": {"window": "30s", "for": "5s"},
            "dropoff_jump": {"window": "30s", "for": "5s"},
            "failure": {"window": "20s", "for": "5s"},
            "slowdown": {"window": "20s", "for": "5s"},
        },
    }


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "exporter", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@needs_prometheus
async def test_incidents_fire_their_alerts_and_the_dropoff_one_resolves(
    db_dsn: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(db_dsn)
    try:
        await create_source_schema(conn)
        await upsert_workflows(conn, _workflows())
    finally:
        await conn.close()
    port = free_port()
    config = tmp_path / "wfa.yaml"
    config.write_text(yaml.safe_dump(_config(db_dsn, port)))
    settings = Settings.load(config)
    shipped = (ROOT / "provisioning/prometheus/rules/wfa-alerts.yml").read_text()
    assert "for: 5s" not in shipped, "the shipped rules keep their durations"

    exporter = _start(["exporter", "--config", str(config)], tmp_path / "exporter.log")
    simulate = None
    try:
        async with Prometheus([f"127.0.0.1:{port}"], rules=True, settings=settings) as prom:
            rules = (prom.dir / "wfa-alerts.yml").read_text()
            assert "for: 5s" in rules and 'window="30s"' in rules
            await prom.wait_for(f"wfa_exporter_leader{{{settings.job}}} == 1", timeout=60)
            incidents = [a for spec in INCIDENTS for a in ("--incident", spec)]
            simulate = _start(
                ["simulate", "--config", str(config), "--live", "--rate", "30/s", *incidents],
                tmp_path / "simulate.log",
            )
            started = time.monotonic()
            # keyed by target: with 20 s windows and a baseline of a minute, a quiet step's p95
            # can also cross 3x by chance; what must hold is that each incident's step fires
            fired: dict[tuple[str, str, str], dict[str, str]] = {}
            wanted = {(name, *target) for name, target in WANTED.items()}
            while not wanted <= set(fired) and time.monotonic() - started < 150:
                for a in await prom.alerts():
                    labels = a["labels"]
                    if a["state"] == "firing" and labels["alertname"] in WANTED:
                        key = (labels["alertname"], labels["workflow"], labels["step"])
                        fired.setdefault(key, labels)
                assert simulate.poll() is None, (tmp_path / "simulate.log").read_text()
                await asyncio.sleep(1)
            assert wanted <= set(fired), (
                f"fired: {sorted(fired)}\n{(tmp_path / 'simulate.log').read_text()[-2000:]}"
            )
            for key in wanted:
                labels = fired[key]
                assert labels["workflow_name"] and labels["step_name"] == f"Step {key[2][-1]}"
            # the drop-off incident ends 45 s after the start; its 30 s cohort clears after it
            resolved = False
            while time.monotonic() - started < 200:
                names = {
                    (a["labels"]["alertname"], a["labels"].get("workflow"), a["labels"].get("step"))
                    for a in await prom.alerts()
                }
                if ("WfaStepDropoffHigh", *WANTED["WfaStepDropoffHigh"]) not in names:
                    resolved = True
                    break
                await asyncio.sleep(1)
            assert resolved, "WfaStepDropoffHigh did not resolve after its incident"
            assert time.monotonic() - started > 45
            leaders = await prom.series(f"sum(wfa_exporter_leader{{{settings.job}}})")
            assert float(leaders[0]["value"][1]) == 1
    finally:
        if simulate is not None:
            _stop(simulate)
        assert _stop(exporter) == 0
    sim_log = (tmp_path / "simulate.log").read_text()
    assert sim_log.count("incident staged:") == 3
    assert "incident starts: 90% drop-off at step 2 of wf-drop" in sim_log
    assert "incident ends: 90% drop-off at step 2 of wf-drop" in sim_log
    log = (tmp_path / "exporter.log").read_text()
    assert "Running job" not in log and "executed successfully" not in log
    info = [line for line in log.splitlines() if " INFO " in line]
    assert len(info) <= 6, "\n".join(info)
    assert any("leader:" in line for line in info)
