"""The dashboard in a real browser: `pgjobs dashboard` as a process, headless Chromium through Playwright."""

from __future__ import annotations

import os
import shutil
import socket
import time
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row

from pgjobs.dashboard.serve import FORWARDED_ALLOW_IPS
from tests.acceptance.helpers import Process

pytestmark = pytest.mark.acceptance

Conn = psycopg.Connection[dict[str, Any]]
CHROMIUM = os.environ.get("PGJOBS_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium for the module: Debian's, never a downloaded one."""
    why = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        why = "the playwright package is not installed"
    if why is None and not os.path.exists(CHROMIUM):
        why = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if why is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the browser tests must run in CI: {why}")
        pytest.skip(why)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def serve(dsn: str) -> Iterator[Callable[..., str]]:
    """serve(*options, env=) -> the URL of a `pgjobs dashboard` process on the test database."""
    started: list[Process] = []

    def start(*options: str, env: dict[str, str] | None = None) -> str:
        port = _free_port()
        proc = Process("dashboard", "--dsn", dsn, "--port", str(port), *options, env=env)
        started.append(proc)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"{url}/static/dashboard.css", timeout=2):
                    return url
            except OSError:
                if proc.popen.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the dashboard did not start:\n{proc.output()}") from None
                time.sleep(0.1)

    yield start
    for proc in started:
        proc.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    p = context.new_page()
    p.set_default_timeout(10_000)
    dialogs: list[str] = []
    p.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    p.dialogs = dialogs
    yield p
    context.close()


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return next(iter(row.values()))


def enqueue(conn: Conn, queue: str = "default", **options: Any) -> int:
    names = "".join(f", {k} => %({k})s" for k in options)
    return int(one(conn, f"SELECT pgjobs.enqueue('t', queue => %(queue)s{names})", {"queue": queue, **options}))


def failed(conn: Conn, error: str = "boom") -> int:
    job_id = enqueue(conn, max_attempts=1)
    assert one(conn, "SELECT id FROM pgjobs.dequeue('w', '{default}', 1)") == job_id
    conn.execute("SELECT pgjobs.fail(%s, %s)", [job_id, error])
    return job_id


def test_overview_shows_the_queue_counts_and_jobs_filter(conn: Conn, serve: Callable[..., str], page: Any) -> None:
    for _ in range(3):
        enqueue(conn, "mail")
    broken = failed(conn)
    url = serve()
    page.goto(url)
    row = page.locator('tr[data-queue="mail"]')
    assert row.locator("td").nth(2).inner_text() == "3"  # due
    assert page.locator('tr[data-queue="default"]').is_visible()
    page.get_by_role("link", name="Jobs", exact=True).click()
    page.select_option('select[name="status"]', "failed")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**/jobs?*status=failed*")
    assert page.locator("tr[data-job]").evaluate_all("rows => rows.map(r => r.dataset.job)") == [str(broken)]


def test_retry_a_failed_job_from_its_page(conn: Conn, serve: Callable[..., str], page: Any) -> None:
    broken = failed(conn, "Traceback (most recent call last):\nValueError: nope")
    page.goto(f"{serve()}/jobs/{broken}")
    assert "ValueError: nope" in page.locator("#error").inner_text()
    page.get_by_role("button", name="Retry").click()
    assert f"Job {broken} is queued again." in page.locator(".flash").inner_text()
    assert one(conn, "SELECT status FROM pgjobs.jobs WHERE id = %s", [broken]) == "queued"
    assert page.locator("h1 .status").inner_text() == "queued"


def test_bulk_cancel_shows_the_count_and_needs_confirming(conn: Conn, serve: Callable[..., str], page: Any) -> None:
    jobs = [enqueue(conn, "mail") for _ in range(3)]
    other = enqueue(conn)
    page.goto(f"{serve()}/jobs?queue=mail")
    page.get_by_role("link", name="Cancel all matching…").click()
    assert page.locator("h1").inner_text() == "Cancel 3 jobs?"
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs WHERE status = 'queued'") == 4  # not yet
    page.locator("#confirm").click()
    assert "3 job(s) cancelled." in page.locator(".flash").inner_text()
    statuses = conn.execute("SELECT id, status FROM pgjobs.jobs ORDER BY id").fetchall()
    assert {r["id"]: r["status"] for r in statuses} == {**dict.fromkeys(jobs, "aborted"), other: "queued"}


