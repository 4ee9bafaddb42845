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
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import yaml
from aiohttp import web
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from exporter.commands.common import setup_logging
from exporter.config import Config, config_from_dict
from exporter.config.schema import parse_listen
from exporter.db import connect
from exporter.service import ExporterService
from exporter.source.reader import quote_ident

if TYPE_CHECKING:
    from exporter.simulate.incident import Incident

log = logging.getLogger(__name__)

SOURCE_DB = "wfa_source"
STORE_DB = "wfa_store"
TENANT = "tenant-1"
SCOPES = ("read", "export", "admin")


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


def _incident(text: str) -> Incident:
    from exporter.simulate.incident import IncidentError, parse_incident

    try:
        return parse_incident(text)
    except IncidentError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# the database ------------------------------------------------------------------------------


class Cluster(Protocol):
    """What the demo needs from a PostgreSQL server it started."""

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for `dbname`."""
        ...

    def stop(self) -> None:
        """Stop the server, keeping its data."""
        ...


def _ensure_databases(create: Callable[[str], None], exists: Callable[[str], bool]) -> None:
    for name in (SOURCE_DB, STORE_DB):
        if not exists(name):
            create(name)


class EmbeddedCluster:
    """PostgreSQL from the `pgserver` wheel, for machines without server binaries."""

    def __init__(self, pgdata: Path) -> None:
        try:
            import pgserver  # type: ignore[import-not-found]
        except ImportError:
            print("no PostgreSQL server binaries: installing pgserver from PyPI", flush=True)
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", "pgserver"], check=True)
            import pgserver  # type: ignore[import-not-found]
        self.server = pgserver.get_server(str(pgdata), cleanup_mode="stop")

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for `dbname`."""
        return self.server.get_uri(dbname)

    def start(self) -> None:
        """Create the demo databases."""
        have = self.server.psql("SELECT datname FROM pg_database;")
        for name in (SOURCE_DB, STORE_DB):
            if name not in have:
                self.server.psql(f"CREATE DATABASE {name};")

    def stop(self) -> None:
        """Stop the server, keeping its data."""
        self.server.cleanup()


def open_cluster(root: Path) -> tuple[Cluster, str]:
    """Start the demo's cluster in `root`: system binaries when present, else pgserver."""
    from exporter.devdb import DevCluster, DevDBError, find_bindir

    try:
        find_bindir()
    except DevDBError:
        embedded = EmbeddedCluster(root / "pgdata-embedded")
        embedded.start()
        return embedded, "embedded PostgreSQL (pgserver)"
    cluster = DevCluster(root / "pgdata")
    cluster.start()
    _ensure_databases(cluster.create_database, cluster.database_exists)
    return cluster, f"PostgreSQL from {cluster.bindir}"


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
    from exporter.simulate.writer import create_source_schema, write

    s = cfg.source
    conn = await connect(s.dsn)
    try:
        await create_source_schema(conn, s.executions_table, s.workflows_table)
        table = quote_ident(s.executions_table)
        if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):
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


def bind(listen: str) -> socket.socket:
    """A listening socket on `listen`; another free port when that one is taken."""
    host, port = _host_port(listen)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family, backlog=1024)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE or port == 0:
            raise
        log.warning("%s is taken; using another port", listen)
        return socket.create_server((host, 0), family=family, backlog=1024)


def free_listen(listen: str) -> str:
    """`listen`, or the same host with a free port when that one is taken (or is 0)."""
    sock = bind(listen)
    try:
        host, port = sock.getsockname()[:2]
    finally:
        sock.close()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _host_port(listen: str) -> tuple[str, int]:
    if listen.endswith(":0"):
        return listen[:-2].strip("[]"), 0
    return parse_listen(listen)


def url_host(sock: socket.socket) -> str:
    """"host:port" of a bound socket, for URLs."""
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def api_app(cfg: Config, service: ExporterService) -> web.Application:
    """The API application over the exporter's store pool (the `wfa run` app)."""
    from exporter.api import ApiSettings, create_app

    assert service.store is not None
    return create_app(cfg, service.store, service, settings=ApiSettings(shutdown_grace=3.0))


