"""`wfa run` as a process (serve, SIGTERM with an open stream); `wfa token create --config-line`."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest
import yaml

from exporter.api.auth import TokenTable
from exporter.cli import main
from exporter.config import config_from_dict
from tests.conftest import PgServer
from tests.integration.test_api_common import auth, store_db
from tests.kit.devdb import free_port


def test_token_create_prints_a_token_and_its_config_line(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The printed line is valid config that accepts exactly the printed token."""
    assert (
        main(["token", "create", "--config-line", "--tenant", "acme", "--scopes", "read,export"])
        == 0
    )
    out = capsys.readouterr().out
    token = out.splitlines()[0].removeprefix("token: ").strip()
    entry = yaml.safe_load(out.splitlines()[-1].strip())
    cfg = config_from_dict({"source": {"dsn": "postgresql://x/y"}, "api": {"tokens": entry}})
    table = TokenTable(cfg.api.tokens)
    principal = table.lookup(token)
    assert principal is not None and principal.tenant == "acme"
    assert principal.scopes == {"read", "export"}
    assert table.lookup(token + "x") is None
    assert main(["token", "create", "--config-line", "--tenant", "a", "--scopes", "root"]) == 2


async def test_wfa_run_serves_and_stops_cleanly_on_sigterm(pg: PgServer, tmp_path: Path) -> None:
    """Exporter and API in one process: ready, streaming, then SIGTERM ends it within bounds."""
    async with store_db(pg, executions=400, days=5, workflows=2) as store:
        port, mport = free_port(), free_port()
        cfg = {
            "source": {"dsn": store.dsn},
            "store": {"backend": "postgres"},
            "metrics": {"listen": f"127.0.0.1:{mport}"},
            "api": {
                "listen": f"127.0.0.1:{port}",
                "tokens": [t.model_dump(mode="json") for t in store.cfg.api.tokens],
            },
        }
        path = tmp_path / "wfa.yaml"
        path.write_text(json.dumps(cfg))
        log = (tmp_path / "wfa.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "run", "--config", str(path)], stderr=log
        )
        base = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as s:
                for _ in range(100):
                    try:
                        async with s.get(f"{base}/readyz") as r:
                            if r.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    assert proc.poll() is None, (tmp_path / "wfa.log").read_text()
                    await asyncio.sleep(0.2)
                async with s.get(f"{base}/api/v1/workflows", headers=auth("a_read")) as r:
                    assert r.status == 200
                    listed = [w["workflow_id"] for w in (await r.json())["workflows"]]
                    assert listed == sorted(store.workflows_of("tenant-1"))
                wid = listed[0]
                url = f"{base}/api/v1/workflows/{wid}/analytics/stream"
                async with s.get(url, headers=auth("a_read")) as stream:
                    assert stream.status == 200
                    seen = b""
                    while b"event: analytics" not in seen:
                        seen += await asyncio.wait_for(stream.content.readline(), 5)
                    t0 = time.monotonic()
                    proc.send_signal(signal.SIGTERM)
                    rest = await asyncio.wait_for(stream.content.read(), 10)
                    assert b"event: close" in rest
            code = await asyncio.to_thread(proc.wait, 15)
            assert code == 0
            assert time.monotonic() - t0 < 10
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
