"""Failures a user causes, through the real `wfa` process: one line saying what to do, exit 1,
no traceback; `--debug` shows the traceback. Busy ports for every listener of every command."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.kit.devdb import free_port, replace_dbname

TIMEOUT_S = 90


def wfa(*args: str, cwd: Path, timeout: float = TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run `wfa ARGS` to its end; stdout and stderr as text."""
    env = {k: v for k, v in os.environ.items() if k != "WFA_CONFIG"}
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        cwd=cwd,
        env={**env, "PYTHONUNBUFFERED": "1"},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def config(tmp: Path, source: str, store: str | None = None, **sections: str) -> Path:
    """A config file: source and store DSNs, and extra sections as YAML flow mappings."""
    lines = [f"source: {{dsn: '{source}'}}"]
    store_opts = [f"dsn: '{store}'"] if store else []
    store_opts.append(sections.pop("store", "connect_retries: 0, connect_retry_delay: 100ms"))
    lines.append(f"store: {{{', '.join(store_opts)}}}")
    lines += [f"{k}: {{{v}}}" for k, v in sections.items()]
    path = tmp / "wfa.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def one_line(res: subprocess.CompletedProcess[str], command: str) -> str:
    """The failure's only stderr line, after checking exit 1 and no traceback."""
    assert res.returncode == 1, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    lines = [line for line in res.stderr.splitlines() if line.startswith(f"wfa {command}: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.fixture
def busy() -> Iterator[str]:
    """A 127.0.0.1 address another socket listens on."""
    with socket.create_server(("127.0.0.1", 0)) as sock:
        yield f"127.0.0.1:{sock.getsockname()[1]}"


def test_busy_api_port_is_one_line(tmp_path: Path, db_dsn: str, busy: str) -> None:
    cfg = config(tmp_path, db_dsn, api=f"listen: '{busy}'")
    res = wfa("api", "--config", str(cfg), cwd=tmp_path)
    assert one_line(res, "api") == f"wfa api: cannot listen on {busy} (api.listen): " \
        "address already in use"


def test_busy_metrics_port_of_the_exporter_is_one_line(
    tmp_path: Path, db_dsn: str, busy: str
) -> None:
    cfg = config(tmp_path, db_dsn, metrics=f"listen: '{busy}'")
    res = wfa("exporter", "--config", str(cfg), cwd=tmp_path)
    line = one_line(res, "exporter")
    assert line == f"wfa exporter: cannot listen on {busy} (metrics.listen): address already in use"


@pytest.mark.parametrize("which", ["api", "metrics"])
def test_busy_port_of_wfa_run_is_one_line(
    tmp_path: Path, db_dsn: str, busy: str, which: str
) -> None:
    free = f"127.0.0.1:{free_port()}"
    listens = {"api": free, "metrics": free}
    listens[which] = busy
    api, metrics = listens["api"], listens["metrics"]
    cfg = config(tmp_path, db_dsn, api=f"listen: '{api}'", metrics=f"listen: '{metrics}'")
    res = wfa("run", "--config", str(cfg), cwd=tmp_path)
    assert one_line(res, "run") == (
        f"wfa run: cannot listen on {busy} ({which}.listen): address already in use"
    )


def test_an_address_not_on_this_host_is_one_line(tmp_path: Path, db_dsn: str) -> None:
    cfg = config(tmp_path, db_dsn, api="listen: '192.0.2.1:8080'")
    line = one_line(wfa("api", "--config", str(cfg), cwd=tmp_path), "api")
    assert line.startswith("wfa api: cannot listen on 192.0.2.1:8080 (api.listen): ")
    assert "cannot assign requested address" in line


def test_debug_shows_the_traceback(tmp_path: Path, db_dsn: str, busy: str) -> None:
    cfg = config(tmp_path, db_dsn, api=f"listen: '{busy}'")
    res = wfa("--debug", "api", "--config", str(cfg), cwd=tmp_path)
    assert res.returncode == 1
    assert "Traceback" in res.stderr and "ListenError" in res.stderr
    assert "address already in use" in res.stderr


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        ("postgresql://u@127.0.0.1:notaport/x", "invalid DSN"),
        ("postgresql://u@127.0.0.1:5432/x?sslmode=bogus", "invalid DSN"),
    ],
)
def test_bad_dsn_is_one_line_for_one_shot_and_long_running_commands(
    tmp_path: Path, dsn: str, expected: str
) -> None:
    cfg = config(tmp_path, dsn, metrics=f"listen: '127.0.0.1:{free_port()}'")
    for command in (["migrate"], ["exporter", "--once"], ["exporter"], ["reconcile"]):
        res = wfa(*command, "--config", str(cfg), cwd=tmp_path)
        line = one_line(res, command[0])
        assert expected in line and "source.dsn and store.dsn" in line, line


def test_unreachable_database_for_one_shot_commands(tmp_path: Path) -> None:
    closed = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    cfg = config(tmp_path, closed)
    for command in (["migrate"], ["source", "init"], ["reconcile"], ["backfill"]):
        res = wfa(*command, "--config", str(cfg), cwd=tmp_path)
        line = one_line(res, command[0])
        assert "cannot reach the database" in line and "server is running" in line, line


def test_missing_database_is_one_line(tmp_path: Path, db_dsn: str) -> None:
    missing = replace_dbname(db_dsn, "no_such_db_here")
    res = wfa("migrate", "--config", str(config(tmp_path, missing)), cwd=tmp_path)
    line = one_line(res, "migrate")
    assert "no_such_db_here" in line and "check the database name" in line, line


def test_missing_schema_says_run_migrate(tmp_path: Path, db_dsn: str) -> None:
    cfg = config(tmp_path, db_dsn)
    out = tmp_path / "grafana"
    res = wfa(
        "grafana", "provision", "--config", str(cfg), "--tenant", "t1", "--org-id", "2",
        "--out", str(out), cwd=tmp_path,
    )
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr, res.stderr
    assert "run `wfa migrate`" in res.stderr, res.stderr


@pytest.mark.slow
def test_demo_listener_failure_is_one_line_and_stops_its_cluster(tmp_path: Path) -> None:
    """A taken demo port moves to a free one; an address not on this host is one line, and
    the private cluster the demo started is stopped again."""
    base = Path(tempfile.mkdtemp(prefix="wfa-cli-demo-"))
    base.chmod(0o755)  # the cluster runs as another user, who must reach it
    state = base / "state"
    try:
        res = wfa(
            "demo", "--dir", str(state), "--api-listen", "192.0.2.1:8080", "--no-prometheus",
            cwd=tmp_path, timeout=180,
        )
        line = one_line(res, "demo")
        assert line.startswith("wfa demo: cannot listen on 192.0.2.1:8080 (--api-listen): ")
        assert "stopped; data kept in" in res.stdout, res.stdout
        assert not (state / "pgdata" / "postmaster.pid").exists()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_check_config_lists_cross_checks_in_the_same_pass(tmp_path: Path) -> None:
    """One run names the schema problems and the cross-setting ones together, no traceback."""
    fixture = Path(__file__).parents[1] / "fixtures" / "configs"
    path = fixture / "broken_cross_checks_same_section.yaml"
    expected = [
        line.removeprefix("# expect: ")
        for line in path.read_text().splitlines()
        if line.startswith("# expect: ")
    ]
    res = wfa("check-config", "--config", str(path), cwd=tmp_path)
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr
    reported = [line.strip() for line in res.stderr.splitlines()[1:]]
    assert sorted(reported) == sorted(expected), res.stderr
    assert any(p.startswith("api.listen: conflicts") for p in reported)
