"""Take the dashboard guide's screenshots (docs/dashboard-*.png) from demo data in a scratch database.

    .venv/bin/python docs/screenshots.py postgresql://postgres@127.0.0.1:5432/postgres

Creates the database pgjobs_screenshots on that server (dropped again at the end), fills it with
demo jobs, serves `pgjobs dashboard` on it and photographs the pages with Debian's Chromium.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg
from playwright.sync_api import sync_playwright
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgjobs

DOCS = Path(__file__).resolve().parent
NAME = "pgjobs_screenshots"
TRACEBACK = """Traceback (most recent call last):
  File "/app/pgjobs/worker.py", line 412, in _run
    result = await task(*args, **kwargs)
  File "/app/shop/emails.py", line 31, in send_receipt
    smtp.send(message)
  File "/app/shop/smtp.py", line 88, in send
    raise TimeoutError(f"{self.host}: no answer in {self.timeout} s")
TimeoutError: smtp.internal: no answer in 30 s"""


def demo(dsn: str) -> int:
    """Demo jobs: an hour of finished ones, running ones with progress, a paused queue, schedules.
    Returns the id of a failed job to photograph."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pgjobs.worker_register('web-1:4242', 'web-1', 4242, 'app', '{default,emails}', 8, 5)")
        conn.execute("SELECT pgjobs.worker_register('batch-1:977', 'batch-1', 977, 'app', '{reports,images}', 2, 5)")
        conn.execute(
            "SELECT pgjobs.enqueue('reports.monthly', '[2026, 11]', 'reports', 10) FROM generate_series(1, 12)"
        )
        conn.execute(
            "SELECT pgjobs.enqueue('shop.emails.send_receipt', '{}', 'emails', 10) FROM generate_series(1, 37)"
        )
        for queue, task, n in (("emails", "shop.emails.send_receipt", 420), ("default", "shop.orders.sync", 260),
                               ("images", "media.thumbnail", 180)):  # fmt: skip
            conn.execute(
                "SELECT pgjobs.enqueue(%s, jsonb_build_object('order', 1000 + g), %s) FROM generate_series(1, %s) g",
                [task, queue, n],
            )
            worker = "batch-1:977" if queue == "images" else "web-1:4242"
            conn.execute("SELECT count(*) FROM pgjobs.dequeue(%s, ARRAY[%s], %s)", [worker, queue, n])
            conn.execute("SELECT pgjobs.complete_many(ARRAY(SELECT id FROM pgjobs.jobs WHERE queue = %s "
                         "AND status = 'active' AND id %% 12 <> 0))", [queue])  # fmt: skip
            conn.execute("SELECT pgjobs.fail(id, %s, NULL, false) FROM pgjobs.jobs WHERE id IN (SELECT id "
                         "FROM pgjobs.jobs WHERE queue = %s AND status = 'active' ORDER BY id DESC OFFSET 1)",
                         [TRACEBACK, queue])  # fmt: skip
        # An hour of history: spread the finishing times (demo data only; pgjobs never does this).
        conn.execute("""UPDATE pgjobs.jobs_live SET completed_at = now() - random() * random() * interval '59 minutes'
                        WHERE status IN ('complete', 'failed')""")  # fmt: skip
        conn.execute("""UPDATE pgjobs.jobs_live
                        SET started_at = completed_at - random() * interval '4 s',
                            enqueued_at = completed_at - interval '5 s' - random() * interval '9 s',
                            scheduled_at = completed_at - interval '5 s'
                        WHERE status IN ('complete', 'failed')""")  # fmt: skip
        for i, job in enumerate(conn.execute("SELECT id FROM pgjobs.jobs WHERE status = 'active' ORDER BY id")):
            conn.execute("SELECT pgjobs.touch(%s, 1, %s)", [job[0], (0.2 + 0.3 * i) % 1])
        conn.execute("SELECT * FROM pgjobs.set_queue('reports', paused => true)")
        conn.execute("SELECT * FROM pgjobs.set_queue('emails', rate_limit => 20, rate_period => 1)")
        conn.execute("SELECT pgjobs.schedule('nightly-report', 'reports.monthly', cron => '0 3 * * *')")
        conn.execute("SELECT pgjobs.schedule('sync-orders', 'shop.orders.sync', every => 300)")
        conn.execute("UPDATE pgjobs.schedules SET next_run_at = date_trunc('hour', now()) + interval '1 hour'")
        conn.execute("SELECT * FROM pgjobs.reap()")
        row = conn.execute("SELECT max(id) FROM pgjobs.jobs WHERE status = 'failed' AND queue = 'emails'").fetchone()
        assert row is not None
        return int(row[0])


def main(server: str) -> None:
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(NAME)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(NAME)))
    dsn = make_conninfo(server, dbname=NAME)
    try:
        pgjobs.migrate(dsn)
        failed = demo(dsn)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "pgjobs", "dashboard", "--dsn", dsn, "--port", str(port)])
        try:
            for _ in range(100):
                try:
                    urllib.request.urlopen(url + "/static/dashboard.css", timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.1)
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1280, "height": 760}, device_scale_factor=1)
                for name, path in (("overview", "/"), ("jobs", "/jobs"), ("job", f"/jobs/{failed}"),
                                   ("workers", "/workers")):  # fmt: skip
                    page.goto(url + path)
                    page.screenshot(path=DOCS / f"dashboard-{name}.png")
                    print(f"docs/dashboard-{name}.png")
                browser.close()
        finally:
            proc.terminate()
            proc.wait()
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(NAME)))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "postgresql://postgres@127.0.0.1:5432/postgres")
