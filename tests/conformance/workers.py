"""The conformance suite's harness: workers of any language started from a command, as real processes.

A worker is a command template. The suite fills in its placeholders (``str.format`` on each word
after ``shlex.split``) and runs it from the repository root, with ``PGJOBS_CONFORMANCE_LOG`` set
to the directory its tasks log their runs to (see tasks.py):

- ``{dsn}``: the test database, as a ``postgresql://`` URL (libpq and node-postgres both read it);
- ``{queue}``: the queue to work, ``conformance``;
- ``{concurrency}``, ``{heart_rate}``, ``{shutdown_grace}``: what to run the worker with (the
  suite reads the heart rate back from the worker's row, so timings follow what it registered);
- ``{python}``, ``{root}``: this interpreter, the repository root.

The command must be the worker process itself (``exec`` it from a wrapper script): the suite finds
its row in ``pgjobs.workers`` by pid, and signals it.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote, urlencode

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

ROOT = Path(__file__).resolve().parents[2]
QUEUE = "conformance"
CONCURRENCY = 4
HEART_RATE = 1.0
SHUTDOWN_GRACE = 1.5
# What a noisy machine may add to a bound the docs promise (process start-up aside).
SLACK = 1.0

COMMANDS = {
    "python": (
        "{python} -m pgjobs worker tests.conformance.tasks --dsn {dsn} --queue {queue} --concurrency {concurrency}"
        " --heart-rate {heart_rate} --shutdown-grace {shutdown_grace} --reap-interval {heart_rate} --no-scheduler"
    ),
    "node": (
        "node examples/node/worker.js --tasks tests/conformance/tasks.js --dsn {dsn} --queue {queue}"
        " --concurrency {concurrency} --heart-rate {heart_rate} --shutdown-grace {shutdown_grace}"
        " --reap-interval {heart_rate}"
    ),
}
# A worker of your own: PGJOBS_CONFORMANCE_WORKER='./my-worker --dsn {dsn} --queue {queue} ...'.
CUSTOM = os.environ.get("PGJOBS_CONFORMANCE_WORKER")
if CUSTOM:
    COMMANDS["custom"] = CUSTOM


def require(kind: str) -> None:
    """Skip (fail under CI=true) when a kind of worker cannot run on this machine."""
    if kind != "node":
        return
    missing = None
    if shutil.which("node") is None:
        missing = "node is not installed"
    elif not (ROOT / "examples" / "node" / "node_modules" / "pg").is_dir():
        missing = "examples/node has no node_modules: run `npm ci --prefix examples/node`"
    if missing is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"the Node worker cannot run under CI: {missing}")
        pytest.skip(f"the Node worker cannot run here: {missing}")


def as_url(dsn: str) -> str:
    """A DSN in libpq's key=value form as a postgresql:// URL (a socket directory goes in ?host=)."""
    params = {k: v for k, v in conninfo_to_dict(dsn).items() if v is not None}
    host, port = str(params.pop("host", "")), params.pop("port", None)
    user, password = params.pop("user", None), params.pop("password", None)
    dbname = str(params.pop("dbname", ""))
    auth = ""
    if user:
        auth = quote(str(user), safe="") + (f":{quote(str(password), safe='')}" if password else "") + "@"
    netloc = "" if host.startswith("/") else host + (f":{port}" if port else "")
    if host.startswith("/"):
        params["host"] = host
        if port:
            params["port"] = port
    query = f"?{urlencode(params, quote_via=quote)}" if params else ""
    return f"postgresql://{auth}{netloc}/{quote(dbname, safe='')}{query}"


