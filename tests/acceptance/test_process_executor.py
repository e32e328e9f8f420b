"""`pgjobs worker --executor process` for real: kills that stop the CPU, crashes that stay in their
child, memory limits, and children that never outlive their worker."""

from __future__ import annotations

import signal
import socket
import time
import urllib.request
from pathlib import Path
from typing import Any

import psutil
import pytest

from .helpers import Process
from .test_crashes import query, wait_until

pytestmark = pytest.mark.acceptance

MODULE = "tests.acceptance.process_tasks"


def worker(dsn: str, log_dir: Path, *extra: str, env: dict[str, str] | None = None) -> Process:
    return Process(
        "worker", MODULE, "--dsn", dsn, "--executor", "process", "-c", "2", "--kill-grace", "0.5",
        "--heart-rate", "0.3", "--reap-interval", "0.3", "--poll-interval", "0.2",
        *extra,
        env={"PGJOBS_ACCEPTANCE_LOG": str(log_dir), **(env or {})},
    )  # fmt: skip


def enqueue(dsn: str, task: str, args: str = "{}", **options: Any) -> int:
    named = "".join(f", {k} => %({k})s" for k in options)
    (row,) = query(
        dsn, f"SELECT pgjobs.enqueue(%(task)s, %(args)s{named}) AS id", {"task": task, "args": args, **options}
    )
    return int(row["id"])


def job(dsn: str, job_id: int) -> dict[str, Any]:
    (row,) = query(dsn, "SELECT status, error, attempts, result FROM pgjobs.jobs WHERE id = %s", [job_id])
    return row


def finished(dsn: str, job_id: int) -> bool:
    return job(dsn, job_id)["status"] in ("complete", "failed", "aborted")


