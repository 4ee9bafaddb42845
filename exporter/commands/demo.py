"""Subcommand: demo — a private PostgreSQL, 30 days of history, a live workload, the exporter,
the API and /metrics in one process (and Prometheus with the shipped rules when installed).

Everything lives under one directory (default `.wfa`): the database cluster in `pgdata`,
Prometheus data in `prometheus`, the generated config in `demo.yaml`. Ctrl-C stops every
process the demo started and keeps that directory, so the next run starts where this one
stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncpg
import yaml
from aiohttp import web

from exporter.api import ApiSettings
from exporter.api.server import ApiServer
from exporter.commands.common import setup_logging
from exporter.commands.parts import add_api, add_exporter, add_metrics
from exporter.config import Config, config_from_dict
from exporter.db import connect
from exporter.localdb import SOURCE_DB, STORE_DB, Cluster, open_cluster
from exporter.metrics import MetricsServer
from exporter.runtime import ListenError, Runtime, StartupFailed, Stopped, bind, url_host
from exporter.service import ExporterService

if TYPE_CHECKING:
    from exporter.simulate.incident import Incident

log = logging.getLogger(__name__)

TENANT = "tenant-1"
SCOPES = ("read", "export", "admin")
MIN_TOKEN_CHARS = 16
"""Shortest `--token` the demo accepts."""
DEMO_GRACE_S = 5.0
"""How long the demo's shutdown waits for each part."""


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `demo` subcommand."""
    p = sub.add_parser(
        "demo",
        help="run a self-contained demo: database, history, live workload, exporter, API",
    )
    p.add_argument("--dir", default=".wfa", help="state directory, kept across runs")
    p.add_argument("--executions", type=int, default=30_000, help="history size (first run)")
    p.add_argument("--days", type=float, default=30.0, help="history length in days")
    p.add_argument("--workflows", type=int, default=5)
    p.add_argument("--rate", default="5/s", help="live enrollments: 5/s, 300/m, 5000/h")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--token",
        type=_token,
        help="API token of the demo (default: the one kept in DIR/token, made on the first run)",
    )
    p.add_argument("--api-listen", default="127.0.0.1:8080", help="API address (port 0: any)")
    p.add_argument("--metrics-listen", default="127.0.0.1:9464", help="/metrics address")
    p.add_argument("--prometheus-listen", default="127.0.0.1:9090")
    p.add_argument("--no-prometheus", action="store_true", help="do not start Prometheus")
    p.add_argument("--poll-interval", default="2s", help="exporter poll interval")
    p.add_argument("--log-level", default="WARNING")
    p.add_argument(
        "--incident",
        type=_incident,
        action="append",
        default=[],
        metavar="SPEC",
        help="stage an incident in the live workload so that an alert fires, e.g. "
        "'workflow=wf-01,step=3,dropoff=0.8,after=2m,for=10m' (failure=0.6 or slowdown=10 "
        "instead of dropoff=; repeatable; see `wfa simulate --help`)",
    )
    p.set_defaults(func=cmd_demo)


def _token(text: str) -> str:
    token = text.strip()
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise argparse.ArgumentTypeError(
            f"must be at least {MIN_TOKEN_CHARS} characters without spaces"
        )
    return token


def _incident(text: str) -> Incident:
    from exporter.simulate.incident import IncidentError, parse_incident

    try:
        return parse_incident(text)
    except IncidentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# the database ------------------------------------------------------------------------------


# config and history ------------------------------------------------------------------------


DEMO_MONITORING: dict[str, Any] = {
    "dropoff": {"window": "1h", "for": "1m"},
    "dropoff_jump": {"window": "1h", "for": "1m"},
    "failure": {"ratio": 0.25, "window": "5m", "for": "1m"},
    "slowdown": {"window": "5m", "for": "1m"},
}
"""Alerts of the demo: short windows and `for`, so that a staged incident fires in minutes (and
a failure ratio the simulator's webhooks do not reach on their own in five minutes)."""


def demo_config(
    source: str, store: str, token: str, api: str, metrics: str, exports: Path, poll: str
) -> dict[str, Any]:
    """The demo's configuration (the token is stored as its SHA-256 only)."""
    from exporter.api.auth import token_digest

    return {
        "source": {"dsn": source},
        "store": {"dsn": store, "backend": "auto", "pool_max_size": 8},
        "exporter": {"poll_interval": poll, "refresh_interval": "10s", "overlap": "30s"},
        "metrics": {"listen": metrics, "snapshot_interval": "5s"},
        "monitoring": {**DEMO_MONITORING, "runbook_url": f"http://{metrics}/runbook/{{alert}}"},
        "api": {
            "listen": api,
            "tokens": [
                {
                    "name": "demo",
                    "sha256": token_digest(token),
                    "tenant": TENANT,
                    "scopes": list(SCOPES),
                }
            ],
        },
        "exports": {"directory": str(exports)},
    }


async def ensure_history(
    cfg: Config, executions: int, days: float, workflows: int, seed: int
) -> int:
    """Create the source tables and write the history when they are empty; rows written."""
    from exporter.simulate.generate import generate
    from exporter.simulate.writer import create_source_schema, has_executions, write

    s = cfg.source
    conn = await connect(s.dsn)
    try:
        await create_source_schema(conn, s.executions_table, s.workflows_table)
        if await has_executions(conn, s.executions_table):
            return 0
        now = datetime.now(UTC).replace(microsecond=0)
        data = await asyncio.to_thread(
            generate,
            executions=executions,
            days=days,
            workflows=workflows,
            tenants=2,
            seed=seed,
            now=now,
        )
        async with conn.transaction():
            await write(
                conn, data, executions_table=s.executions_table, workflows_table=s.workflows_table
            )
        return len(data.executions)
    finally:
        await conn.close()


# listening ---------------------------------------------------------------------------------


def bind_or_other(listen: str, what: str) -> socket.socket:
    """A listening socket on `listen`; another free port of the same host when it is taken."""
    try:
        return bind(listen, what)
    except ListenError as exc:
        cause = exc.__cause__
        taken = isinstance(cause, OSError) and cause.errno == errno.EADDRINUSE
        if not taken or listen.endswith(":0"):
            raise
        log.warning("%s is taken; using another port", listen)
        return bind(f"{listen.rsplit(':', 1)[0]}:0", what)


def free_listen(listen: str, what: str) -> str:
    """`listen`, or the same host with a free port when that one is taken (or is 0)."""
    sock = bind_or_other(listen, what)
    try:
        return url_host(sock)
    finally:
        sock.close()


# Prometheus --------------------------------------------------------------------------------


def prometheus_config(cfg: Config, metrics: str, listen: str, rules: Path) -> dict[str, Any]:
    """Prometheus for the demo, generated from its config: the exporter job, the rules."""
    from monitoring.scrape import prometheus_config as generated
    from monitoring.settings import Settings

    return generated(
        Settings.of(cfg), [metrics], [str(rules / "*.yml")], interval="5s", self_target=listen
    )


def write_rules(cfg: Config, directory: Path) -> Path:
    """The Prometheus rule files generated from the demo config, written into `directory`."""
    from monitoring import files
    from monitoring.settings import Settings

    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.yml"):
        old.unlink()
    for rel, text in files(Settings.of(cfg)).items():
        if rel.startswith("provisioning/prometheus/rules/"):
            (directory / Path(rel).name).write_text(text, encoding="utf-8")
    return directory


@dataclass
class Prometheus:
    """A `prometheus` child process with a generated config; stopped with the demo."""

    binary: str
    data: Path
    listen: str
    metrics: str
    log_path: Path
    cfg: Config
    rules: Path
    proc: subprocess.Popen[bytes] | None = None
    _tmp: Path | None = field(default=None, repr=False)

    def start(self) -> None:
        """Write the config to a temporary directory and start Prometheus."""
        self._tmp = Path(tempfile.mkdtemp(prefix="wfa-demo-prometheus-"))
        conf = self._tmp / "prometheus.yml"
        conf.write_text(
            yaml.safe_dump(prometheus_config(self.cfg, self.metrics, self.listen, self.rules))
        )
        self.data.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    self.binary,
                    f"--config.file={conf}",
                    f"--storage.tsdb.path={self.data}",
                    f"--web.listen-address={self.listen}",
                    "--log.level=warn",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def stop(self, timeout: float = 15.0) -> None:
        """Terminate Prometheus (kill it after `timeout` s) and remove the generated config."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


# the demo ----------------------------------------------------------------------------------


def demo_token(root: Path, given: str | None) -> tuple[str, str]:
    """The demo's token and where it came from: `--token`, else `root/token` (made once)."""
    from exporter.api.auth import new_token

    path = root / "token"
    kept = path.read_text().strip() if path.is_file() else ""
    if given is not None:
        token, origin = given, f"--token, kept in {path}"
    elif kept:
        return kept, f"kept in {path}"
    else:
        token, origin = new_token(), f"new, kept in {path}"
    path.write_text(token + "\n")
    path.chmod(0o600)
    return token, origin


def graph_url(prom: str, expr: str) -> str:
    """Prometheus's graph page showing `expr` over the last hour."""
    from urllib.parse import quote

    return f"http://{prom}/graph?g0.expr={quote(expr)}&g0.tab=0&g0.range_input=1h"


FUNNEL_RULE = "workflow_step:wfa_funnel_step_conversion:ratio"
"""The recording rule the banner shows on Prometheus (the funnel dashboard's main series)."""


@dataclass(frozen=True)
class Where:
    """What the banner names: addresses, the token and the store's backend."""

    api: str
    metrics: str
    token: str
    token_origin: str
    workflow: str
    backend: str
    backend_reason: str


def banner(
    where: Where, root: Path, prom: Prometheus | None,
    database: str, history: int, live: str, exports: bool = False,
) -> str:
    """What the demo prints once everything listens."""
    api, metrics, token, workflow = where.api, where.metrics, where.token, where.workflow
    base = f"http://{api}/api/v1"
    kept = f"written: {history:,} executions" if history else "kept from the last run"
    wf = f"{base}/workflows/{workflow}/analytics"
    auth = '-H "Authorization: Bearer $TOKEN"'
    lines = [
        "",
        "workflow-analytics demo is running; Ctrl-C stops it (data is kept in "
        f"{root}).",
        f"  database    {database}",
        f"  store       {where.backend} ({where.backend_reason})",
        f"  history     {kept}",
        f"  live        {live}",
        f"  metrics     http://{metrics}/metrics",
        f"  API         {base}   (OpenAPI: {base}/openapi.json)",
    ]
    if prom is not None:
        lines += [
            f"  Prometheus  http://{prom.listen}   (alerts: http://{prom.listen}/alerts; rules "
            f"generated into {prom.rules})",
            f"  funnel      {graph_url(prom.listen, FUNNEL_RULE)}",
        ]
    lines += [
        "  dashboards  Grafana is not part of the demo; `docker compose --profile demo up` runs "
        "the whole",
        "              stack with the dashboards on http://localhost:3000",
        f"  token       {token}   ({where.token_origin}; --token sets another)",
        f"              (tenant {TENANT}, scopes {', '.join(SCOPES)}; config {root / 'demo.yaml'})",
        "",
        "Try:",
        f"  export TOKEN={token}",
        f"  curl -s {auth} '{base}/workflows'",
        f"  curl -s {auth} '{wf}/funnel?range=7d'",
        f"  curl -s {auth} '{wf}/actions?range=24h'",
        f"  curl -s {auth} '{wf}?range=30d&granularity=day'",
    ]
    if exports:
        lines.append(f"  curl -s {auth} '{wf}/export?format=csv&dataset=actions&range=7d'")
    lines += [
        f"  curl -N {auth} '{wf}/stream'",
        f"  curl -s http://{metrics}/metrics | grep wfa_workflow_enrollments_total",
        "",
    ]
    return "\n".join(lines)


def has_exports(app: web.Application) -> bool:
    """Whether the API serves streamed exports."""
    from exporter.api import API_PREFIX

    route = f"{API_PREFIX}/workflows/{{workflow_id}}/analytics/export"
    return any(r.canonical == route for r in app.router.resources())


def _prometheus(
    args: argparse.Namespace, root: Path, metrics: str, cfg: Config
) -> Prometheus | None:
    binary = None if args.no_prometheus else shutil.which("prometheus")
    if binary is None:
        return None
    return Prometheus(
        binary,
        root / "prometheus",
        free_listen(args.prometheus_listen, "--prometheus-listen"),
        metrics,
        root / "prometheus.log",
        cfg,
        write_rules(cfg, root / "rules"),
    )


async def run_demo(args: argparse.Namespace) -> int:
    """Start everything, print the banner, run until SIGINT/SIGTERM, stop everything."""
    root = Path(args.dir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    demo = Demo(args, root, Runtime(grace=DEMO_GRACE_S))
    demo.rt.on_startup("cluster", demo.start_cluster)
    return await demo.rt.run(demo.main)


@dataclass
class Demo:
    """The demo's parts, added to its runtime once the cluster tells where the databases are."""

    args: argparse.Namespace
    root: Path
    rt: Runtime
    started: float = field(default_factory=time.monotonic)
    cfg: Config | None = None
    token: str = ""
    token_origin: str = ""
    database: str = ""
    history: int = 0
    service: ExporterService | None = None
    metrics: MetricsServer | None = None
    api: Callable[[], ApiServer | None] = lambda: None
    live: LiveWorkload | None = None

    async def start_cluster(self) -> None:
        """Start the private cluster (stopped last), then add every other part."""
        self.token, self.token_origin = demo_token(self.root, self.args.token)
        cluster, self.database = await asyncio.to_thread(open_cluster, self.root)

        async def stop_cluster() -> None:
            await asyncio.to_thread(cluster.stop)
            print(f"stopped; data kept in {self.root}", flush=True)

        self.rt.on_shutdown("cluster", stop_cluster)
        self._add_parts(cluster)

    def _add_parts(self, cluster: Cluster) -> None:
        args, rt = self.args, self.rt
        api_sock = bind_or_other(args.api_listen, "--api-listen")
        metrics_listen = free_listen(args.metrics_listen, "--metrics-listen")
        raw = demo_config(
            cluster.dsn(SOURCE_DB), cluster.dsn(STORE_DB), self.token, url_host(api_sock),
            metrics_listen, self.root / "exports", args.poll_interval,
        )
        cfg = self.cfg = config_from_dict(raw)
        (self.root / "demo.yaml").write_text(
            "# Generated by `wfa demo`; valid while the demo's database runs.\n"
            + yaml.safe_dump(raw, sort_keys=False)
        )
        rt.on_startup("history", self._history)
        self.service = add_exporter(rt, cfg, wait_for_store=False)
        self.metrics = add_metrics(rt, self.service, cfg, metrics_listen)
        service = self.service
        self.api = add_api(
            rt, cfg, lambda: service.store, service, ApiSettings(shutdown_grace=3.0),
            api_sock, access_log=False,
        )
        live = self.live = LiveWorkload(cfg, args)
        rt.on_startup("live workload", live.start)
        rt.on_shutdown("live workload", live.stop)

        async def stopping() -> None:
            print("stopping ...", flush=True)

        rt.on_shutdown("demo", stopping)

    async def _history(self) -> None:
        assert self.cfg is not None
        a = self.args
        self.history = await ensure_history(self.cfg, a.executions, a.days, a.workflows, a.seed)

    async def main(self) -> int:
        """Wait for the first poll, start Prometheus, print the banner, run until stopped."""
        assert self.cfg and self.service and self.metrics and self.live
        rt, live = self.rt, self.live
        if self.history:
            print(f"ingesting {self.history:,} executions of history ...", flush=True)
        try:
            await rt.until_stopped(_first_poll(self.service))
        except Stopped:
            return 0
        metrics_at = f"{self.cfg.metrics.listen.rsplit(':', 1)[0]}:{self.metrics.port}"
        prom = _prometheus(self.args, self.root, metrics_at, self.cfg)
        if prom is not None:
            prom.start()
            rt.on_shutdown("Prometheus", lambda: asyncio.to_thread(prom.stop))
            await asyncio.sleep(0.5)
            if prom.proc is not None and prom.proc.poll() is not None:
                print(f"Prometheus exited at start; see {prom.log_path}", file=sys.stderr)
                prom = None
        server = self.api()
        assert server is not None and live.state is not None
        workflow = next(
            (w.id for w in live.state.workflows if w.tenant_id == TENANT),
            live.state.workflows[0].id,
        )
        live_text = f"{live.rate:g} enrollments/s, {live.state.active:,} running executions resumed"
        for inc in self.args.incident:
            live_text += f"\n              incident: {inc.describe()}"
        backend = self.service.backend
        assert backend is not None
        where = Where(
            server.address, metrics_at, self.token, self.token_origin, workflow,
            backend.name, backend.reason,
        )
        print(
            banner(
                where, self.root, prom, self.database, self.history, live_text,
                has_exports(server.app),
            ),
            flush=True,
        )
        print(f"ready in {time.monotonic() - self.started:.1f}s", flush=True)
        return await live.wait(rt.stop)


class LiveWorkload:
    """The simulated application: enrollments and progress written to the source database."""

    def __init__(self, cfg: Config, args: argparse.Namespace) -> None:
        from exporter.simulate.live import parse_rate

        self.cfg = cfg
        self.args = args
        self.rate = parse_rate(args.rate)
        self.state: Any = None
        self._conn: asyncpg.Connection | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[int] | None = None

    async def start(self) -> None:
        """Resume the running executions and start writing (a bad incident stops the demo)."""
        from exporter.simulate.incident import IncidentError
        from exporter.simulate.live import open_live, run_live

        self._conn = await connect(self.cfg.source.dsn, application_name="wfa-demo-live")
        try:
            self.state = await open_live(
                self._conn,
                rate=self.rate,
                seed=self.args.seed,
                start=datetime.now(UTC),
                incidents=self.args.incident,
            )
        except IncidentError as exc:
            raise StartupFailed(f"incident: {exc}") from None
        # Not a runtime task: it is stopped gently (its tick finishes) by `stop`.
        self._task = asyncio.create_task(
            run_live(self._conn, self.state, stop=self._stop, announce=_announce),
            name="wfa-demo-live",
        )

    async def wait(self, stop: asyncio.Event) -> int:
        """Until `stop`, or the workload failed (exit 1)."""
        assert self._task is not None
        waiter = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({waiter, self._task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        task = self._task
        if task.done() and not task.cancelled() and task.exception():
            print(f"the live workload failed: {task.exception()}", file=sys.stderr)
            return 1
        return 0

    async def stop(self) -> None:
        """Let the workload finish its tick, then close its connection."""
        self._stop.set()
        if self._task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(self._task, 5)
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close(timeout=3)


def _announce(line: str) -> None:
    """An incident starts or ends: say so on the demo's console."""
    print(f"{datetime.now(UTC):%H:%M:%S} {line}", flush=True)


async def _first_poll(service: ExporterService) -> None:
    """Return once a poll has caught up with the source (the API then answers)."""
    while service.state.last_success is None:
        await asyncio.sleep(0.2)


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    setup_logging(args.log_level)
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
    os.environ.pop("WFA_CONFIG", None)
    return asyncio.run(run_demo(args))
