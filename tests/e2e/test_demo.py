"""`make demo` end to end: serves a funnel with its token, the numbers move, SIGINT stops it all."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from exporter.localdb import find_bindir, find_sharedir
from tests.kit.devdb import DevCluster

REPO = Path(__file__).resolve().parents[2]
STARTUP_S = 120
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")


def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _enrollments(metrics_url: str) -> float:
    _, body = _get(metrics_url)
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith("wfa_workflow_enrollments_total{")
    )


def _session_pids(sid: int) -> list[int]:
    """Processes still in the demo's session (what a terminal's Ctrl-C would reach)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(entry.name))
    return out


def _pids_mentioning(text: str) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if text in cmdline and int(entry.name) != os.getpid():
            out.append(int(entry.name))
    return out


@pytest.fixture
def demo_dir() -> Iterator[Path]:
    """A state directory the unprivileged PostgreSQL user can reach."""
    base = Path(tempfile.mkdtemp(prefix="wfa-demo-test-"))
    base.chmod(0o755)
    try:
        yield base / "state"
    finally:
        if (base / "state" / "pgdata").exists():
            DevCluster(base / "state" / "pgdata").stop()
        shutil.rmtree(base, ignore_errors=True)


def _timescaledb_installed() -> bool:
    sharedir = find_sharedir(find_bindir())
    return bool(sharedir and (sharedir / "extension" / "timescaledb.control").exists())


def _start_demo(args: str) -> tuple[subprocess.Popen[str], str, float]:
    """`make demo` in its own session, read until its `ready in` line."""
    proc = subprocess.Popen(
        ["make", "--no-print-directory", "-C", str(REPO), "demo", f"DEMO_ARGS={args}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )
    assert proc.stdout is not None
    output = ""
    started = time.monotonic()
    for line in proc.stdout:
        output += line
        if line.startswith("ready in") or time.monotonic() - started > STARTUP_S:
            break
    return proc, output, started


def _stop_demo(proc: subprocess.Popen[str]) -> str:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        rest, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        rest, _ = proc.communicate()
    return rest


def test_make_demo(demo_dir: Path) -> None:
    """Started in the background it serves a funnel within its startup time; SIGINT stops all;
    the store is TimescaleDB wherever the extension is installed; a rerun keeps the token."""
    args = (
        f"--dir {demo_dir} --executions 2000 --rate 20/s --poll-interval 1s "
        "--api-listen 127.0.0.1:0 --metrics-listen 127.0.0.1:0 --prometheus-listen 127.0.0.1:0"
    )
    proc, output, started = _start_demo(args)
    try:
        assert "ready in" in output, output
        token = re.search(r"export TOKEN=(\S+)", output).group(1)
        funnel = re.search(r"'(http://\S+/analytics/funnel\?range=7d)'", output).group(1)
        metrics = re.search(r"(http://\S+/metrics)", output).group(1)
        backend = "timescaledb" if _timescaledb_installed() else "postgres"
        assert re.search(rf"^  store       {backend} \(\S.*\)$", output, re.M), output
        assert "docker compose --profile demo up" in output
        if "Prometheus  http://" in output:
            assert "workflow_step%3Awfa_funnel_step_conversion%3Aratio" in output
        assert (demo_dir / "token").read_text().strip() == token
        assert (demo_dir / "token").stat().st_mode & 0o077 == 0

        status, _ = _get(funnel)
        assert status == 401
        base = funnel.split("/workflows/")[0]
        status, body = _get(f"{base}/retention", token)
        assert status == 200 and json.loads(body)["backend"] == backend, body
        deadline = time.monotonic() + 60
        enrolled = 0
        while time.monotonic() < deadline and not enrolled:
            status, body = _get(funnel, token)
            assert status == 200, body
            enrolled = json.loads(body)["enrolled"]
            time.sleep(0.5)
        assert enrolled > 0
        assert time.monotonic() - started < STARTUP_S

        stream = re.search(r"'(http://\S+/analytics/stream)'", output).group(1)
        req = urllib.request.Request(stream, headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=20) as resp:
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            head = b""
            while b"event: analytics" not in head:
                head += resp.readline()
            assert json.loads(resp.readline().removeprefix(b"data: "))["workflow_id"]
        export = re.search(r"'(http://\S+/analytics/export\?\S+)'", output)
        if export:
            status, body = _get(export.group(1), token)
            assert status == 200, body
            assert body.count(b"\n") > 1 and b"," in body.splitlines()[0]

        first = 0.0
        while time.monotonic() < deadline and not first:
            first = _enrollments(metrics)
            time.sleep(0.5)
        moved = first
        while time.monotonic() < deadline and moved <= first:
            time.sleep(1)
            moved = _enrollments(metrics)
        assert moved > first > 0, "the live workload did not move the enrollment counters"
    finally:
        output += _stop_demo(proc)
    assert "stopped; data kept in" in output, output
    assert _session_pids(proc.pid) == []
    assert not (demo_dir / "pgdata" / "postmaster.pid").exists()
    assert _pids_mentioning(str(demo_dir)) == []
    assert (demo_dir / "pgdata" / "PG_VERSION").exists()

    proc, again, _ = _start_demo(args + " --no-prometheus")
    try:
        assert "ready in" in again, again
        assert "kept from the last run" in again
        assert f"export TOKEN={token}" in again and f"kept in {demo_dir / 'token'}" in again
        funnel = re.search(r"'(http://\S+/analytics/funnel\?range=7d)'", again).group(1)
        status, body = _get(funnel, token)
        assert status == 200, body
    finally:
        again += _stop_demo(proc)
    assert "stopped; data kept in" in again, again


def test_demo_refuses_a_short_token(tmp_path: Path) -> None:
    """`--token` is checked before anything starts: one line, exit 2, no state written."""
    wfa = REPO / ".venv" / "bin" / "wfa"
    if not wfa.exists():
        pytest.skip("the project's virtualenv is not bootstrapped")
    done = subprocess.run(
        [str(wfa), "demo", "--dir", str(tmp_path / "s"), "--token", "short"],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    assert "--token: must be at least 16 characters" in done.stderr, done.stderr
    assert not (tmp_path / "s").exists()