def query(dsn: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


def wait_until(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until predicate() is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not happen within {timeout} s")
        time.sleep(0.05)


def enqueue(dsn: str, *jobs: dict[str, Any]) -> list[int]:
    """Enqueue jobs on the conformance queue in one transaction (pgjobs.enqueue_many's JSON form)."""
    rows = query(
        dsn, "SELECT id FROM pgjobs.enqueue_many(%s) ORDER BY item", [Jsonb([{"queue": QUEUE, **j} for j in jobs])]
    )
    return [r["id"] for r in rows]


def jobs(dsn: str, ids: list[int]) -> dict[int, dict[str, Any]]:
    rows = query(dsn, "SELECT * FROM pgjobs.jobs WHERE id = ANY (%s)", [ids])
    return {r["id"]: r for r in rows}


def finished(dsn: str, ids: list[int]) -> bool:
    rows = query(
        dsn,
        "SELECT count(*) AS n FROM pgjobs.jobs WHERE id = ANY (%s) AND status IN ('complete', 'failed', 'aborted')",
        [ids],
    )
    return bool(rows[0]["n"] == len(ids))


@dataclass
class Run:
    """One run of a task, as its process logged it; ``end`` is None for a run that never ended."""

    job: int
    attempt: int
    pid: int
    start: float
    end: float | None = None
    how: str | None = None


def read_runs(log_dir: Path) -> list[Run]:
    runs: dict[tuple[int, int, int], Run] = {}
    for path in log_dir.glob("*.jsonl"):
        pid = int(path.stem)
        for line in path.read_text().splitlines():
            e = json.loads(line)
            key = (int(e["job"]), int(e["attempt"]), pid)
            if e["event"] == "start":
                assert key not in runs, f"job {key[0]} attempt {key[1]} started twice in process {pid}"
                runs[key] = Run(key[0], key[1], pid, float(e["t"]))
            else:
                runs[key].end, runs[key].how = float(e["t"]), e["how"]
    return sorted(runs.values(), key=lambda r: r.start)


def runs_by_job(log_dir: Path) -> dict[int, list[Run]]:
    by_job: dict[int, list[Run]] = defaultdict(list)
    for r in read_runs(log_dir):
        by_job[r.job].append(r)
    return by_job


class Worker:
    """A worker process of some kind, its output kept in a file so that it never blocks on a pipe."""

    def __init__(self, kind: str, dsn: str, log_dir: Path, concurrency: int) -> None:
        self.kind = kind
        self.dsn = dsn
        values = {
            "dsn": as_url(dsn), "queue": QUEUE, "concurrency": concurrency, "heart_rate": HEART_RATE,
            "shutdown_grace": SHUTDOWN_GRACE, "python": sys.executable, "root": ROOT,
        }  # fmt: skip
        self.command = [word.format(**values) for word in shlex.split(COMMANDS[kind])]
        self._out: IO[str] = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed by close()
        self.popen = subprocess.Popen(
            self.command,
            cwd=ROOT,
            env={**os.environ, "PGJOBS_CONFORMANCE_LOG": str(log_dir)},
            stdin=subprocess.DEVNULL,
            stdout=self._out,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.id = ""
        self.heart_rate = HEART_RATE

    @property
    def pid(self) -> int:
        return self.popen.pid

    def registered(self, timeout: float = 30) -> Worker:
        """Wait for this process's row in pgjobs.workers; note its id and heart rate."""

        def row() -> dict[str, Any] | None:
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.kind} worker exited with {self.popen.returncode}:\n{self.output()}")
            rows = query(
                self.dsn, "SELECT id, heart_rate FROM pgjobs.workers WHERE pid = %s AND status = 'running'", [self.pid]
            )
            return rows[0] if rows else None

        found = wait_until(row, timeout, f"the {self.kind} worker's registration")
        self.id, self.heart_rate = found["id"], found["heart_rate"]
        return self

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def stop(self, timeout: float = SHUTDOWN_GRACE + 15) -> None:
        """SIGTERM, and expect a clean exit."""
        self.signal(signal.SIGTERM)
        code = self.popen.wait(timeout=timeout)
        assert code == 0, f"{self.kind} worker exited with {code}:\n{self.output()}"

    def output(self) -> str:
        self._out.flush()
        self._out.seek(0)
        return self._out.read()

    def close(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()
        self._out.close()


@dataclass
class Fleet:
    """The workers of one test: started in turn from ``kinds`` (one kind, or several for a mixed run)."""

    dsn: str
    log_dir: Path
    kinds: list[str]
    workers: list[Worker] = field(default_factory=list)

    def start(self, concurrency: int = CONCURRENCY) -> Worker:
        w = Worker(self.kinds[len(self.workers) % len(self.kinds)], self.dsn, self.log_dir, concurrency)
        self.workers.append(w)
        return w

    def close(self) -> None:
        for w in self.workers:
            w.close()

    def outputs(self) -> str:
        return "\n".join(f"--- {w.kind} worker {w.pid}:\n{w.output()}" for w in self.workers)
