"""Tokens kept in the store: `wfa token create / list / revoke` as processes, a real `wfa api`
refusing a revoked or expired token within 5 s (and ending its streams), config tokens
unaffected, bad scopes named, a stale token set refused."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg
import pytest
from aiohttp.test_utils import make_mocked_request

from exporter.api.auth import TokenTable, authenticate, token_digest
from exporter.api.errors import ProblemError
from exporter.api.tokenstore import StoredTokens, TokenStoreUnavailable
from tests.conftest import PgServer
from tests.integration.test_api_common import TOKENS, Store, auth, store_db
from tests.kit.devdb import free_port

REVOKE_BOUND_S = 5.0


async def wfa(*args: str, config: Path | None = None) -> tuple[int, str, str]:
    """Run `wfa ARGS` as a process; (exit code, stdout, stderr)."""
    cmd = [sys.executable, "-m", "exporter", *args]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def write_config(store: Store, path: Path, api_port: int) -> Path:
    """A config file over the store with the test tokens, the API on `api_port`."""
    cfg = {
        "source": {"dsn": store.dsn},
        "store": {"backend": "postgres"},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "api": {
            "listen": f"127.0.0.1:{api_port}",
            "tokens": [t.model_dump(mode="json") for t in store.cfg.api.tokens],
        },
    }
    path.write_text(json.dumps(cfg))
    return path


def created_token(stdout: str) -> str:
    """The secret printed by `wfa token create`."""
    first = stdout.splitlines()[0]
    assert first.startswith("token: wfa_"), stdout
    return first.removeprefix("token: ").strip()


@asynccontextmanager
async def api_process(config: Path, port: int, log: Path) -> AsyncIterator[str]:
    """A real `wfa api` process, ready; its base URL. SIGKILLed if still running at the end."""
    with log.open("w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "api", "--config", str(config)], stderr=err
        )
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as s:
            for _ in range(150):
                try:
                    async with s.get(f"{base}/readyz") as r:
                        if r.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                assert proc.poll() is None, log.read_text()
                await asyncio.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            await asyncio.to_thread(proc.wait, 10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def test_token_commands_store_the_digest_and_name_bad_input(
    pg: PgServer, tmp_path: Path
) -> None:
    """create stores only the hash and prints the secret once; list and revoke; bad input."""
    async with store_db(pg, executions=200, days=2, workflows=2) as store:
        cfg = write_config(store, tmp_path / "wfa.yaml", free_port())
        code, out, err = await wfa(
            "token", "create", "--tenant", "tenant-1", "--scopes", "read,export",
            "--name", "reports", "--expires", "90d", config=cfg,
        )
        assert code == 0, err
        secret = created_token(out)
        assert out.count(secret) == 1
        conn = await asyncpg.connect(store.dsn)
        try:
            row = await conn.fetchrow("SELECT * FROM wfa.api_tokens WHERE name = 'reports'")
            assert row["sha256"] == token_digest(secret) and row["tenant_id"] == "tenant-1"
            assert sorted(row["scopes"]) == ["export", "read"]
            left = row["expires_at"] - datetime.now(UTC)
            assert 89 * 86400 < left.total_seconds() <= 90 * 86400
            dump = json.dumps([dict(r) for r in await conn.fetch("SELECT * FROM wfa.api_tokens")],
                              default=str)
            assert secret not in dump and secret[4:] not in dump
            # the table refuses an operator token with a tenant's scopes even written directly
            with pytest.raises(asyncpg.CheckViolationError):
                await conn.execute(
                    "INSERT INTO wfa.api_tokens (name, tenant_id, scopes, sha256) "
                    "VALUES ('x', '*', '{read,admin}', $1)",
                    "0" * 64,
                )
        finally:
            await conn.close()

        # bad requests name what is wrong, and store nothing
        for args, needle in (
            (["--tenant", "tenant-1", "--scopes", "read,write"], "'write'"),
            (["--tenant", "tenant-1", "--scopes", "root,read"], "'root'"),
            (["--tenant", "*", "--scopes", "read,admin"], "only the admin scope"),
            (["--tenant", "tenant-*", "--scopes", "read"], "ambiguous"),
            (["--tenant", " ", "--scopes", "read"], "--tenant: must not be empty"),
            (["--tenant", "t", "--expires", "soon"], "--expires"),
            (["--tenant", "t", "--expires", "0s"], "--expires"),
        ):
            code, out, err = await wfa("token", "create", *args, config=cfg)
            assert code == 2 and needle in err and "token: wfa_" not in out, (args, err)
            assert "tenant must be set" not in err
        code, _, err = await wfa(
            "token", "create", "--tenant", "tenant-1", "--scopes", "read,write"
        )
        assert code == 2 and "--scopes: unknown scope 'write'" in err
        for name in ("reports", "a_read"):  # taken in the store / by a config token
            code, out, err = await wfa(
                "token", "create", "--tenant", "tenant-2", "--name", name, config=cfg
            )
            assert code == 1 and name in err and "token: wfa_" not in out, err
        code, out, err = await wfa(
            "token", "create", "--tenant", "*", "--scopes", "admin", config=cfg
        )
        assert code == 0, err

        code, out, err = await wfa("token", "list", "--json", config=cfg)
        assert code == 0, err
        rows = [json.loads(line) for line in out.splitlines()]
        by_name = {r["name"]: r for r in rows}
        assert by_name["reports"]["source"] == "store" and by_name["reports"]["status"] == "active"
        assert by_name["a_read"]["source"] == "config"
        assert any(r["tenant"] == "*" and r["scopes"] == ["admin"] for r in rows)
        assert secret not in out and token_digest(secret) not in out
        code, out, _ = await wfa("token", "list", config=cfg)
        assert code == 0 and out.splitlines()[0].split()[:3] == ["NAME", "TENANT", "SCOPES"]

        code, out, err = await wfa("token", "revoke", "reports", config=cfg)
        assert code == 0 and "revoked 'reports'" in out, err
        code, out, _ = await wfa("token", "list", "--json", config=cfg)
        assert {json.loads(x)["name"]: json.loads(x)["status"] for x in out.splitlines()}[
            "reports"
        ] == "revoked"
        code, _, err = await wfa("token", "revoke", "nobody", config=cfg)
        assert code == 1 and "no stored token" in err
        code, _, err = await wfa("token", "revoke", "a_read", config=cfg)
        assert code == 1 and "config token" in err


@pytest.mark.slow
async def test_a_running_api_refuses_a_revoked_token_within_5_s(
    pg: PgServer, tmp_path: Path
) -> None:
    """`wfa api` as a process: stored tokens work, revocation and expiry bite within 5 s."""
    async with store_db(pg, executions=300, days=3, workflows=2) as store:
        port = free_port()
        cfg = write_config(store, tmp_path / "wfa.yaml", port)
        async with api_process(cfg, port, tmp_path / "api.log") as base:
            # created while the API runs: usable within the reload interval
            code, out, err = await wfa(
                "token", "create", "--tenant", "tenant-1", "--scopes", "read",
                "--name", "dashboards", config=cfg,
            )
            assert code == 0, err
            secret = created_token(out)
            code, out, err = await wfa(
                "token", "create", "--tenant", "*", "--scopes", "admin", "--name", "ops",
                config=cfg,
            )
            operator = created_token(out)
            bearer = {"Authorization": f"Bearer {secret}"}
            wid = sorted(store.workflows_of("tenant-1"))[0]
            async with aiohttp.ClientSession() as s:

                async def status(headers: dict[str, str], path: str = "/api/v1/workflows") -> int:
                    async with s.get(base + path, headers=headers) as r:
                        return r.status

                ops = {"Authorization": f"Bearer {operator}"}
                deadline = time.monotonic() + REVOKE_BOUND_S
                while await status(bearer) != 200 or await status(ops, "/api/v1/retention") != 200:
                    assert time.monotonic() < deadline, "new tokens were not accepted in 5 s"
                    await asyncio.sleep(0.1)
                async with s.get(f"{base}/api/v1/workflows", headers=bearer) as r:
                    listed = [w["workflow_id"] for w in (await r.json())["workflows"]]
                assert listed == sorted(store.workflows_of("tenant-1"))
                assert await status(ops) == 403  # the operator reads no tenant's analytics

                url = f"{base}/api/v1/workflows/{wid}/analytics/stream"
                async with s.get(url, headers=bearer) as stream:
                    assert stream.status == 200
                    seen = b""
                    while b"event: analytics" not in seen:
                        seen += await asyncio.wait_for(stream.content.readline(), 10)
                    code, _, err = await wfa("token", "revoke", "dashboards", config=cfg)
                    assert code == 0, err
                    revoked = time.monotonic()
                    while await status(bearer) != 401:
                        assert time.monotonic() - revoked < REVOKE_BOUND_S, "still accepted"
                        await asyncio.sleep(0.1)
                    refused_after = time.monotonic() - revoked
                    rest = await asyncio.wait_for(
                        stream.content.read(), REVOKE_BOUND_S - refused_after + 0.5
                    )
                    assert b"event: close" in rest
                    ended_after = time.monotonic() - revoked
                assert refused_after < REVOKE_BOUND_S and ended_after < REVOKE_BOUND_S + 0.5
                print(f"revoked: refused after {refused_after:.2f} s, stream ended after "
                      f"{ended_after:.2f} s")
                assert await status(auth("a_read")) == 200, "config tokens keep working"

                # expiry: accepted, then refused once expired
                code, out, err = await wfa(
                    "token", "create", "--tenant", "tenant-2", "--expires", "4s", config=cfg
                )
                assert code == 0, err
                short = {"Authorization": f"Bearer {created_token(out)}"}
                created = time.monotonic()
                while await status(short) != 200:
                    assert time.monotonic() - created < 4, "the short token never worked"
                    await asyncio.sleep(0.1)
                await asyncio.sleep(max(0.0, 4.2 - (time.monotonic() - created)))
                assert await status(short) == 401


async def test_stale_token_set_is_refused_and_config_tokens_win(pg: PgServer) -> None:
    """Reloads failing for longer than the bound: stored tokens get 503; names are not stolen."""
    async with store_db(pg, executions=100, days=1, workflows=1) as store:
        conn = await asyncpg.connect(store.dsn)
        try:
            for name, tenant, digest in (
                ("fresh", "tenant-2", token_digest("wfa_fresh")),
                ("a_read", "tenant-2", token_digest("wfa_impostor")),  # a config token's name
                ("copy", "tenant-2", store.cfg.api.tokens[0].sha256),  # a config token's hash
            ):
                await conn.execute(
                    "INSERT INTO wfa.api_tokens (name, tenant_id, scopes, sha256) "
                    "VALUES ($1, $2, '{read}', $3)",
                    name,
                    tenant,
                    digest,
                )
        finally:
            await conn.close()
        pool = await asyncpg.create_pool(store.dsn, min_size=1, max_size=1)
        config_table = TokenTable(store.cfg.api.tokens)
        stored = StoredTokens(
            pool,
            interval=0.1,
            stale_after=0.5,
            reserved_names=config_table.config_names,
            reserved_digests=config_table.config_digests,
        )
        table = TokenTable(store.cfg.api.tokens, stored)
        await stored.start()
        try:
            fresh = table.lookup("wfa_fresh")
            assert fresh is not None and fresh.tenant == "tenant-2"
            assert table.lookup("wfa_impostor") is None
            first = store.cfg.api.tokens[0]
            principal = table.lookup(TOKENS[first.name][0])
            assert principal is not None and principal.tenant == first.tenant
            pool.terminate()
            await asyncio.sleep(0.8)
            with pytest.raises(TokenStoreUnavailable):
                table.lookup("wfa_fresh")
            request = make_mocked_request(
                "GET", "/", headers={"Authorization": "Bearer wfa_fresh"}
            )
            with pytest.raises(ProblemError) as exc:
                authenticate(request, table)
            assert exc.value.status == 503
            assert table.lookup("wfa_unknown") is None
        finally:
            await stored.stop()

