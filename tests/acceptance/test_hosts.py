"""Workers on separate hosts: Linux network namespaces joined to the root namespace (where a
private PostgreSQL listens) by veth links. One host is cut off (its link down) while it holds runs:
the others reset and finish them; when the link comes back it rejoins having recorded nothing for
them. Skipped where network namespaces cannot be made (not root, no `ip`, a container that refuses)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.types.json import Jsonb

import pgjobs
from tests.cluster import Cluster

from .helpers import Process
from .tasks import read_spans
from .test_crashes import query, wait_until
from .test_leadership import HEART_RATE, REAP_INTERVAL, leader, worker_id

pytestmark = pytest.mark.acceptance


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=check)


class Hosts:
    """Network namespaces, each a host with one veth link to the root namespace: host n is
    10.X.n.2, the root side of its link 10.X.n.1 (X from this process's id)."""

    def __init__(self, count: int) -> None:
        tag = os.getpid() % 10000
        self.net = f"10.{100 + os.getpid() % 150}"
        self.names = [f"pgjh{tag}_{n}" for n in range(1, count + 1)]
        self.links = [f"pgjv{tag}_{n}" for n in range(1, count + 1)]
        made: list[str] = []
        try:
            for n, (name, link) in enumerate(zip(self.names, self.links, strict=True), start=1):
                _ip("netns", "add", name)
                made.append(name)
                _ip("link", "add", link, "type", "veth", "peer", "name", "eth0", "netns", name)
                _ip("addr", "add", f"{self.net}.{n}.1/24", "dev", link)
                _ip("link", "set", link, "up")
                inside = ("netns", "exec", name, "ip")
                _ip(*inside, "addr", "add", f"{self.net}.{n}.2/24", "dev", "eth0")
                _ip(*inside, "link", "set", "eth0", "up")
                _ip(*inside, "link", "set", "lo", "up")
        except subprocess.CalledProcessError as exc:
            self.names = made
            self.remove()
            raise RuntimeError(f"{' '.join(exc.cmd)}: {exc.stderr.strip()}") from None

    def server(self, n: int) -> str:
        """The address host n reaches the root namespace at."""
        return f"{self.net}.{n}.1"

    def run(self, n: int) -> list[str]:
        """The command prefix that runs a program on host n."""
        return ["ip", "netns", "exec", self.names[n - 1]]

    def cut(self, n: int) -> None:
        """Take host n's link down: its packets go nowhere, no reset, as when a cable is pulled."""
        _ip("link", "set", self.links[n - 1], "down")

    def heal(self, n: int) -> None:
        _ip("link", "set", self.links[n - 1], "up")

    def remove(self) -> None:
        for name in self.names:
            _ip("netns", "delete", name, check=False)  # its end of the link goes with it


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's `ip`")
    try:
        made = Hosts(3)
    except RuntimeError as exc:
        pytest.skip(f"cannot make network namespaces here: {exc}")
    try:
        yield made
    finally:
        made.remove()


def test_a_host_cut_off_while_holding_runs_loses_nothing_and_records_nothing_for_them(
    cluster: Cluster, hosts: Hosts, tmp_path: Path
) -> None:
    # The server listens on every address, the hosts' links included, and trusts them.
    with (cluster.datadir / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {hosts.net}.0.0/16 trust\n")
    cluster.alter_system(listen_addresses="*")
    cluster.restart()
    dsn = cluster.dsn()
    pgjobs.migrate(dsn)

    def worker(n: int, *extra: str) -> Process:
        return Process(
            "worker", "tests.acceptance.tasks", "--dsn", cluster.dsn(host=hosts.server(n)), "-c", "6",
            "--heart-rate", str(HEART_RATE), "--reap-interval", str(REAP_INTERVAL), "--poll-interval", "0.2", *extra,
            env={"PGJOBS_ACCEPTANCE_LOG": str(tmp_path), "PGJOBS_DEAD_PEER_TIMEOUT": "6"}, prefix=hosts.run(n),
        )  # fmt: skip

    held = "SELECT count(*) AS n FROM pgjobs.jobs WHERE status = 'active' AND worker_id = %s"
    with worker(1, "--no-reaper") as a:
        wait_until(lambda: bool(worker_id(dsn, a.pid)), 20, "host 1's worker to start")
        a_id = worker_id(dsn, a.pid)
        jobs = [{"task": "acceptance.span", "args": {"seconds": 4}, "retry_delay": 0} for _ in range(6)]
        query(dsn, "SELECT pgjobs.enqueue_many(%s)", [Jsonb(jobs)])
        wait_until(lambda: query(dsn, held, [a_id])[0]["n"] == 6, 20, "host 1 holding six runs")
        with worker(2) as b, worker(3) as c:
            ids = {p.pid: "" for p in (b, c)}
            wait_until(lambda: all(worker_id(dsn, pid) for pid in ids), 20, "hosts 2 and 3 to start")
            others = {worker_id(dsn, pid) for pid in ids}
            wait_until(lambda: leader(dsn) in others, 20, "a reaper leader on host 2 or 3")
            hosts.cut(1)
            reset_after = wait_until(lambda: query(dsn, held, [a_id])[0]["n"] == 0, 20, "the reset of host 1's runs")
            done = "SELECT count(*) AS n FROM pgjobs.jobs WHERE status = 'complete'"
            wait_until(lambda: query(dsn, done)[0]["n"] == 6, 30, "hosts 2 and 3 finishing the six jobs")
            hosts.heal(1)
            wait_until(
                lambda: query(dsn, "SELECT pgjobs.worker_is_alive(%s) AS alive", [a_id])[0]["alive"],
                30, "host 1 beating again",
            )  # fmt: skip
            for p in (b, c):
                p.signal(signal.SIGTERM)
                assert p.wait(timeout=30) == 0, p.output()
        query(dsn, "SELECT pgjobs.enqueue('acceptance.span', '{\"seconds\": 0}')")
        wait_until(lambda: query(dsn, done)[0]["n"] == 7, 30, "host 1 running a new job")
        a.signal(signal.SIGTERM)
        assert a.wait(timeout=30) == 0, a.output()
        a_log = a.output()

    statuses = Counter(r["status"] for r in query(dsn, "SELECT status FROM pgjobs.jobs"))
    assert statuses == {"complete": 7}, statuses  # jobs lost: 0
    spans = read_spans(tmp_path)
    finished = Counter(job_id for job_id, _, _, _, _, how in spans if how == "returned")
    assert all(n == 1 for n in finished.values()) and len(finished) == 7, finished
    by_host_1 = [(job_id, how) for job_id, pid, _, _, _, how in spans if pid == a.pid]
    # Host 1 recorded nothing for the six reset runs: each of its runs of them ended stopped.
    assert sorted(how for _, how in by_host_1) == ["cancelled"] * 6 + ["returned"], by_host_1
    assert a_log.count(" complete in ") == 1, a_log  # the new job only
    # It stopped them itself once its heartbeats stopped going through (its fence), before the
    # reaper on another host could reset them.
    assert a_log.count(" given up after ") == 6, a_log
    started = Counter(job_id for job_id, *_ in spans)
    assert sum(1 for n in started.values() if n > 1) <= 6  # ran twice: at most the runs it held
    print(f"host 1 cut off: its runs reset {reset_after:.2f} s after the cut")