# Prometheus --------------------------------------------------------------------------------


def prometheus_config(cfg: Config, metrics: str, listen: str, rules: Path) -> dict[str, Any]:
    """Prometheus for the demo, generated from its config: the exporter job, the rules."""
    from exporter.dashboards.scrape import prometheus_config as generated
    from exporter.dashboards.settings import Settings

    return generated(
        Settings.of(cfg), [metrics], [str(rules / "*.yml")], interval="5s", self_target=listen
    )


def write_rules(cfg: Config, directory: Path) -> Path:
    """The Prometheus rule files generated from the demo config, written into `directory`."""
    from exporter.dashboards import files
    from exporter.dashboards.settings import Settings

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


def banner(
    api: str, metrics: str, token: str, workflow: str, root: Path, prom: Prometheus | None,
    database: str, history: int, live: str, exports: bool = False,
) -> str:
    """What the demo prints once everything listens."""
    base = f"http://{api}/api/v1"
    kept = f"written: {history:,} executions" if history else "kept from the last run"
    wf = f"{base}/workflows/{workflow}/analytics"
    auth = '-H "Authorization: Bearer $TOKEN"'
    lines = [
        "",
        "workflow-analytics demo is running; Ctrl-C stops it (data is kept in "
        f"{root}).",
        f"  database    {database}",
        f"  history     {kept}",
        f"  live        {live}",
        f"  metrics     http://{metrics}/metrics",
        f"  API         {base}   (OpenAPI: {base}/openapi.json)",
    ]
    if prom is not None:
        lines.append(
            f"  Prometheus  http://{prom.listen}   (alerts: http://{prom.listen}/alerts; rules "
            f"generated into {prom.rules})"
        )
    lines += [
        f"  token       {token}",
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
        free_listen(args.prometheus_listen),
        metrics,
        root / "prometheus.log",
        cfg,
        write_rules(cfg, root / "rules"),
    )


class Stopped(Exception):
    """SIGINT or SIGTERM arrived while the demo was starting."""


async def _wait(stop: asyncio.Event, coro: Any) -> Any:
    """Await `coro` unless `stop` is set first (then cancel it and raise Stopped)."""
    task = asyncio.ensure_future(coro)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise Stopped
    return task.result()


