"""What the hot path costs the server, without worker processes in the way.

A fresh database with --jobs queued no-op jobs, then dequeue(--batch) and complete_many on one
connection until they are done. Prints the server backend's CPU microseconds per job (read from
/proc, so only for a server on this machine that this user may inspect) and the time spent in each
pgjobs function per call (track_functions). CPU time is steadier than throughput on a noisy machine.

    bench/.venv/bin/python -m bench.dbcost [--dsn DSN] [--jobs 30000] [--batch 50] [--groups 0]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.bench import fresh_database
from bench.systems import SYSTEMS
from pgjobs import _database


def cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", help="server to create the database on (default: PGJOBS_DSN or embedded)")
    parser.add_argument("--jobs", type=int, default=30_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--groups", type=int, default=0, help="spread the jobs over this many group keys")
    args = parser.parse_args()
    system = SYSTEMS["pgjobs"]
    with fresh_database(_database.resolve_dsn(args.dsn), system) as dsn:
        system.fill(dsn, args.jobs, groups=args.groups)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SET track_functions = 'all'")
            conn.execute("SELECT pg_stat_reset()")
            pid = conn.info.backend_pid
            cpu0, wall0, done = cpu_seconds(pid), time.perf_counter(), 0
            while True:
                rows = conn.execute(
                    "SELECT id, attempts FROM pgjobs.dequeue('bench', '{default}', %s)", [args.batch]
                ).fetchall()
                if not rows:
                    break
                conn.execute("SELECT pgjobs.complete_many(%s, NULL, %s)", [[r[0] for r in rows], [r[1] for r in rows]])
                done += len(rows)
            cpu1, wall1 = cpu_seconds(pid), time.perf_counter()
            conn.execute("SELECT pg_stat_force_next_flush()") if conn.info.server_version >= 150000 else None
        time.sleep(1)  # statistics reach the shared view after the session reports them
        with psycopg.connect(dsn) as conn:
            functions = conn.execute(
                """SELECT funcname, calls, total_time, self_time FROM pg_stat_user_functions
                   WHERE schemaname = 'pgjobs' ORDER BY total_time DESC"""
            ).fetchall()
    cpu = f"{1e6 * (cpu1 - cpu0) / done:.1f} us CPU" if cpu0 is not None and cpu1 is not None else "CPU unknown"
    print(f"{done:,} jobs in batches of {args.batch}: server backend {cpu} a job, "
          f"{1e6 * (wall1 - wall0) / done:.1f} us wall a job")  # fmt: skip
    for name, calls, total, own in functions:
        print(f"  {name:<20} {calls:>8,} calls  {1000 * total / calls:8.1f} us a call  ({1000 * own / calls:.1f} own)")


if __name__ == "__main__":
    main()
