"""`wfa simulate` through the real process: a rerun appends, `--reset` starts over, and the
live workload prints a progress line on a schedule."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
from pathlib import Path

import asyncpg

from tests.integration.test_cli_failures import config, wfa


async def _counts(dsn: str) -> tuple[int, int, int, int]:
    """(executions, distinct ids, workflows, executions whose workflow is unknown)."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM workflow_executions) AS n, "
            "(SELECT count(DISTINCT id) FROM workflow_executions) AS ids, "
            "(SELECT count(*) FROM workflows) AS wfs, "
            "(SELECT count(*) FROM workflow_executions e WHERE NOT EXISTS "
            " (SELECT 1 FROM workflows w WHERE w.id = e.workflow_id)) AS orphans"
        )
        return row["n"], row["ids"], row["wfs"], row["orphans"]
    finally:
        await conn.close()


async def test_a_rerun_appends_and_reset_starts_over(tmp_path: Path, db_dsn: str) -> None:
    cfg = str(config(tmp_path, db_dsn))
    common = ("simulate", "--config", cfg, "--executions", "300", "--days", "7")
    first = await asyncio.to_thread(wfa, *common, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert await _counts(db_dsn) == (300, 300, 5, 0)

    again = await asyncio.to_thread(wfa, *common, "--seed", "7", "--workflows", "9", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "Traceback" not in again.stderr
    assert "appended to the 5 workflows already in the source" in again.stdout
    # the new executions join the workflows already there (no step the source does not know)
    assert await _counts(db_dsn) == (600, 600, 5, 0)

    third = await asyncio.to_thread(wfa, *common, cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert await _counts(db_dsn) == (900, 900, 5, 0)

    once = await asyncio.to_thread(wfa, *common, "--if-empty", cwd=tmp_path)
    assert once.returncode == 0 and "--if-empty: the source has executions" in once.stdout
    assert await _counts(db_dsn) == (900, 900, 5, 0)

    reset = await asyncio.to_thread(
        wfa, *common[:-4], "--executions", "50", "--days", "1", "--reset", cwd=tmp_path
    )
    assert reset.returncode == 0, reset.stderr
    assert "after removing 900 executions" in reset.stdout
    assert await _counts(db_dsn) == (50, 50, 5, 0)


def test_live_prints_progress_every_interval(tmp_path: Path, db_dsn: str) -> None:
    cfg = str(config(tmp_path, db_dsn))
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "simulate", "--config", cfg, "--live",
         "--rate", "50/s", "--tick", "0.2", "--duration", "3.5", "--report-every", "1"],
        cwd=tmp_path, capture_output=True, text=True, timeout=90,
    )
    took = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    lines = re.findall(
        r"^live: ([\d.]+) enrollments/s; ([\d,]+) enrolled, ([\d,]+) advanced, "
        r"([\d,]+) finished, ([\d,]+) running$",
        proc.stdout,
        re.M,
    )
    assert 3 <= len(lines) <= 4, proc.stdout
    enrolled = [int(x[1].replace(",", "")) for x in lines]
    assert enrolled == sorted(enrolled) and enrolled[-1] > 0, lines
    rates = [float(x[0]) for x in lines]
    assert 15 < sum(rates) / len(rates) < 150, (rates, took)
    advanced = [int(x[2].replace(",", "")) for x in lines]
    assert advanced == sorted(advanced) and advanced[-1] > 0, lines