async def run_demo(args: argparse.Namespace) -> int:
    """Start everything, print the banner, run until SIGINT/SIGTERM, stop everything."""
    from exporter.api.auth import new_token
    from exporter.metrics import attach_metrics
    from exporter.simulate.incident import IncidentError
    from exporter.simulate.live import open_live, parse_rate, run_live

    rate = parse_rate(args.rate)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    root = Path(args.dir).absolute()
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o755)
    started = time.monotonic()
    cluster: Cluster | None = None
    service: ExporterService | None = None
    scheduler: AsyncIOScheduler | None = None
    metrics = None
    runner: web.AppRunner | None = None
    prom: Prometheus | None = None
    live_task: asyncio.Task[int] | None = None
    live_conn = None
    live_stop = asyncio.Event()
    try:
        cluster, database = await asyncio.to_thread(open_cluster, root)
        if stop.is_set():
            raise Stopped
        token = new_token()
        api_sock = bind(args.api_listen)
        metrics_listen = free_listen(args.metrics_listen)
        api = url_host(api_sock)
        raw = demo_config(
            cluster.dsn(SOURCE_DB), cluster.dsn(STORE_DB), token, api, metrics_listen,
            root / "exports", args.poll_interval,
        )
        cfg = config_from_dict(raw)
        (root / "demo.yaml").write_text(
            "# Generated by `wfa demo`; valid while the demo's database runs.\n"
            + yaml.safe_dump(raw, sort_keys=False)
        )
        history = await _wait(
            stop, ensure_history(cfg, args.executions, args.days, args.workflows, args.seed)
        )

        service = ExporterService(cfg)
        await _wait(stop, service.open())
        scheduler = AsyncIOScheduler(timezone="UTC")
        service.start(scheduler)
        metrics = attach_metrics(service, scheduler, cfg)
        await metrics.start(metrics_listen)
        metrics_at = f"{metrics_listen.rsplit(':', 1)[0]}:{metrics.port}"
        app = api_app(cfg, service)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=3.0)
        await runner.setup()
        await web.SockSite(runner, api_sock).start()

        live_conn = await connect(cfg.source.dsn, application_name="wfa-demo-live")
        try:
            live = await open_live(
                live_conn,
                rate=rate,
                seed=args.seed,
                start=datetime.now(UTC),
                incidents=args.incident,
            )
        except IncidentError as exc:
            print(f"incident: {exc}", file=sys.stderr)
            return 1
        live_task = asyncio.create_task(
            run_live(live_conn, live, stop=live_stop, announce=_announce), name="wfa-demo-live"
        )
        scheduler.start()
        if history:
            print(f"ingesting {history:,} executions of history ...", flush=True)
        await _wait(stop, _first_poll(service))

        prom = _prometheus(args, root, metrics_at, cfg)
        if prom is not None:
            prom.start()
            await asyncio.sleep(0.5)
            if prom.proc is not None and prom.proc.poll() is not None:
                print(f"Prometheus exited at start; see {prom.log_path}", file=sys.stderr)
                prom.stop()
                prom = None
        workflow = next(
            (w.id for w in live.workflows if w.tenant_id == TENANT), live.workflows[0].id
        )
        live_text = (
            f"{rate:g} enrollments/s, {live.active:,} running executions resumed"
        )
        for inc in args.incident:
            live_text += f"\n              incident: {inc.describe()}"
        print(
            banner(
                api, metrics_at, token, workflow, root, prom, database, history, live_text,
                has_exports(app),
            ),
            flush=True,
        )
        print(f"ready in {time.monotonic() - started:.1f}s", flush=True)
        await _wait_any(stop, live_task)
        if live_task.done() and not live_task.cancelled() and live_task.exception():
            print(f"the live workload failed: {live_task.exception()}", file=sys.stderr)
            return 1
        return 0
    except Stopped:
        return 0
    finally:
        print("stopping ...", flush=True)
        live_stop.set()
        if live_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(live_task, 5)
        if live_conn is not None:
            with contextlib.suppress(Exception):
                await live_conn.close(timeout=3)
        if runner is not None:
            await runner.cleanup()
        if scheduler is not None and scheduler.running:
            scheduler.shutdown(wait=False)
        if metrics is not None:
            await metrics.stop()
        if service is not None:
            await _close(service)
        if prom is not None:
            await asyncio.to_thread(prom.stop)
        if cluster is not None:
            await asyncio.to_thread(cluster.stop)
        print(f"stopped; data kept in {root}", flush=True)


def _announce(line: str) -> None:
    """An incident starts or ends: say so on the demo's console."""
    print(f"{datetime.now(UTC):%H:%M:%S} {line}", flush=True)


async def _first_poll(service: ExporterService) -> None:
    """Return once a poll has caught up with the source (the API then answers)."""
    while service.state.last_success is None:
        await asyncio.sleep(0.2)


async def _wait_any(stop: asyncio.Event, task: asyncio.Task[Any]) -> None:
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()


async def _close(service: ExporterService, grace: float = 5.0) -> None:
    """Close the service's pools, terminating them if in-flight work outlasts `grace` s."""
    try:
        async with asyncio.timeout(grace):
            await service.close()
    except TimeoutError:
        for pool in (service.source, service.store):
            if pool is not None:
                pool.terminate()


def cmd_demo(args: argparse.Namespace) -> int:
    """Run the demo."""
    setup_logging(args.log_level)
    if logging.getLogger().level > logging.INFO:
        logging.getLogger("apscheduler").setLevel(logging.ERROR)
    os.environ.pop("WFA_CONFIG", None)
    return asyncio.run(run_demo(args))
