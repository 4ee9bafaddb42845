"""Reconcile's cost: `wfa reconcile` over a source and store that agree (nothing to heal).

The store is filled by SQL from the source with exactly the rows an ingest writes to
`wfa.executions` (reconcile reads only that table, the quarantine and the cursor), so the
figure does not wait on a full ingest. A second run after one row's `updated_at` was set back
shows the cost of healing one day.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from bench.common import Figure, cluster, markdown, peak_rss_mb, write_history
from exporter.config import config_from_dict
from exporter.service import ExporterService
from exporter.simulate.writer import create_source_schema

_MIRROR = """
INSERT INTO wfa.executions (execution_id, enrolled_at, tenant_id, workflow_id, contact_id,
       status, completed_at, converted_at, converted_in_window, exited_at, exit_reason,
       failed_at, current_step_id, attempts, source_updated_at)
SELECT id, enrolled_at, tenant_id, workflow_id, contact_id, status, completed_at, converted_at,
       converted_at IS NOT NULL, exited_at, exit_reason, NULL, current_step_id,
       ARRAY(SELECT concat_ws(chr(31), a->>'step_id', us(a->>'entered_at'), a->>'status',
                              coalesce(us(a->>'finished_at'), ''),
                              CASE WHEN a->>'error' IS NULL THEN '' ELSE '0' END)
               FROM jsonb_array_elements(step_progress) a),
       updated_at
  FROM workflow_executions"""


async def _prepare(dsn: str, executions: int) -> None:
    now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)
    cfg = config_from_dict({"source": {"dsn": dsn}, "store": {"backend": "postgres"}})
    svc = ExporterService(cfg)
    await svc.open()  # the wfa schema and this week's partitions
    try:
        assert svc.store and svc.backend
        async with svc.store.acquire() as st:
            await create_source_schema(st)
            await write_history(
                st, executions=executions, days=80, workflows=10, tenants=3, seed=1, now=now
            )
            lo = now - timedelta(days=80)  # every enrollment is within the last 80 days
            await svc.backend.prepare_write(st, {"executions": (lo, now)})
            await st.execute(
                "INSERT INTO wfa.workflows (workflow_id, tenant_id, name, source_updated_at) "
                "SELECT id, tenant_id, name, updated_at FROM workflows"
            )
            await st.execute(
                "CREATE FUNCTION pg_temp.us(t text) RETURNS text LANGUAGE sql AS "
                "$$ SELECT (extract(epoch FROM t::timestamptz) * 1000000)::bigint::text $$"
            )
            await st.execute(_MIRROR.replace("us(", "pg_temp.us("))
            await st.execute(
                "INSERT INTO wfa.cursors (name, updated_at, id) SELECT 'executions', "
                "updated_at, id FROM workflow_executions ORDER BY updated_at DESC, id DESC LIMIT 1"
            )
            await st.execute("VACUUM ANALYZE")
    finally:
        await svc.close()


def _reconcile(dsn: str) -> tuple[float, float, dict]:
    """Run `wfa reconcile` in its own process: (seconds, peak RSS MiB, its JSON)."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(f"source: {{dsn: '{dsn}'}}\nstore: {{backend: postgres}}\n")
    cmd = [sys.executable, "-m", "exporter", "reconcile", "--config", f.name]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0.0
    while proc.poll() is None:
        with contextlib.suppress(OSError, ValueError):
            peak = max(peak, peak_rss_mb(proc.pid))
        time.sleep(0.05)
    took = time.perf_counter() - started
    out, err = proc.communicate()
    Path(f.name).unlink()
    if proc.returncode:
        raise RuntimeError(f"reconcile failed: {err[-2000:]}")
    return took, peak, json.loads(out.strip().splitlines()[-1])


async def _set_back_one(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(
            "UPDATE workflow_executions SET updated_at = updated_at - interval '1 hour', "
            "status = 'exited', exited_at = updated_at, exit_reason = 'bench', "
            "current_step_id = NULL WHERE id = (SELECT id FROM workflow_executions "
            "WHERE status = 'active' ORDER BY id LIMIT 1)"
        )
    finally:
        await conn.close()


def run(executions: int, quick: bool = False) -> list[Figure]:
    """Measure one reconcile with nothing to heal, and one healing a single row."""
    scale = f"{executions:,} executions"
    with cluster(fast=quick) as c:
        c.create_database("wfa")
        dsn = c.dsn("wfa")
        asyncio.run(_prepare(dsn, executions))
        took, rss, clean = _reconcile(dsn)
        if clean["healed_total"] or clean["days_differing"]:
            raise RuntimeError(f"expected nothing to heal: {clean}")
        asyncio.run(_set_back_one(dsn))
        heal_took, _, healed = _reconcile(dsn)
        if healed["healed"] != {"set_back": 1}:
            raise RuntimeError(f"expected one healed row: {healed}")
    load = os.getloadavg()[0]
    return [
        Figure("reconcile", scale, f"nothing to heal, wall time ({clean['days_compared']} days; "
               f"load average {load:.1f})", took, "s", target="< 30 s"),
        Figure("reconcile", scale, "nothing to heal, peak RSS", rss, "MiB", target="< 100 MiB"),
        Figure("reconcile", scale, "one row set back, wall time (heals one day)", heal_took, "s"),
    ]


def main() -> None:
    """Command line: `python -m bench.bench_reconcile --executions 1000000`."""
    p = argparse.ArgumentParser()
    p.add_argument("--executions", type=int, nargs="+", default=[1_000_000])
    args = p.parse_args()
    figures = [f for n in args.executions for f in run(n)]
    print(markdown(figures))


if __name__ == "__main__":
    main()
