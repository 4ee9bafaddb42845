"""The demo's private PostgreSQL cluster: the system binaries, or the `pgserver` wheel."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Protocol, Self

SUPERUSER = "postgres"
FALLBACK_OS_USER = "wfa"
MANAGED_CONF = "wfa.conf"
SERVER_LOG = "server.log"
START_TIMEOUT_S = 60
_SOCKET_PATH_MAX = 100


SOURCE_DB = "wfa_source"
STORE_DB = "wfa_store"
"""The demo's two databases: the simulated application's and the analytics store."""


class DevDBError(RuntimeError):
    """Raised when the private cluster cannot be found, created, started or queried."""


class ClusterUnavailable(DevDBError):
    """Neither server binaries nor the `pgserver` wheel are installed."""


def version_key(path: Path) -> tuple[int, ...]:
    """Sort key for a ``/usr/lib/postgresql/<version>/bin`` directory."""
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def find_bindir() -> Path:
    """Return the directory holding ``initdb`` and ``pg_ctl`` (PATH first, then the newest)."""
    initdb = shutil.which("initdb")
    if initdb is not None:
        bindir = Path(initdb).resolve().parent
        if (bindir / "pg_ctl").exists():
            return bindir
        pg_ctl = shutil.which("pg_ctl")
        if pg_ctl is not None and Path(pg_ctl).resolve().parent == bindir:
            return bindir
    candidates = [
        p
        for p in Path("/usr/lib/postgresql").glob("*/bin")
        if (p / "initdb").exists() and (p / "pg_ctl").exists()
    ]
    if not candidates:
        raise DevDBError(
            "PostgreSQL server binaries not found: no initdb/pg_ctl on PATH or in "
            "/usr/lib/postgresql/*/bin (install the 'postgresql' package)"
        )
    return max(candidates, key=version_key)


def server_major_version(bindir: Path) -> str:
    """Return the major version of the server binaries in ``bindir`` (e.g. ``"15"``)."""
    out = subprocess.run(
        [str(bindir / "initdb"), "--version"], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if match is None:
        raise DevDBError(f"cannot parse the initdb version from {out!r}")
    return match.group(1)


def find_sharedir(bindir: Path) -> Path | None:
    """Return the share directory (with ``extension/``) matching the binaries in ``bindir``."""
    candidates: list[Path] = []
    pg_config = bindir / "pg_config"
    if pg_config.exists():
        res = subprocess.run([str(pg_config), "--sharedir"], capture_output=True, text=True)
        if res.returncode == 0 and res.stdout.strip():
            candidates.append(Path(res.stdout.strip()))
    candidates.append(Path("/usr/share/postgresql") / server_major_version(bindir))
    candidates.append(bindir.parent / "share" / "postgresql")
    candidates.append(bindir.parent / "share")
    for cand in candidates:
        if (cand / "extension" / "plpgsql.control").exists():
            return cand
    return None


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on ``host`` that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """Tell whether ``port`` can be bound on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def quote_ident(name: str) -> str:
    """Quote an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def _clean_env() -> dict[str, str]:
    """Return the process environment without libpq/PGDATA variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.setdefault("LC_ALL", "C")
    return env


def ensure_os_user() -> str:
    """Return an unprivileged OS user to run PostgreSQL as root, creating ``wfa`` if needed."""
    for name in (SUPERUSER, FALLBACK_OS_USER):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            FALLBACK_OS_USER,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return FALLBACK_OS_USER


