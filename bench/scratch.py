"""For a benchmark run: a scratch database (created on the server, migrated, dropped afterwards),
worker processes on it, and the wait for its jobs."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgjobs


@contextlib.contextmanager
def scratch_database(server: str, label: str) -> Iterator[str]:
    """A fresh database named after label and this process on the server of that DSN, with the
    pgjobs schema of the pgjobs this process imports; yields its DSN."""
    name = f"pgjobs_{label}_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(server, dbname=name)
    try:
        pgjobs.migrate(dsn)
        yield dsn
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@contextlib.contextmanager
def workers(dsn: str, module: Path, queue: str, concurrency: int, logs: Path, n: int = 2) -> Iterator[None]:
    """n `pgjobs worker` processes on the tasks of that module file (importable from its directory),
    their logs in logs/worker<i>.log; stopped with SIGTERM on the way out."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(module.parent), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "pgjobs", "worker", module.stem, "--dsn", dsn, "-q", queue, "-c", str(concurrency)]
    with contextlib.ExitStack() as stack:
        outs = [stack.enter_context(open(logs / f"worker{i}.log", "w")) for i in range(n)]
        processes = [subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=out) for out in outs]
        try:
            yield
        finally:
            for p in processes:
                p.terminate()
            for p in processes:
                p.wait(30)


def wait_all_complete(dsn: str, timeout: float, poll: float = 0.2) -> None:
    """Until every job of the database is complete, or timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while time.monotonic() < deadline:
            if conn.execute("SELECT count(*) FROM pgjobs.jobs WHERE status <> 'complete'").fetchone() == (0,):
                return
            time.sleep(poll)
