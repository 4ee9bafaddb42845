"""`make bench` in quick mode: every benchmark runs and the one table comes out."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def test_make_bench_quick(tmp_path: Path) -> None:
    """Quick mode prints one Markdown table with ingest and freshness figures, exit 0."""
    report = tmp_path / "bench.md"
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-C",
            str(REPO),
            "bench",
            f"BENCH_ARGS=--quick --timeout 300 --out {report}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "| benchmark | scale | metric | ours | beside it | target |" in out
    assert out.count("| benchmark |") == 1
    assert "Machine: " in out
    assert "Load average (1 min) before the run: " in out
    assert report.read_text() in out

    data = json.loads(report.with_suffix(".json").read_text())
    assert data["scales"] == [2000]
    figures = data["figures"]
    by_bench = {f["benchmark"] for f in figures}
    assert {"ingest", "backfill", "freshness"} <= by_bench
    for f in figures:
        assert math.isfinite(f["ours"]), f
        assert f["scale"].startswith("2,000 executions"), f
    ingest = {f["metric"]: f for f in figures if f["benchmark"] == "ingest"}
    copy = ingest["execution changes/s (first ingest, incl. rollup refresh)"]
    assert copy["ours"] > 0 and copy["peer_value"] > 0
    steady = [f for m, f in ingest.items() if m.startswith("steady state: execution changes")]
    assert len(steady) == 1 and steady[0]["ours"] > 0, steady
    reread = [f for m, f in ingest.items() if m.startswith("steady state: re-read")]
    assert len(reread) == 1 and reread[0]["ours"] > 0, reread
    setbased = {f["metric"]: f for f in figures if f["benchmark"] == "ingest set-based"}
    same = setbased["store rows differing from the exporter's"]
    assert same["ours"] == 0 and same["peer_value"] > 2000, same
    backfill = [f for f in figures if f["benchmark"] == "backfill"]
    assert len(backfill) == 1 and backfill[0]["ours"] > 0
    fresh = [f for f in figures if f["benchmark"] == "freshness"]
    assert len(fresh) == 5
    assert all(0 < f["ours"] < 30_000 for f in fresh)
    api_cpu = [f for f in figures if "CPU per answer" in f["metric"]]
    if any(f["benchmark"].startswith("api ") for f in figures):
        # every computed endpoint, both sides: the API process and the store cluster
        assert len(api_cpu) >= 6 and all(f["ours"] > 0 for f in api_cpu), api_cpu
        # how fast the machine was, before and after the timed runs, beside each API table
        speed = [f for f in figures if f["metric"].startswith("machine speed")]
        assert speed and all(f["ours"] > 0 and f["peer_value"] > 0 for f in speed), speed