class DevCluster:
    """A PostgreSQL cluster in ``datadir``, listening on 127.0.0.1, trust auth."""

    superuser = SUPERUSER

    def __init__(
        self,
        datadir: Path,
        port: int | None = None,
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.datadir = Path(datadir).absolute()
        self.requested_port = port
        self.port: int | None = port
        self.settings = dict(settings or {})
        """Extra server settings written into the managed config file."""
        self.bindir = find_bindir()
        self.sharedir = find_sharedir(self.bindir)
        self.timescaledb_control = (
            self.sharedir / "extension" / "timescaledb.control" if self.sharedir else None
        )
        self.has_timescaledb = bool(self.timescaledb_control and self.timescaledb_control.exists())
        self.timescaledb_reason = (
            ""
            if self.has_timescaledb
            else f"no {self.timescaledb_control or 'share/extension directory'} "
            f"for the server binaries in {self.bindir}"
        )
        self.os_user: str | None = ensure_os_user() if os.geteuid() == 0 else None
        self.socket_dir = self._choose_socket_dir()

    def __repr__(self) -> str:
        return f"DevCluster(datadir={str(self.datadir)!r}, port={self.port})"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def log_file(self) -> Path:
        """The server log written by ``pg_ctl -l``."""
        return self.datadir / SERVER_LOG

    def dsn(self, dbname: str = "postgres") -> str:
        """Return a libpq URL for ``dbname`` on this cluster."""
        if self.port is None:
            raise DevDBError("the cluster has no port yet; call start() first")
        return f"postgresql://{self.superuser}@127.0.0.1:{self.port}/{dbname}"

    def is_initialized(self) -> bool:
        """Tell whether ``datadir`` already holds a cluster."""
        return (self.datadir / "PG_VERSION").exists()

    def is_running(self) -> bool:
        """Tell whether a postmaster is running on ``datadir``."""
        if not self.is_initialized():
            return False
        res = self._run_pg(["pg_ctl", "-D", str(self.datadir), "status"], check=False)
        return res.returncode == 0

    def start(self) -> None:
        """Create the cluster if the data dir is new, then start it and wait until it is up."""
        if not self.is_initialized():
            self._initdb()
        self._prepare_dirs()
        if self.is_running():
            self.port = self._running_port()
            return
        attempts = 1 if self.requested_port is not None else 3
        for attempt in range(attempts):
            self.port = self._choose_port()
            self._write_conf()
            res = self._run_pg(
                [
                    "pg_ctl",
                    "-D",
                    str(self.datadir),
                    "-l",
                    str(self.log_file),
                    "-w",
                    "-t",
                    str(START_TIMEOUT_S),
                    "start",
                ],
                check=False,
            )
            if res.returncode == 0:
                return
            if attempt + 1 == attempts or "could not bind" not in self._log_tail():
                raise DevDBError(
                    f"pg_ctl start failed for {self.datadir} (exit {res.returncode}):\n"
                    f"{res.stdout}{res.stderr}\n--- {self.log_file} ---\n{self._log_tail()}"
                )

    def stop(self) -> None:
        """Stop the cluster (fast shutdown); do nothing if it is not running."""
        if self.is_running():
            self._run_pg(["pg_ctl", "-D", str(self.datadir), "-m", "fast", "-w", "stop"])

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        """Run ``sql`` (statements autocommit one by one) with psql; return tuples-only output."""
        psql = self.bindir / "psql"
        exe = str(psql) if psql.exists() else shutil.which("psql")
        if exe is None:
            raise DevDBError("psql not found next to the server binaries nor on PATH")
        res = subprocess.run(
            [
                exe,
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.dsn(dbname),
                "-f",
                "-",
            ],
            input=sql,
            capture_output=True,
            text=True,
            env=_clean_env(),
            check=False,
        )
        if res.returncode != 0:
            raise DevDBError(f"psql failed on {dbname!r}: {res.stderr.strip()}")
        return res.stdout

    def create_database(self, name: str, template: str | None = None) -> None:
        """Create database ``name``, optionally from ``template``."""
        sql = f"CREATE DATABASE {quote_ident(name)}"
        if template is None:
            self.psql(sql)
            return
        sql += f" TEMPLATE {quote_ident(template)}"
        # A session that just closed on the template may still be exiting on a busy machine.
        for _ in range(50):
            try:
                self.psql(sql)
                return
            except DevDBError as exc:
                if "is being accessed by other users" not in str(exc):
                    raise
                time.sleep(0.1)
        self.psql(sql)

    def database_exists(self, name: str) -> bool:
        """Tell whether database ``name`` exists."""
        literal = "'" + name.replace("'", "''") + "'"
        return self.psql(f"SELECT 1 FROM pg_database WHERE datname = {literal}").strip() == "1"

    def _choose_socket_dir(self) -> Path:
        """Pick the unix socket directory: ``<parent>/run``, or a short temp dir if too long."""
        preferred = self.datadir.parent / "run"
        if len(str(preferred / ".s.PGSQL.65535.lock")) <= _SOCKET_PATH_MAX:
            return preferred
        digest = hashlib.sha1(str(self.datadir).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"wfa-pg-{digest}"

    def _initdb(self) -> None:
        """Run initdb on a new (or empty) data dir."""
        self.datadir.mkdir(parents=True, exist_ok=True)
        self._prepare_dirs()
        self._run_pg(
            [
                "initdb",
                "-D",
                str(self.datadir),
                "--username",
                self.superuser,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-instructions",
            ]
        )
        conf = self.datadir / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as fh:
            fh.write(f"\ninclude_if_exists = '{MANAGED_CONF}'\n")

    def _prepare_dirs(self) -> None:
        """Create the socket dir and, as root, hand the data and socket dirs to the OS user."""
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.os_user is None:
            return
        entry = pwd.getpwnam(self.os_user)
        for path in (self.datadir, self.socket_dir):
            if path.stat().st_uid != entry.pw_uid:
                subprocess.run(
                    ["chown", "-R", f"{entry.pw_uid}:{entry.pw_gid}", str(path)], check=True
                )
        res = self._run(
            ["test", "-w", str(self.datadir), "-a", "-w", str(self.socket_dir)], check=False
        )
        if res.returncode != 0:
            raise DevDBError(
                f"user {self.os_user!r} cannot reach {self.datadir}; choose a data dir whose "
                "parent directories are searchable by other users (not under /root or a 0700 dir)"
            )

    def _choose_port(self) -> int:
        """Return the requested port, the previously used one if free, or a fresh free port."""
        if self.requested_port is not None:
            return self.requested_port
        previous = self._configured_port()
        if previous is not None and port_is_free(previous):
            return previous
        return free_port()

    def _configured_port(self) -> int | None:
        """Return the port recorded in the managed config file, if any."""
        conf = self.datadir / MANAGED_CONF
        if not conf.exists():
            return None
        match = re.search(r"^port\s*=\s*(\d+)", conf.read_text(encoding="utf-8"), re.M)
        return int(match.group(1)) if match else None

    def _running_port(self) -> int:
        """Return the port of the running postmaster from ``postmaster.pid``."""
        lines = (self.datadir / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        return int(lines[3])

    def _write_conf(self) -> None:
        """Write the managed settings file included by postgresql.conf."""
        settings: dict[str, str] = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.socket_dir}'",
            "max_connections": "200",
            "shared_buffers": "'256MB'",
            "log_min_messages": "warning",
            "logging_collector": "off",
        }
        settings.update(self.settings)
        if self.has_timescaledb:
            settings["shared_preload_libraries"] = "'timescaledb'"
            settings["timescaledb.telemetry_level"] = "off"
        body = "".join(f"{key} = {value}\n" for key, value in settings.items())
        path = self.datadir / MANAGED_CONF
        path.write_text(
            "# Managed by exporter.localdb; rewritten on every start.\n" + body, encoding="utf-8"
        )
        if self.os_user is not None:
            entry = pwd.getpwnam(self.os_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def _log_tail(self, lines: int = 30) -> str:
        """Return the last lines of the server log, or an empty string."""
        try:
            text = self.log_file.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _run_pg(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a server binary from ``bindir``, as the unprivileged OS user when root."""
        return self._run([str(self.bindir / argv[0]), *argv[1:]], check=check)

    def _run(self, argv: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` (through runuser/setpriv when root) from the data dir's parent."""
        cmd = list(argv)
        if self.os_user is not None:
            if shutil.which("runuser"):
                cmd = ["runuser", "-u", self.os_user, "--", *cmd]
            else:
                entry = pwd.getpwnam(self.os_user)
                cmd = [
                    "setpriv",
                    f"--reuid={entry.pw_uid}",
                    f"--regid={entry.pw_gid}",
                    "--init-groups",
                    "--",
                    *cmd,
                ]
        res = subprocess.run(
            cmd,
            capture_output=True,
            text=True,
            env=_clean_env(),
            cwd=self.datadir.parent,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise DevDBError(
                f"{' '.join(cmd)} failed (exit {res.returncode}):\n{res.stdout}{res.stderr}"
            )
        return res


# the demo's cluster ------------------------------------------------------------------------


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
            raise ClusterUnavailable(
                "no PostgreSQL server binaries (initdb, pg_ctl) and no pgserver: install the "
                "'postgresql' package, or `pip install 'workflow-analytics[demo]'`"
            ) from None
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