def spinning_pid(log_dir: Path, job_id: int) -> int:
    path = log_dir / f"{job_id}.pid"
    wait_until(lambda: path.exists() and path.read_text() != "", 20, f"job {job_id} starting to spin")
    return int(path.read_text())


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def cpu_seconds(pid: int) -> float:
    """CPU time of a process and of its living children."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        for p in [root, *root.children(recursive=True)]:
            times = p.cpu_times()
            total += times.user + times.system
    except psutil.NoSuchProcess:
        pass
    return total


def test_a_spinning_task_past_its_timeout_is_killed_and_its_cpu_freed(dsn: str, tmp_path: Path) -> None:
    spinner = enqueue(dsn, "proc.spin", timeout=1, max_attempts=1)
    with worker(dsn, tmp_path) as w:
        pid = spinning_pid(tmp_path, spinner)
        wait_until(lambda: finished(dsn, spinner), 15, "the kill")
        assert job(dsn, spinner)["status"] == "failed"
        assert job(dsn, spinner)["error"].startswith("timeout: ran longer than 1"), job(dsn, spinner)
        wait_until(lambda: gone(pid), 3, "the spinning process ending")
        # The worker and its children are idle again: no core burns for the killed run.
        time.sleep(0.5)
        before, started = cpu_seconds(w.pid), time.monotonic()
        time.sleep(1.5)
        used = (cpu_seconds(w.pid) - before) / (time.monotonic() - started)
        assert used < 0.3, f"the worker still uses {used:.0%} of a core"
        after = enqueue(dsn, "proc.add", "[2, 3]")
        wait_until(lambda: finished(dsn, after), 15, "the next job")
        assert job(dsn, after)["result"] == 5
        assert "stopped with SIGTERM" in w.output()


def test_cancel_stops_a_spinning_task_and_sigkill_one_that_ignores_sigterm(dsn: str, tmp_path: Path) -> None:
    polite = enqueue(dsn, "proc.spin")
    stubborn = enqueue(dsn, "proc.spin_stubborn")
    with worker(dsn, tmp_path, "--heart-rate", "30") as w:  # the cancels arrive by NOTIFY
        pids = {j: spinning_pid(tmp_path, j) for j in (polite, stubborn)}
        query(dsn, "SELECT pgjobs.cancel(id) FROM unnest(%s::bigint[]) id", [[polite, stubborn]])
        wait_until(lambda: finished(dsn, polite) and finished(dsn, stubborn), 10, "both cancels")
        assert job(dsn, polite)["status"] == job(dsn, stubborn)["status"] == "aborted"
        assert job(dsn, polite)["error"] == "cancelled while running; its process was stopped with SIGTERM"
        assert job(dsn, stubborn)["error"] == (
            "cancelled while running; its process ignored SIGTERM for 0.5 s and was killed with SIGKILL"
        )
        assert all(gone(pid) for pid in pids.values())
        w.signal(signal.SIGTERM)
        assert w.wait(timeout=15) == 0, w.output()


def test_crashes_and_memory_fail_only_their_run_and_the_worker_goes_on(dsn: str, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    extra = ("--max-memory-per-child", "150", "--metrics-port", str(port))
    with worker(dsn, tmp_path, *extra) as w:
        segfault = enqueue(dsn, "proc.segfault", max_attempts=1)
        exited = enqueue(dsn, "proc.exit", '{"status": 3}', max_attempts=1)
        hog = enqueue(dsn, "proc.hog", max_attempts=1)
        adds = [enqueue(dsn, "proc.add", f"[{i}, 1]") for i in range(6)]
        wait_until(lambda: all(finished(dsn, j) for j in [segfault, exited, hog, *adds]), 30, "every job")
        assert job(dsn, segfault)["error"] == "the process running the task died: killed by signal 11 (SIGSEGV)"
        assert job(dsn, exited)["error"] == "the process running the task died: exited with status 3"
        assert job(dsn, hog)["error"].startswith(
            "the process running the task was killed: it exceeded the memory limit of 150 MB"
        ), job(dsn, hog)
        assert [job(dsn, j)["result"] for j in adds] == [i + 1 for i in range(6)]
        assert query(dsn, "SELECT status FROM pgjobs.workers") == [{"status": "running"}]
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'pgjobs_worker_child_restarts_total{reason="crashed"} 2.0' in text
        assert 'pgjobs_worker_child_restarts_total{reason="memory"} 1.0' in text
        assert 'pgjobs_worker_kills_total{executor="process",reason="memory"} 1.0' in text
        # The same totals reach the database with the next heartbeat, for the dashboard.
        wait_until(
            lambda: query(dsn, "SELECT stats FROM pgjobs.workers")[0]["stats"] == {"kills": 1, "child_restarts": 3},
            10, "the worker's stats in its row",
        )  # fmt: skip
        w.signal(signal.SIGTERM)
        assert w.wait(timeout=15) == 0, w.output()
        assert "Segmentation fault" in w.output()  # the child's faulthandler, in the worker's log


def test_sigterm_gives_the_runs_back_and_stops_the_children(dsn: str, tmp_path: Path) -> None:
    spinner = enqueue(dsn, "proc.spin")
    with worker(dsn, tmp_path, "--shutdown-grace", "0.5") as w:
        pid = spinning_pid(tmp_path, spinner)
        children = [c.pid for c in psutil.Process(w.pid).children()]
        assert pid in children
        w.signal(signal.SIGTERM)
        assert w.wait(timeout=15) == 0, w.output()
        assert "given back to the queue" in w.output()
    assert job(dsn, spinner)["status"] == "queued" and job(dsn, spinner)["attempts"] == 0
    assert all(gone(c) for c in children)


@pytest.mark.parametrize("pdeathsig", ["1", "0"], ids=["pdeathsig", "pipe"])
def test_kill_9_of_the_worker_leaves_no_child_behind(dsn: str, tmp_path: Path, pdeathsig: str) -> None:
    spinners = [enqueue(dsn, "proc.spin"), enqueue(dsn, "proc.spin")]
    with worker(dsn, tmp_path, "-c", "3", env={"PGJOBS_CHILD_PDEATHSIG": pdeathsig}) as w:
        pids = [spinning_pid(tmp_path, j) for j in spinners]
        children = [c.pid for c in psutil.Process(w.pid).children()]
        assert set(pids) <= set(children) and len(children) == 2
        w.signal(signal.SIGKILL)
        w.wait(timeout=10)
        wait_until(lambda: all(gone(c) for c in children), 5, "every child dying with its worker")
