"""A PgBouncer in transaction pooling mode in front of the test server, started per test.

Debian's ``pgbouncer`` (1.18: no prepared statements in transaction mode). As root it runs as the
user the server's socket or the machine's PostgreSQL belongs to, since PgBouncer refuses root.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as(host: str) -> str | None:
    """The user PgBouncer runs as: None unless root."""
    if os.geteuid() != 0:
        return None
    if host.startswith("/"):
        return pwd.getpwuid(os.stat(host).st_uid).pw_name  # the embedded server's own user
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name).pw_name
        except KeyError:
            continue
    return None


@pytest.fixture
def pgbouncer(server_dsn: str) -> Iterator[Callable[[str], str]]:
    """pgbouncer(dsn) -> the same database's DSN through a transaction-pooling PgBouncer."""
    if not os.path.exists(PGBOUNCER):
        why = "no pgbouncer (apt-get install pgbouncer)"
        if os.environ.get("CI"):
            pytest.fail(f"the PgBouncer tests must run in CI: {why}")
        pytest.skip(why)
    server = conninfo_to_dict(server_dsn)
    host, port = str(server.get("host") or "127.0.0.1"), str(server.get("port") or "5432")
    user = _run_as(host)
    folder = Path(tempfile.mkdtemp(prefix="pgjobs-pgbouncer-"))
    listen = _free_port()
    (folder / "users.txt").write_text('"postgres" ""\n')
    (folder / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={host} port={port}
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {listen}
unix_socket_dir =
auth_type = trust
auth_file = {folder}/users.txt
pool_mode = transaction
max_client_conn = 500
default_pool_size = 10
logfile = {folder}/pgbouncer.log
pidfile = {folder}/pgbouncer.pid
"""
    )
    if user is not None:
        os.chmod(folder, 0o755)
        for p in (folder, *folder.iterdir()):
            shutil.chown(p, user)
    proc = subprocess.Popen(
        [PGBOUNCER, *(["-u", user] if user else []), str(folder / "pgbouncer.ini")],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", listen), timeout=1).close()
            break
        except OSError:
            log = folder / "pgbouncer.log"
            assert proc.poll() is None and time.monotonic() < deadline, (
                f"pgbouncer did not start: {log.read_text() if log.exists() else ''}"
            )
            time.sleep(0.05)

    def through(dsn: str) -> str:
        name = conninfo_to_dict(dsn)["dbname"]
        return make_conninfo(host="127.0.0.1", port=str(listen), user=str(server.get("user") or "postgres"),
                             dbname=str(name))  # fmt: skip

    yield through
    proc.terminate()
    proc.wait(timeout=10)
    shutil.rmtree(folder, ignore_errors=True)
