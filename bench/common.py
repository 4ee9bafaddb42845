"""Shared pieces of the benchmarks: figures, the Markdown table, a private cluster, RSS, CPU,
a simulated source history."""

from __future__ import annotations

import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from exporter.simulate.generate import generate
from exporter.simulate.model import SimWorkflow
from exporter.simulate.writer import write
from tests.kit.devdb import DevCluster

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True, slots=True)
class Figure:
    """One measured number, with the peer or the physical limit beside it when there is one."""

    benchmark: str
    scale: str
    metric: str
    ours: float
    unit: str
    peer: str = ""
    peer_value: float | None = None
    target: str = ""


def fmt(v: float | None) -> str:
    """A number with sensible precision."""
    if v is None:
        return "-"
    if abs(v) >= 100:
        return f"{v:,.0f}"
    if abs(v) >= 1:
        return f"{v:.2f}"
    return f"{v:.3f}"


def markdown(figures: list[Figure]) -> str:
    """The figures as one Markdown table."""
    lines = [
        "| benchmark | scale | metric | ours | beside it | target |",
        "|---|---|---|---|---|---|",
    ]
    for f in figures:
        beside = f"{f.peer}: {fmt(f.peer_value)} {f.unit}" if f.peer else ""
        lines.append(
            f"| {f.benchmark} | {f.scale} | {f.metric} | {fmt(f.ours)} {f.unit} | {beside} "
            f"| {f.target} |"
        )
    return "\n".join(lines)


def machine() -> str:
    """One line describing the machine the figures come from."""
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{cpu}, {os.cpu_count()} cores, {mem:.0f} GiB, Python {platform.python_version()}"


def loop_ms(iterations: int = 3_000_000) -> float:
    """Milliseconds of a fixed pure-Python loop, best of three: how fast the machine is now.

    Figures taken on the same machine at different times are comparable only when this is
    about the same (shared hosts drift by tens of percent within a day)."""
    best = math.inf
    for _ in range(3):
        began = time.perf_counter()
        total = 0
        for i in range(iterations):
            total += i
        best = min(best, time.perf_counter() - began)
    return best * 1000


def percentile(values: list[float], p: float) -> float:
    """The p-th percentile (0..100) by linear interpolation."""
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(p) - 1))]


@contextmanager
def cluster(fast: bool = False) -> Iterator[DevCluster]:
    """A private PostgreSQL cluster for one benchmark run, removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="wfa-bench-"))
    base.chmod(0o755)
    c = DevCluster(base / "data", fast=fast)
    c.start()
    try:
        yield c
    finally:
        c.stop()
        import shutil

        shutil.rmtree(base, ignore_errors=True)


def peak_rss_mb(pid: int) -> float:
    """Peak resident set size (VmHWM) of a running process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _stat(path: Path) -> list[str]:
    """The fields of a /proc/<pid>/stat file after the command name."""
    return path.read_text().rsplit(")", 1)[1].split()


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds used so far by one running process."""
    f = _stat(Path(f"/proc/{pid}/stat"))
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")


def pg_cpu_seconds(datadir: Path) -> float:
    """CPU seconds used so far by a PostgreSQL cluster: postmaster, reaped and live backends."""
    pid = int((datadir / "postmaster.pid").read_text().split()[0])
    f = _stat(Path(f"/proc/{pid}/stat"))
    total = sum(int(x) for x in f[11:15])  # utime, stime, cutime, cstime
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            g = _stat(d / "stat")
        except OSError:
            continue
        if int(g[1]) == pid:
            total += int(g[11]) + int(g[12])
    return total / os.sysconf("SC_CLK_TCK")


SLICE = 1_000_000
"""Executions generated and written at a time: 10M at once would hold ~10 GB in memory."""


async def write_history(
    conn: Any,
    *,
    executions: int,
    days: float,
    workflows: int,
    tenants: int,
    seed: int,
    now: datetime,
) -> list[SimWorkflow]:
    """Simulate `executions` enrolled over `days` and write them into the source a slice at a
    time (the first slice is what one `generate` call makes); the workflows."""
    given: tuple[SimWorkflow, ...] = ()
    for k, start in enumerate(range(0, executions, SLICE)):
        data = generate(
            executions=min(SLICE, executions - start), days=days, workflows=workflows,
            tenants=tenants, seed=seed + k, now=now, id_prefix="ex-" if k == 0 else f"ex-{k}-",
            given=given,
        )
        given = tuple(data.workflows)
        await write(conn, data)
        del data
    return list(given)
