"""A soak: are jobs stranded, run twice or fenced when workers are starved of CPU or their clocks are off?

Each run gets a fresh database on the server of --dsn (CREATE DATABASE, then `pgjobs migrate --dsn`),
two real `pgjobs worker` processes on this file's task (`--heart-rate 0.5 --reap-interval 0.5 -c 8`),
and --jobs short sync jobs (a wait of 5-20 ms each) enqueued with enqueue_many, as a user does:

- load: 4 CPU-bound processes (pure Python busy loops) run beside the workers for 20 s; the jobs
  are enqueued a second after they start (default 1,000 jobs);
- skew: no CPU hogs; one worker's wall clock runs 2 h ahead and the other's 2 h behind, under
  libfaketime with the monotonic clock left alone (default 300 jobs);
- blocked: 300 jobs, and among them 6 async tasks that block their worker's event loop for 1.5 s
  each (a blocking call in an async def, a common mistake): 3 heart rates without a turn of the loop.

Every run of the task appends a start line and an end line to its worker's file, so that a job run
more than once is counted however the database recorded it. A run ends once every job is finished
(and the CPU hogs are done), or 60 s after the last job finished: a stranded job never does. Per run:
fences (worker log lines "no heartbeat went through"), jobs run more than once (of which: runs that
overlapped, and jobs run again after a run that had done its work), jobs still active or aborting
at the end (stranded), jobs failed, and the seconds from the enqueue to the last job finished.

    .venv/bin/python bench/stranding.py [--dsn DSN] [--scenario load|skew] [--runs 3] [--jobs N]
                                        [--spread SECONDS] [--keep-logs DIR] [--libfaketime PATH]

--spread enqueues the jobs in batches every half second over that many seconds instead of at once
(1,000 jobs drain in about 2 s even under load, a tenth of the hogs' 20 s).

Run it as a file (not `python -m bench.stranding` from the checkout, which would put the checkout's
pgjobs first): this script and its workers import pgjobs the way Python finds it, PYTHONPATH first,
so `PYTHONPATH=/tmp/before` measures the copy there; the first lines name the pgjobs each imports.
skew needs libfaketime (`apt-get install faketime`).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

import pgjobs

HERE = Path(__file__).resolve().parent
MODULE = Path(__file__).stem  # the workers import this file as their tasks module
RUNS_FILE = "STRANDING_RUNS_FILE"  # where a worker's runs of the task are appended

# ------------------------------------------------------------------------------------------------
# The task, as the workers run it
# ------------------------------------------------------------------------------------------------
_runs_fd = (
    os.open(os.environ[RUNS_FILE], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if RUNS_FILE in os.environ else None
)


def _note(kind: str, job: pgjobs.Job, outcome: str = "-") -> None:
    # One write(2) of one short line to a file opened O_APPEND: lines of concurrent runs never mix.
    # The monotonic clock is the machine's, whatever libfaketime does to a worker's wall clock.
    if _runs_fd is not None:
        line = f"{kind} {job.id} {job.attempts} {os.getpid()} {time.monotonic():.6f} {outcome}\n"
        os.write(_runs_fd, line.encode())


@pgjobs.task(name="stranding.work", pass_job=True)
def work(job: pgjobs.Job, ms: float) -> None:
    """Wait ms milliseconds; a start line before, an end line after: "ok", or the exception that
    ended the run (JobCancelled: the worker stopped it).

    An Event's wait, not time.sleep: under libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1,
    Python 3.11's time.sleep (clock_nanosleep on CLOCK_MONOTONIC, TIMER_ABSTIME) fails at once
    with EINVAL (wolfcw/libfaketime#426). Both block in C, so a stop lands once the wait is over.
    A stop can still land between two lines of Python here (right after the start line is written,
    say): such a run has no end line, and is counted apart."""
    outcome = "ok"
    try:
        _note("S", job)
        threading.Event().wait(ms / 1000)
    except BaseException as exc:
        outcome = type(exc).__name__
        raise
    finally:
        _note("E", job, outcome)


@pgjobs.task(name="stranding.block", pass_job=True)
async def block(job: pgjobs.Job, seconds: float) -> None:
    """Block the worker's event loop for that many seconds, as a blocking call in an async task does."""
    _note("S", job)
    threading.Event().wait(seconds)
    _note("E", job, "ok")


# ------------------------------------------------------------------------------------------------
# Scenarios and what a run found
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Scenario:
    jobs: int
    hogs: int = 0  # CPU-bound processes beside the workers
    hog_seconds: float = 0.0
    clocks: tuple[str | None, ...] = (None, None)  # each worker's FAKETIME offset (None: the real clock)
    blockers: int = 0  # jobs among the others that block their worker's event loop
    block_seconds: float = 0.0


SCENARIOS = {
    "load": Scenario(jobs=1000, hogs=4, hog_seconds=20.0),
    "skew": Scenario(jobs=300, clocks=("+2h", "-2h")),
    "blocked": Scenario(jobs=300, blockers=6, block_seconds=1.5),
}
WORKER_OPTIONS = ["--heart-rate", "0.5", "--reap-interval", "0.5", "-c", "8"]
STALL = 60.0  # seconds after the last job finished before a run is given up on
HOG = """\
import time
end = time.monotonic() + {seconds}
n = 0
while time.monotonic() < end:
    for _ in range(10000):
        n += 1
"""
LIBFAKETIME = [
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
    "/usr/local/lib/faketime/libfaketime.so.1",
]
FINAL = ("complete", "failed", "aborted")
# Log lines worth quoting: fences, lost runs, reaper resets, outages and errors.
NOTABLE = ("no heartbeat went through", "heartbeats go through again", "workers dead", "no longer ours",
           "no longer this worker's", "unavailable", "available again", " ERROR ", "forgotten")  # fmt: skip
REAPER_LINE = re.compile(r"reaper: (\d+) killed, (\d+) workers dead, (\d+) jobs reset")


@dataclass
class Result:
    index: int
    seconds: float | None = None  # enqueue -> last job finished; None: not every job finished
    waited: float = 0.0  # enqueue -> end of the run
    status: Counter[str] = field(default_factory=Counter)
    retried: int = 0  # jobs whose attempts went past 1 (as the database counts them)
    stranded: list[dict[str, Any]] = field(default_factory=list)
    fences: list[int] = field(default_factory=list)  # per worker
    log: Counter[str] = field(default_factory=Counter)
    runs: int = 0
    more_than_once: int = 0
    overlapped: int = 0
    redone: int = 0  # run again after a run that had finished its work ("ok")
    unended: int = 0  # runs with a start line and no end line (a stop landed outside the try)
    never_ran: int = 0
    exits: list[str] = field(default_factory=list)  # workers that exited during the run
    notes: list[str] = field(default_factory=list)  # interesting log lines, for the report

    @property
    def fenced(self) -> int:
        return sum(self.fences)

    def line(self, scenario: str, runs: int, jobs: int) -> str:
        drained = (
            f"drained in {self.seconds:.1f} s" if self.seconds is not None else f"NOT drained ({self.waited:.0f} s)"
        )
        extra = [
            f"{k} {v}" for k, v in sorted(self.log.items()) if v and k not in ("fence", "fence lifted", "given up")
        ]
        return (
            f"{scenario} run {self.index}/{runs}: {jobs} jobs {drained}; fences {self.fenced} "
            f"({'+'.join(map(str, self.fences))}), lifted {self.log['fence lifted']}, runs given up "
            f"{self.log['given up']}; run more than once {self.more_than_once} (overlapping {self.overlapped}, "
            f"after a finished run {self.redone}); runs without an end line {self.unended}; "
            f"stranded {len(self.stranded)}; failed {self.status['failed']}; retried {self.retried}; "
            f"left queued {self.status['queued']}; never ran {self.never_ran}"
            + (f"; {', '.join(extra)}" if extra else "")
            + (f"; workers exited: {', '.join(self.exits)}" if self.exits else "")
        )


# ------------------------------------------------------------------------------------------------
# Processes
# ------------------------------------------------------------------------------------------------
def pgjobs_command() -> str:
    beside = Path(sys.executable).with_name("pgjobs")  # the venv's, not resolved through its symlink
    found = str(beside) if beside.exists() else shutil.which("pgjobs")
    if found is None:
        raise SystemExit("no `pgjobs` command next to this python or on PATH")
    return found


def worker_env(runs_file: Path | None, clock: str | None, libfaketime: str | None) -> dict[str, str]:
    env = dict(os.environ)
    # This file's directory last: PYTHONPATH's own entries (the pgjobs being measured) stay first.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(HERE)) if p)
    if runs_file is not None:
        env[RUNS_FILE] = str(runs_file)
    if clock is not None:
        assert libfaketime is not None
        env.update(LD_PRELOAD=libfaketime, FAKETIME=clock, FAKETIME_DONT_FAKE_MONOTONIC="1")
    return env


def shown(env: dict[str, str], command: list[str]) -> str:
    keys = ("PYTHONPATH", "LD_PRELOAD", "FAKETIME", "FAKETIME_DONT_FAKE_MONOTONIC")
    return " ".join([*(f"{k}={env[k]}" for k in keys if k in env), *command])


def check_imports(libfaketime: str | None, clocks: tuple[str | None, ...]) -> None:
    """Say which pgjobs this script and its workers import; check each worker's clocks. (-P: like
    the `pgjobs` command, whose sys.path starts with its own directory, not the current one.)"""
    print(f"this script imports {pgjobs.__file__}", file=sys.stderr)
    probe = (
        f"import time, pgjobs, {MODULE}; "
        "print(pgjobs.__file__, time.time(), time.monotonic(), sep='\\n')"
    )  # fmt: skip
    for i, clock in enumerate(clocks):
        wall, mono = time.time(), time.monotonic()
        out = subprocess.run([sys.executable, "-P", "-c", probe], env=worker_env(None, clock, libfaketime),
                             capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
        wall_off, mono_off = float(out[1]) - wall, float(out[2]) - mono
        print(f"worker {i} imports {out[0]}; wall clock {wall_off:+.0f} s, monotonic {mono_off:+.1f} s"
              + (f" (FAKETIME={clock})" if clock else ""), file=sys.stderr)  # fmt: skip
        if clock is not None:
            sign, hours = (1 if clock[0] == "+" else -1), float(clock[1:].rstrip("h"))
            if abs(wall_off - sign * hours * 3600) > 60 or abs(mono_off) > 5:
                raise SystemExit(f"libfaketime did not shift worker {i}'s clocks as asked ({clock})")


def start_workers(dsn: str, directory: Path, scenario: Scenario, libfaketime: str | None,
                  show: bool) -> list[subprocess.Popen[bytes]]:  # fmt: skip
    workers = []
    for i, clock in enumerate(scenario.clocks):
        env = worker_env(directory / f"runs-{i}.txt", clock, libfaketime)
        command = [pgjobs_command(), "--log-level", "info", "worker", MODULE, "--dsn", dsn, *WORKER_OPTIONS]
        if show:
            print(f"worker {i}: {shown(env, command).replace(dsn, repr(pgjobs.redact(dsn)))}", file=sys.stderr)
        with open(directory / f"worker-{i}.log", "wb") as log:
            # A session of their own: a Ctrl-C reaches this script alone, which stops them.
            workers.append(subprocess.Popen(command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True))  # fmt: skip
    return workers


def stop(processes: list[subprocess.Popen[bytes]], grace: float) -> None:
    """SIGTERM (a worker finishes its runs), then SIGTERM again (it exits at once), then SIGKILL."""
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        alive = [p for p in processes if p.poll() is None]
        if not alive:
            return
        for p in alive:
            with contextlib.suppress(ProcessLookupError):
                p.send_signal(signum)
        deadline = time.monotonic() + wait
        for p in alive:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(timeout=max(0.0, deadline - time.monotonic()))


# ------------------------------------------------------------------------------------------------
# A run
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def fresh_database(server: str, name: str) -> Iterator[str]:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(server, dbname=name)
    try:
        migrated = subprocess.run([pgjobs_command(), "migrate", "--dsn", dsn], env=worker_env(None, None, None),
                                  capture_output=True, text=True)  # fmt: skip
        if migrated.returncode != 0:
            raise RuntimeError(f"pgjobs migrate failed:\n{migrated.stdout}{migrated.stderr}")
        yield dsn
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def wait_registered(dsn: str, workers: list[subprocess.Popen[bytes]]) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        deadline = time.monotonic() + 60
        query = "SELECT count(*) FROM pgjobs.workers WHERE status = 'running'"
        while conn.execute(query).fetchone() != (len(workers),):
            if any(w.poll() is not None for w in workers) or time.monotonic() > deadline:
                raise RuntimeError("the workers did not start (see their logs with --keep-logs)")
            time.sleep(0.1)


def status_counts(conn: psycopg.Connection[Any]) -> Counter[str]:
    return Counter(dict(conn.execute("SELECT status::text, count(*) FROM pgjobs.jobs GROUP BY 1").fetchall()))


def one_run(server: str, name: str, index: int, scenario: Scenario, jobs: int, spread: float,
            libfaketime: str | None, keep: Path | None, label: str) -> Result:  # fmt: skip
    result = Result(index)
    directory = Path(tempfile.mkdtemp(prefix="stranding-"))
    workers: list[subprocess.Popen[bytes]] = []
    hogs: list[subprocess.Popen[bytes]] = []
    try:
        with fresh_database(server, name) as dsn:
            try:
                workers = start_workers(dsn, directory, scenario, libfaketime, show=index == 1)
                wait_registered(dsn, workers)
                hogs = [subprocess.Popen([sys.executable, "-c", HOG.format(seconds=scenario.hog_seconds)],
                                         start_new_session=True) for _ in range(scenario.hogs)]  # fmt: skip
                busy_until = time.monotonic() + scenario.hog_seconds
                if hogs:
                    time.sleep(1.0)  # the load is on before the jobs come
                rng = random.Random(index)
                requests = [work.job(ms=round(rng.uniform(5, 20), 1)) for _ in range(jobs)]
                for k in range(scenario.blockers):  # spread among the others
                    requests.insert((k + 1) * len(requests) // (scenario.blockers + 1),
                                    block.job(seconds=scenario.block_seconds))  # fmt: skip
                ids = watch(dsn, workers, requests, spread, busy_until, result)
                with psycopg.connect(dsn, autocommit=True) as conn:
                    result.status = status_counts(conn)
                    result.retried = conn.execute("SELECT count(*) FROM pgjobs.jobs WHERE attempts > 1").fetchone()[0]  # type: ignore[index]
                    cur = conn.cursor(row_factory=dict_row)
                    result.stranded = cur.execute(
                        """SELECT j.id, j.status::text, j.attempts, j.worker_id, w.status::text AS worker_status,
                                  round(extract(epoch FROM now() - j.started_at)::numeric, 1) AS started_ago,
                                  round(extract(epoch FROM now() - j.touched_at)::numeric, 1) AS touched_ago
                           FROM pgjobs.jobs j LEFT JOIN pgjobs.workers w ON w.id = j.worker_id
                           WHERE j.status IN ('active', 'aborting') ORDER BY j.id"""
                    ).fetchall()
            finally:
                stop(hogs, 0.0)
                stop(workers, 40.0)
        read_logs(directory, len(scenario.clocks), result)
        read_runs(directory, len(scenario.clocks), set(ids), result)
        return result
    finally:
        stop(hogs, 0.0)
        stop(workers, 5.0)
        if keep is not None:
            shutil.copytree(directory, keep / label, dirs_exist_ok=True)
        shutil.rmtree(directory, ignore_errors=True)


def watch(dsn: str, workers: list[subprocess.Popen[bytes]], requests: list[Any], spread: float, busy_until: float,
          result: Result) -> list[int]:  # fmt: skip
    """Enqueue the jobs (at once, or in batches every half second over `spread` seconds), then
    watch them until every one is finished and the hogs are done, or for STALL seconds after the
    last one finished. Returns the ids of the jobs."""
    jobs, ids = len(requests), []
    batches = max(1, min(jobs, int(spread / 0.5)))
    started = finished_at = time.monotonic()
    due = [(started + k * 0.5, requests[k * jobs // batches : (k + 1) * jobs // batches]) for k in range(batches)]
    finished = 0
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            while due and due[0][0] <= time.monotonic():
                with conn.transaction():
                    ids += pgjobs.enqueue_many(due.pop(0)[1], conn=conn)
            counts = status_counts(conn)
            now = time.monotonic()
            done = sum(counts[s] for s in FINAL)
            if done > finished:
                finished, finished_at = done, now
                if done >= jobs and result.seconds is None:
                    result.seconds = now - started
            for i, w in enumerate(workers):
                if w.poll() is not None and not any(e.startswith(f"{i} ") for e in result.exits):
                    result.exits.append(f"{i} (status {w.returncode})")
            if (done >= jobs and now >= busy_until) or (not due and now - finished_at > STALL):
                result.waited = now - started
                return ids
            time.sleep(0.1)


def read_logs(directory: Path, workers: int, result: Result) -> None:
    patterns = {
        "fence": "no heartbeat went through",
        "fence lifted": "heartbeats go through again",
        "given up": "given up after",
        "lost": "no longer this worker's run",
        "not ours": "no longer ours",
        "outage": "database unavailable",
        "forgotten": "was forgotten by the database",
        "reaper lease taken": "now runs the reaper",
        "errors": " ERROR ",
        "tracebacks": "Traceback",
    }
    for i in range(workers):
        text = (directory / f"worker-{i}.log").read_text(errors="replace").splitlines()
        result.fences.append(sum("no heartbeat went through" in ln for ln in text))
        for ln in text:
            for key, needle in patterns.items():
                if needle in ln:
                    result.log[key] += 1
            m = REAPER_LINE.search(ln)
            if m:
                result.log["reaper killed"] += int(m[1])
                result.log["reaper: workers dead"] += int(m[2])
                result.log["reaper: jobs reset"] += int(m[3])
            if any(n in ln for n in NOTABLE) and not (m and m[2] == m[3] == "0"):
                result.notes.append(f"w{i}: {ln}")


def read_runs(directory: Path, workers: int, ids: set[int], result: Result) -> None:
    """Pair each run's start and end lines (by job, attempt and process) and look for jobs run twice.
    Two runs overlap when one starts before another's end line; a run without an end line counts as
    ended at its start (it was stopped right there, or its thread was abandoned: see `unended`)."""
    runs: dict[int, list[list[Any]]] = defaultdict(list)  # job -> [attempt, pid, start, end, outcome]
    for i in range(workers):
        path = directory / f"runs-{i}.txt"
        if not path.exists():
            continue
        for ln in path.read_text().splitlines():
            kind, job, attempt, pid, at, outcome = ln.split()
            if kind == "S":
                runs[int(job)].append([int(attempt), int(pid), float(at), None, "none"])
            else:
                for r in runs[int(job)]:
                    if r[0] == int(attempt) and r[1] == int(pid) and r[4] == "none":
                        r[3], r[4] = float(at), outcome
                        break
    result.runs = sum(len(v) for v in runs.values())
    result.unended = sum(r[3] is None for v in runs.values() for r in v)
    result.never_ran = len(ids - set(runs))
    for these in runs.values():
        if len(these) < 2:
            continue
        result.more_than_once += 1
        these.sort(key=lambda r: r[2])
        latest = float("-inf")  # the latest end of the runs started before this one
        overlapping = False
        for r in these:
            overlapping = overlapping or r[2] < latest
            latest = max(latest, r[2] if r[3] is None else r[3])
        result.overlapped += overlapping
        if any(r[4] == "ok" for r in these[:-1]):
            result.redone += 1


# ------------------------------------------------------------------------------------------------
# Main
# ------------------------------------------------------------------------------------------------
def summary(scenario: str, results: list[Result]) -> str:
    def column(name: str, values: list[int]) -> str:
        return f"  {name:<34} {sum(values):>6}   per run {values}"

    drained = [r.seconds for r in results if r.seconds is not None]
    lines = [
        f"summary: {scenario}, {len(results)} run(s)",
        column("fences", [r.fenced for r in results]),
        column("runs given up by a fence", [r.log["given up"] for r in results]),
        column("jobs run more than once", [r.more_than_once for r in results]),
        column("  of which overlapping runs", [r.overlapped for r in results]),
        column("  of which after a finished run", [r.redone for r in results]),
        column("runs without an end line", [r.unended for r in results]),
        column("stranded (active/aborting at end)", [len(r.stranded) for r in results]),
        column("failed", [r.status["failed"] for r in results]),
        column("retried (attempts > 1)", [r.retried for r in results]),
        column("workers exited early", [len(r.exits) for r in results]),
        f"  {'seconds to drain':<34} " + (
            f"median {statistics.median(drained):.1f}, max {max(drained):.1f}" if drained else "n/a"
        ) + (f" ({len(results) - len(drained)} run(s) never drained)" if len(drained) < len(results) else ""),
    ]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="server to create the databases on (default: PGJOBS_DSN or embedded)")
    parser.add_argument("--scenario", choices=sorted(SCENARIOS), default="load")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, help="jobs per run (default: 1,000 for load, 300 for skew)")
    parser.add_argument(
        "--spread", type=float, default=0.0, metavar="SECONDS",
        help="enqueue the jobs in batches every 0.5 s over this many seconds (default 0: one enqueue_many)",
    )  # fmt: skip
    parser.add_argument("--keep-logs", type=Path, metavar="DIR", help="keep each run's worker logs and run files here")
    parser.add_argument("--libfaketime", help="path of libfaketime.so.1 for skew (default: found in the usual places)")
    args = parser.parse_args()
    scenario = SCENARIOS[args.scenario]
    jobs = args.jobs or scenario.jobs
    libfaketime = None
    if any(scenario.clocks):
        libfaketime = args.libfaketime or next((p for p in LIBFAKETIME if Path(p).exists()), None)
        if libfaketime is None or not Path(libfaketime).exists():
            raise SystemExit("skew needs libfaketime: apt-get install faketime, or give --libfaketime PATH")
    if args.keep_logs is not None:
        args.keep_logs.mkdir(parents=True, exist_ok=True)

    def interrupted(signum: int, _: Any) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, interrupted)  # tidy up on SIGTERM as on Ctrl-C
    server = pgjobs.resolve_dsn(args.dsn)
    check_imports(libfaketime, scenario.clocks)
    print(f"{args.scenario}: {args.runs} run(s) of {jobs} jobs"
          + (f" enqueued over {args.spread:g} s" if args.spread else "") + f", 2 workers {' '.join(WORKER_OPTIONS)}"
          + (f", {scenario.hogs} CPU hogs for {scenario.hog_seconds:g} s" if scenario.hogs else "")
          + (f", clocks {', '.join(c or 'real' for c in scenario.clocks)}" if any(scenario.clocks) else ""),
          flush=True)  # fmt: skip
    results: list[Result] = []
    try:
        for i in range(1, args.runs + 1):
            label = f"{args.scenario}-{i}"
            name = f"stranding_{os.getpid()}_{i}"
            result = one_run(server, name, i, scenario, jobs, args.spread, libfaketime, args.keep_logs, label)
            results.append(result)
            print(result.line(args.scenario, args.runs, jobs), flush=True)
            for s in result.stranded[:10]:
                print(f"  stranded: {s}", flush=True)
            for note in result.notes[:12]:
                print(f"  log {note}", flush=True)
            if len(result.notes) > 12:
                print(f"  log ... {len(result.notes) - 12} more such line(s)", flush=True)
    except KeyboardInterrupt as exc:  # the run's processes and database are gone by now
        print(f"interrupted ({str(exc) or 'SIGINT'}) after {len(results)} complete run(s)", file=sys.stderr, flush=True)
        if results:
            print(summary(args.scenario, results), flush=True)
        raise SystemExit(130) from None
    print(summary(args.scenario, results), flush=True)


if __name__ == "__main__":
    main()
