"""A throwaway Prometheus server on 127.0.0.1 for tests (the Debian `prometheus` binary)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from monitoring import files
from monitoring.scrape import exporter_job
from monitoring.settings import Settings

PROMETHEUS = shutil.which("prometheus")
ROOT = Path(__file__).resolve().parents[2]
RULES_DIR = ROOT / "provisioning/prometheus/rules"

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="prometheus not installed (Debian package prometheus; scripts/bootstrap.sh)",
)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rule_files(directory: Path, settings: Settings | None) -> list[Path]:
    """The shipped rule files, or those generated from `settings` into `directory`."""
    if settings is None:
        return sorted(RULES_DIR.glob("*.yml"))
    out = []
    for rel, text in files(settings).items():
        if rel.startswith("provisioning/prometheus/rules/"):
            path = directory / Path(rel).name
            path.write_text(text)
            out.append(path)
    return sorted(out)


class Prometheus:
    """A Prometheus server with an empty TSDB in a temporary directory."""

    def __init__(
        self,
        targets: list[str] | None = None,
        *,
        rules: bool = False,
        settings: Settings | None = None,
        interval: str = "1s",
    ):
        self.dir = Path(tempfile.mkdtemp(prefix="wfa-prom-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.settings = settings or Settings.defaults()
        config: dict[str, Any] = {
            "global": {"scrape_interval": interval, "evaluation_interval": interval},
            "scrape_configs": [],
        }
        if targets:
            config["scrape_configs"].append(exporter_job(self.settings, targets))
        if rules:
            config["rule_files"] = [str(p) for p in rule_files(self.dir, settings)]
        (self.dir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> Prometheus:
        assert PROMETHEUS is not None
        self.log = open(self.dir / "prometheus.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.dir / 'prometheus.yml'}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-admin-api",
                "--log.level=warn",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.http = aiohttp.ClientSession()
        for _ in range(300):
            if self.proc.poll() is not None:
                raise RuntimeError((self.dir / "prometheus.log").read_text())
            try:
                async with self.http.get(f"{self.url}/-/ready") as r:
                    if r.status == 200:
                        return self
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
        raise RuntimeError("prometheus did not become ready")

    async def __aexit__(self, *exc: object) -> None:
        await self.http.close()
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    async def query(self, expr: str, at: datetime | None = None) -> tuple[int, dict[str, Any]]:
        """(HTTP status, body) of an instant query (now, or at `at`)."""
        data = {"query": expr}
        if at is not None:
            data["time"] = f"{at.timestamp():.3f}"
        async with self.http.post(f"{self.url}/api/v1/query", data=data) as r:
            return r.status, await r.json()

    async def series(self, expr: str, at: datetime | None = None) -> list[dict[str, Any]]:
        """The result of an instant query that must succeed."""
        status, body = await self.query(expr, at)
        assert status == 200 and body["status"] == "success", (expr, body)
        return body["data"]["result"]

    async def values(self, expr: str, at: datetime | None = None) -> dict[frozenset, float]:
        """Instant query result as {labels: value} (one entry per series, names dropped)."""
        out = {}
        for s in await self.series(expr, at):
            labels = frozenset((k, v) for k, v in s["metric"].items() if k != "__name__")
            assert labels not in out, f"{expr}: two series with labels {dict(labels)}"
            out[labels] = float(s["value"][1])
        return out

    async def wait_for(self, expr: str, timeout: float = 60) -> list[dict[str, Any]]:
        """Wait until `expr` returns something; its result."""
        for _ in range(int(timeout * 5)):
            found = await self.series(expr)
            if found:
                return found
            await asyncio.sleep(0.2)
        raise AssertionError(f"timed out waiting for {expr}")

    async def alerts(self) -> list[dict[str, Any]]:
        """Active alerts (pending and firing)."""
        async with self.http.get(f"{self.url}/api/v1/alerts") as r:
            body = await r.json()
        return body["data"]["alerts"]

    async def rules(self) -> list[dict[str, Any]]:
        """Rule groups as Prometheus evaluates them."""
        async with self.http.get(f"{self.url}/api/v1/rules") as r:
            return (await r.json())["data"]["groups"]