def test_pause_a_queue_and_nothing_is_claimed(conn: Conn, serve: Callable[..., str], page: Any) -> None:
    enqueue(conn, "mail")
    page.goto(serve())
    row = page.locator('tr[data-queue="mail"]')
    row.get_by_role("button", name="Pause").click()
    assert "Queue mail paused." in page.locator(".flash").inner_text()
    assert page.locator('tr[data-queue="mail"] .status').inner_text() == "paused"
    assert conn.execute("SELECT * FROM pgjobs.dequeue('w', '{mail}', 5)").fetchall() == []
    page.locator('tr[data-queue="mail"]').get_by_role("button", name="Resume").click()
    assert len(conn.execute("SELECT * FROM pgjobs.dequeue('w', '{mail}', 5)").fetchall()) == 1


def test_a_script_in_job_data_renders_as_text(conn: Conn, serve: Callable[..., str], page: Any) -> None:
    evil = "<script>alert('pwned')</script>"
    job = enqueue(conn, args=f'{{"html": "{evil}"}}', max_attempts=1)
    one(conn, "SELECT id FROM pgjobs.dequeue('w', '{default}', 1)")
    conn.execute("SELECT pgjobs.fail(%s, %s)", [job, evil])
    url = serve()
    for path in (f"/jobs/{job}", "/jobs", "/"):
        page.goto(url + path)
    page.goto(f"{url}/jobs/{job}")
    assert evil in page.locator("#args").inner_text() and evil in page.locator("#error").inner_text()
    assert page.dialogs == []


def test_a_read_only_dashboard_has_no_buttons_and_refuses_posts(
    dsn: str, conn: Conn, serve: Callable[..., str], page: Any
) -> None:
    broken = failed(conn)
    url = serve("--read-only")
    for path in ("/", "/jobs", f"/jobs/{broken}", "/workers", "/schedules"):
        page.goto(url + path)
        assert page.locator("form[method=post], a[href*='/jobs/bulk']").count() == 0, path
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    r = page.request.post(f"{url}/jobs/{broken}/retry", form={"csrf": cookies["pgjobs_csrf"]})
    assert r.status == 403
    with psycopg.connect(dsn, row_factory=dict_row) as c:
        assert one(c, "SELECT status FROM pgjobs.jobs WHERE id = %s", [broken]) == "failed"


def _cookies(r: httpx.Response) -> dict[str, list[str]]:
    """Each cookie the response sets: its attributes, lowercase (``secure``, ``httponly``, …)."""
    cookies = {}
    for header in r.headers.get_list("set-cookie"):
        name, *attributes = (part.strip() for part in header.split(";"))
        cookies[name.split("=", 1)[0]] = [a.split("=", 1)[0].lower() for a in attributes]
    return cookies


def _login(url: str, token: str, headers: dict[str, str]) -> dict[str, list[str]]:
    """Log in with the form, as a browser would through the proxy; the cookies set on the way."""
    with httpx.Client(base_url=url, headers=headers) as http:
        form = http.get("/login")
        assert form.status_code == 200
        csrf = form.headers["set-cookie"].split(";", 1)[0].split("=", 1)[1]
        r = http.post("/login", data={"csrf": csrf, "token": token}, headers={"Cookie": f"pgjobs_csrf={csrf}"})
        assert r.status_code == 303, r.text
        return {**_cookies(form), **_cookies(r)}


def test_behind_a_trusted_proxy_the_cookies_of_an_https_request_are_secure(serve: Callable[..., str]) -> None:
    token = "t0ken-for-tests-123"
    https = {"X-Forwarded-Proto": "https"}
    proxied = serve("--token", token, env={FORWARDED_ALLOW_IPS: "127.0.0.1"})
    cookies = _login(proxied, token, https)
    assert "secure" in cookies["pgjobs_session"] and "secure" in cookies["pgjobs_csrf"]
    assert "httponly" in cookies["pgjobs_session"]
    assert "secure" not in _login(proxied, token, {})["pgjobs_session"]  # plain http through the proxy
    # Headers anyone may send count only from the proxies named: none by default, or another one.
    for env in ({FORWARDED_ALLOW_IPS: ""}, {FORWARDED_ALLOW_IPS: "10.9.8.7"}):
        assert "secure" not in _login(serve("--token", token, env=env), token, https)["pgjobs_session"], env
