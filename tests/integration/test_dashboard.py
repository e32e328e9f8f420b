"""The browser dashboard in-process on a real database: pages, filters, actions, the JSON API, security."""

from __future__ import annotations

import asyncio
import base64
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

import pgjobs.dashboard
from pgjobs import _database, cli
from pgjobs.dashboard import security
from pgjobs.dashboard.serve import is_loopback
from pgjobs.dashboard.store import MAX_DEPTH, RAW_CHARS
from pgjobs.errors import ConfigurationError

Conn = psycopg.Connection[dict[str, Any]]


class Client:
    """httpx on the ASGI app, its lifespan open, driven from sync tests on one event loop."""

    def __init__(self, app: Any, base_url: str = "http://127.0.0.1") -> None:
        self.runner = asyncio.Runner()
        self.lifespan = app.router.lifespan_context(app)
        self.runner.run(self.lifespan.__aenter__())
        transport = httpx.ASGITransport(app=app)
        self.http = httpx.AsyncClient(transport=transport, base_url=base_url)

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.runner.run(self.http.get(url, **kwargs))

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.runner.run(self.http.post(url, **kwargs))

    @property
    def csrf(self) -> str:
        if "pgjobs_csrf" not in self.http.cookies:
            self.get("/login")
        return str(self.http.cookies["pgjobs_csrf"])

    def act(self, url: str, **fields: Any) -> httpx.Response:
        """Press a form's button: POST with the CSRF token, then follow the redirect back."""
        r = self.post(url, data={"csrf": self.csrf, **fields})
        assert r.status_code == 303, r.text
        return self.get(r.headers["location"])

    def api(self, url: str, json: Any = None) -> httpx.Response:
        return self.post(url, json=json, headers={"X-CSRF-Token": self.csrf})

    def close(self) -> None:
        self.runner.run(self.http.aclose())
        self.runner.run(self.lifespan.__aexit__(None, None, None))
        self.runner.close()


@pytest.fixture
def dashboard(dsn: str) -> Iterator[Callable[..., Client]]:
    """dashboard(**options) -> a Client on pgjobs.dashboard.app(dsn, **options); without a token,
    insecure=True (the app refuses to serve without either)."""
    made: list[Client] = []

    def make(target: str | None = None, base_url: str = "http://127.0.0.1", **options: Any) -> Client:
        options.setdefault("insecure", "token" not in options)
        client = Client(pgjobs.dashboard.app(target or dsn, refresh=0, **options), base_url)
        made.append(client)
        return client

    yield make
    for c in made:
        c.close()


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return next(iter(row.values()))


def enqueue(conn: Conn, task: str = "t", **options: Any) -> int:
    names = "".join(f", {k} => %({k})s" for k in options)
    return int(one(conn, f"SELECT pgjobs.enqueue(%(task)s{names})", {"task": task, **options}))


def run(conn: Conn, queue: str = "default") -> int:
    return int(one(conn, "SELECT id FROM pgjobs.dequeue('w', ARRAY[%s], 1)", [queue]))


def failed(conn: Conn, error: str = "boom", **options: Any) -> int:
    job_id = enqueue(conn, max_attempts=1, **options)
    assert run(conn, options.get("queue", "default")) == job_id
    conn.execute("SELECT pgjobs.fail(%s, %s)", [job_id, error])
    return job_id


def status(conn: Conn, job_id: int) -> Any:
    return one(conn, "SELECT status FROM pgjobs.jobs WHERE id = %s", [job_id])


def ids(r: httpx.Response) -> list[int]:
    return [int(i) for i in re.findall(r'data-job="(\d+)"', r.text)]


def test_each_page_renders_with_real_jobs(conn: Conn, dashboard: Callable[..., Client]) -> None:
    conn.execute("SELECT pgjobs.worker_register('w', 'host-a', 4242, 'app', '{default,mail}', 4, 5)")
    done = enqueue(conn, "report.build", args='{"month": 11}')
    assert run(conn) == done
    conn.execute("""SELECT pgjobs.complete(%s, '{"rows": 42}')""", [done])
    broken = failed(conn, "Traceback (most recent call last):\n  ValueError: bad month", queue="mail")
    running = enqueue(conn, "video.encode")
    assert run(conn) == running
    conn.execute("SELECT pgjobs.touch(%s, 1, 0.25)", [running])
    conn.execute("""SELECT * FROM pgjobs.worker_heartbeat('w', stats => '{"kills": 7, "child_restarts": 9}')""")
    conn.execute("SELECT pgjobs.schedule('nightly', 'report.build', cron => '0 3 * * *')")
    conn.execute("SELECT * FROM pgjobs.reap()")  # finished jobs move to history
    d = dashboard()

    overview = d.get("/")
    assert overview.status_code == 200
    assert 'data-queue="default"' in overview.text and 'data-queue="mail"' in overview.text
    assert "1 complete" in overview.text and "1 failed" in overview.text and "nightly" in overview.text
    jobs = d.get("/jobs")
    assert ids(jobs) == [running, broken, done]
    assert '<progress value="0.250"' in jobs.text and "ValueError: bad month" in jobs.text
    page = d.get(f"/jobs/{broken}")
    assert page.status_code == 200 and "Traceback (most recent call last):" in page.text and "Retry" in page.text
    assert "&#34;rows&#34;: 42" in d.get(f"/jobs/{done}").text
    workers = d.get("/workers")
    assert "host-a" in workers.text and f">{running}</a>" in workers.text and "Stop" in workers.text
    assert '<td class="n">7</td><td class="n">9</td>' in workers.text  # kills, child restarts
    assert "nightly" in d.get("/schedules").text
    assert d.get("/jobs/999999").status_code == 404


def test_job_page_links_parents_and_children(conn: Conn, dashboard: Callable[..., Client]) -> None:
    parent = enqueue(conn, "extract")
    child = int(one(conn, "SELECT pgjobs.enqueue('load', depends_on => ARRAY[%s]::bigint[])", [parent]))
    d = dashboard()
    assert f'href="/jobs/{child}"' in d.get(f"/jobs/{parent}").text
    assert f'href="/jobs/{parent}"' in d.get(f"/jobs/{child}").text
    api = d.get(f"/api/jobs/{parent}").json()
    assert [c["id"] for c in api["children"]] == [child] and api["parents"] == []
    assert [p["id"] for p in d.get(f"/api/jobs/{child}").json()["parents"]] == [parent]


def test_filters_and_keyset_pages_return_the_right_jobs(conn: Conn, dashboard: Callable[..., Client]) -> None:
    b = failed(conn, "SMTP timeout", queue="mail", key="k-1")
    c = failed(conn, "disk full")
    conn.execute("SELECT * FROM pgjobs.reap()")  # b and c from history
    a = [enqueue(conn, "mail.send", queue="mail", group_key="customer:1") for _ in range(3)]
    d = dashboard()
    assert ids(d.get("/jobs", params={"queue": "mail"})) == [*reversed(a), b]
    assert ids(d.get("/jobs", params={"status": "failed"})) == [c, b]
    assert ids(d.get("/jobs", params={"task": "mail.send"})) == list(reversed(a))
    assert ids(d.get("/jobs", params={"group_key": "customer:1"})) == list(reversed(a))
    assert ids(d.get("/jobs", params={"key": "k-1"})) == [b]
    assert ids(d.get("/jobs", params={"error": "smtp"})) == [b]
    assert ids(d.get("/jobs", params={"queue": "mail", "status": "queued", "task": "other"})) == []
    assert d.get("/jobs", params={"status": "nonsense"}).status_code == 400

    first = d.get("/jobs", params={"limit": 2})
    assert ids(first) == [a[2], a[1]]
    older = re.search(r'rel="next" href="([^"]+)"', first.text)
    assert older is not None
    second = d.get(older.group(1).replace("&amp;", "&"))
    assert ids(second) == [a[0], c]
    page = d.get("/api/jobs", params={"limit": 2, "before": c}).json()
    assert [j["id"] for j in page["jobs"]] == [b] and page["next_before"] is None
    page = d.get("/api/jobs", params={"limit": 2, "queue": "mail"}).json()
    assert [j["id"] for j in page["jobs"]] == [a[2], a[1]] and page["next_before"] == a[1]


def test_each_action_changes_the_database(conn: Conn, dashboard: Callable[..., Client]) -> None:
    broken, queued, doomed = failed(conn), enqueue(conn), enqueue(conn, queue="other")
    conn.execute("SELECT pgjobs.worker_register('w-9', 'h', 1, 'u', '{default}', 1, 5)")
    conn.execute("SELECT pgjobs.schedule('hourly', 'ping', every => 3600)")
    d = dashboard()

    page = d.act(f"/jobs/{broken}/retry", next=f"/jobs/{broken}")
    assert status(conn, broken) == "queued" and f"Job {broken} is queued again." in page.text
    assert "neither failed nor aborted" in d.act(f"/jobs/{broken}/retry").text
    d.act(f"/jobs/{queued}/cancel")
    assert status(conn, queued) == "aborted"
    d.act(f"/jobs/{doomed}/delete", next="/jobs")
    assert conn.execute("SELECT FROM pgjobs.jobs WHERE id = %s", [doomed]).fetchone() is None
    assert "paused" in d.act("/queues/default/pause").text
    assert one(conn, "SELECT paused FROM pgjobs.queues WHERE queue = 'default'") is True
    d.act("/queues/default/resume")
    assert one(conn, "SELECT paused FROM pgjobs.queues WHERE queue = 'default'") is False
    d.act("/workers/stop", worker_id="w-9")
    assert one(conn, "SELECT status FROM pgjobs.workers WHERE id = 'w-9'") == "stopping"
    d.act("/schedules/pause", name="hourly")
    assert one(conn, "SELECT enabled FROM pgjobs.schedules WHERE name = 'hourly'") is False
    d.act("/schedules/resume", name="hourly")
    assert one(conn, "SELECT enabled FROM pgjobs.schedules WHERE name = 'hourly'") is True
    assert "enqueued job" in d.act("/schedules/run", name="hourly").text
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs WHERE task = 'ping' AND status = 'queued'") == 1
    assert one(conn, "SELECT trigger_count FROM pgjobs.schedules WHERE name = 'hourly'") == 1
    assert "no schedule" in d.act("/schedules/run", name="nope").text


def test_bulk_actions_show_a_count_and_need_confirming(conn: Conn, dashboard: Callable[..., Client]) -> None:
    mail = [failed(conn, "SMTP timeout", queue="mail") for _ in range(3)]
    other = failed(conn, "SMTP timeout")
    waiting = [enqueue(conn, queue="mail") for _ in range(2)]
    d = dashboard()
    confirm = d.get("/jobs/bulk", params={"action": "retry", "queue": "mail", "error": "smtp"})
    assert "Retry 3 jobs?" in confirm.text and 'id="confirm"' in confirm.text
    assert all(status(conn, j) == "failed" for j in mail)  # looking changes nothing
    page = d.act("/jobs/bulk", action="retry", queue="mail", error="smtp", next="/jobs?queue=mail")
    assert "3 job(s) queued again." in page.text
    assert [status(conn, j) for j in mail] == ["queued"] * 3 and status(conn, other) == "failed"

    assert "Cancel 5 jobs?" in d.get("/jobs/bulk", params={"action": "cancel", "queue": "mail"}).text
    assert "5 job(s) cancelled." in d.act("/jobs/bulk", action="cancel", queue="mail").text
    assert {status(conn, j) for j in mail + waiting} == {"aborted"}
    api = d.api("/api/jobs/retry", {"queue": "mail", "dry_run": True}).json()
    assert api == {"action": "retry", "dry_run": True, "count": 5}
    assert d.api("/api/jobs/retry", {"status": "aborted"}).json()["count"] == 5


def test_actions_are_refused_without_the_csrf_token_by_get_and_when_read_only(
    conn: Conn, dashboard: Callable[..., Client]
) -> None:
    job = failed(conn)
    d = dashboard()
    assert d.post(f"/jobs/{job}/retry", data={}).status_code == 403
    assert d.post(f"/jobs/{job}/retry", data={"csrf": "x" * 43}).status_code == 403
    assert (
        d.post(f"/jobs/{job}/retry", data={"csrf": d.csrf}, headers={"Origin": "http://evil.example"}).status_code
        == 403
    )
    assert d.get(f"/jobs/{job}/retry").status_code == 405
    assert d.post(f"/api/jobs/{job}/retry").status_code == 403  # no X-CSRF-Token
    assert d.post("/queues/default/pause", data={}).status_code == 403
    assert status(conn, job) == "failed"
    assert conn.execute("SELECT FROM pgjobs.queue_settings").fetchone() is None

    ro = dashboard(read_only=True)
    for url in ("/", "/jobs", f"/jobs/{job}", "/workers", "/schedules"):
        page = ro.get(url)
        assert page.status_code == 200 and 'method="post"' not in page.text, url
    assert ro.post(f"/jobs/{job}/retry", data={"csrf": ro.csrf}).status_code == 403
    assert ro.api(f"/api/jobs/{job}/retry").status_code == 403
    assert ro.api("/api/queues/default/pause").status_code == 403
    assert status(conn, job) == "failed"


def test_job_data_renders_as_text_never_as_markup(conn: Conn, dashboard: Callable[..., Client]) -> None:
    evil = "<script>alert('pwned')</script>"
    job = enqueue(conn, "x", args=f'{{"html": "{evil}"}}', meta=f'{{"note": "{evil}"}}', queue="q")
    assert run(conn, "q") == job
    conn.execute("SELECT pgjobs.fail(%s, %s, NULL, false)", [job, f"Error: {evil}"])
    done = enqueue(conn, evil.replace(" ", ""), queue="q")
    assert run(conn, "q") == done
    conn.execute("SELECT pgjobs.complete(%s, %s)", [done, f'{{"out": "{evil}"}}'])
    d = dashboard()
    for url in (f"/jobs/{job}", f"/jobs/{done}", "/jobs", "/jobs?error=<script>", "/"):
        page = d.get(url)
        assert page.status_code == 200
        assert "<script>alert" not in page.text, url
    assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in d.get(f"/jobs/{job}").text
    assert "Content-Security-Policy" in d.get("/").headers


def test_the_dsn_password_is_never_shown(dsn: str, conn: Conn, dashboard: Callable[..., Client]) -> None:
    secret = "Sup3r-s3cret-pw"
    failed(conn)
    d = dashboard(make_conninfo(dsn, password=secret))
    pages = ["/", "/jobs", "/jobs/1", "/workers", "/schedules", "/jobs?before=x", "/api/queues", "/api/jobs",
             "/api/workers", "/metrics", "/schedules/preview?name=none&start=2026-01-01&end=2026-01-02"]  # fmt: skip
    for url in pages:
        r = d.get(url)
        assert secret not in r.text, url
    assert "***" in d.get("/").text


def test_token_auth_bearer_basic_and_login(conn: Conn, dashboard: Callable[..., Client]) -> None:
    token = "t0ken-for-tests-123"
    d = dashboard(token=token)
    assert d.get("/").status_code == 303 and d.get("/").headers["location"].startswith("/login?next=")
    r = d.get("/api/queues")
    assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"]
    assert d.get("/metrics").status_code == 401
    assert d.get("/api/queues", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert d.get("/api/queues", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    basic = base64.b64encode(f"ops:{token}".encode()).decode()
    assert d.get("/", headers={"Authorization": f"Basic {basic}"}).status_code == 200
    assert d.get("/metrics", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    # A Bearer token stands for the CSRF header in the JSON API (a browser never adds one by itself).
    r = d.post("/api/queues/default/pause", headers={"Authorization": f"Bearer {token}"})
    assert r.status_code == 200 and r.json()["queue"]["paused"] is True

    login = d.get("/login")
    assert login.status_code == 200 and token not in login.text
    assert d.post("/login", data={"csrf": d.csrf, "token": "nope", "next": "/jobs"}).status_code == 401
    r = d.post("/login", data={"csrf": d.csrf, "token": token, "next": "/jobs"})
    assert r.status_code == 303 and r.headers["location"] == "/jobs"
    assert token not in str(d.http.cookies.get("pgjobs_session"))
    for url in ("/", "/jobs", "/workers", "/schedules"):
        page = d.get(url)
        assert page.status_code == 200 and token not in page.text
    assert (
        d.post("/login", data={"csrf": d.csrf, "token": token, "next": "https://evil.example/"}).headers["location"]
        == "/"
    )
    d.act("/logout")
    assert d.get("/").status_code == 303


def test_every_wrong_token_waits_like_the_login_forms_and_a_right_one_does_not(
    conn: Conn, dashboard: Callable[..., Client], monkeypatch: pytest.MonkeyPatch
) -> None:
    delay = 0.1
    monkeypatch.setattr(security, "FAILED_DELAY", delay)  # the form's wait, shortened for the test
    token = "t0ken-for-tests-123"
    d = dashboard(token=token)

    def timed(n: int, send: Callable[[], httpx.Response], status: int) -> float:
        start = time.monotonic()
        for _ in range(n):
            assert send().status_code == status
        return time.monotonic() - start

    form = timed(5, lambda: d.post("/login", data={"csrf": d.csrf, "token": "guess"}), 401)
    assert form >= 5 * delay
    # Each scheme: twenty guesses cost what twenty guesses at the form cost.
    guess = {"Authorization": "Bearer guess"}
    assert timed(20, lambda: d.get("/api/queues", headers=guess), 401) >= 20 * delay
    assert timed(5, lambda: d.get("/", headers=guess), 303) >= 5 * delay
    basic = {"Authorization": "Basic " + base64.b64encode(b"ops:guess").decode()}
    assert timed(5, lambda: d.get("/metrics", headers=basic), 401) >= 5 * delay
    forged = {"Cookie": f"pgjobs_session=nonce.{'0' * 64}"}
    assert timed(5, lambda: d.get("/api/jobs", headers=forged), 401) >= 5 * delay
    assert timed(3, lambda: d.get("/api/queues", headers={"Authorization": "Bearer " + "x" * 5000}), 401) >= 3 * delay

    right = {"Authorization": f"Bearer {token}"}
    assert timed(20, lambda: d.get("/api/queues", headers=right), 200) < 20 * delay / 2
    assert timed(5, lambda: d.get("/"), 303) < 5 * delay / 2  # no credentials: no guess, sent to the form at once
    auth = security.TokenAuth(token)
    assert auth.check_token(token) and not auth.check_token(token[:-1]) and not auth.check_token("\udcff")


def test_the_login_page_shows_nothing_about_the_database(dsn: str, dashboard: Callable[..., Client]) -> None:
    token = "t0ken-for-tests-123"
    params = conninfo_to_dict(dsn)
    secrets = [_database.redact(dsn), str(params["dbname"]), f"user={params['user']}", f"host={params['host']}"]
    d = dashboard(token=token)
    pages = [
        d.get("/login"),
        d.get("/login", headers={"Authorization": f"Bearer {token}"}),  # no oracle: the same page as a wrong one
        d.get("/login", headers={"Authorization": "Bearer wrong"}),
        d.post("/login", data={"csrf": d.csrf, "token": "wrong"}),
        d.post("/login", data={"csrf": "stale", "token": "wrong"}),
    ]
    for page in pages:
        assert page.status_code in (200, 401, 403)
        assert not [s for s in secrets if s in page.text], page.text
    assert d.post("/login", data={"csrf": d.csrf, "token": token}).status_code == 303
    assert _database.redact(dsn) in d.get("/").text  # once logged in
    assert _database.redact(dsn) in dashboard().get("/").text  # without a token, everyone is


def test_the_embedded_app_needs_a_token_or_insecure_and_answers_only_its_host_names(
    dsn: str, dashboard: Callable[..., Client]
) -> None:
    with pytest.raises(ConfigurationError, match="needs a token"):
        pgjobs.dashboard.app(dsn)
    with pytest.raises(ConfigurationError, match="one or the other"):
        pgjobs.dashboard.app(dsn, token="t0ken-for-tests-123", insecure=True)

    token = "t0ken-for-tests-123"
    bearer = {"Authorization": f"Bearer {token}"}
    d = dashboard(token=token)
    for host in ("127.0.0.1", "localhost:8000", "[::1]:8080"):
        assert d.get("/api/queues", headers={**bearer, "Host": host}).status_code == 200, host
    for host in ("evil.example", "localhost.evil.example", "127.0.0.1.nip.io"):  # DNS rebinding
        assert d.get("/api/queues", headers={**bearer, "Host": host}).status_code == 400, host
    assert dashboard().get("/", headers={"Host": "evil.example"}).status_code == 400  # insecure=True too
    named = dashboard(token=token, allowed_hosts=["jobs.example.com"], base_url="https://jobs.example.com")
    assert named.get("/api/queues", headers=bearer).status_code == 200
    assert named.get("/api/queues", headers={**bearer, "Host": "127.0.0.1"}).status_code == 400
    anywhere = dashboard(token=token, allowed_hosts=["*"])
    assert anywhere.get("/api/queues", headers={**bearer, "Host": "jobs.example.com"}).status_code == 200


def test_a_job_whose_json_python_cannot_decode_is_listed_and_shown_never_a_500(
    conn: Conn, dashboard: Callable[..., Client]
) -> None:
    # Stored past enqueue's own limits (by hand, or by an older version): written in directly.
    fine = enqueue(conn, "fine", args='{"n": 1}')
    deep, huge, nested = (enqueue(conn, task) for task in ("deep", "huge", "nested"))
    conn.execute("UPDATE pgjobs.jobs SET args = (repeat('[', 1000) || repeat(']', 1000))::jsonb WHERE id = %s", [deep])
    conn.execute("""UPDATE pgjobs.jobs SET args = '{"n": 1e5000}', meta = '{"m": 1e5000}' WHERE id = %s""", [huge])
    conn.execute("UPDATE pgjobs.jobs SET args = (repeat('[', %s) || repeat(']', %s))::jsonb WHERE id = %s",
                 [MAX_DEPTH, MAX_DEPTH, nested])  # fmt: skip
    conn.execute("""SELECT pgjobs.worker_register('w', 'h', 1, 'u', '{default}', 1, 5)""")
    conn.execute("""SELECT * FROM pgjobs.worker_heartbeat('w', stats => '{"kills": 1e5000}')""")
    d = dashboard()

    for url in ("/", "/jobs", "/workers", "/api/workers", "/api/queues"):
        assert d.get(url).status_code == 200, url
    assert ids(d.get("/jobs")) == [nested, huge, deep, fine]
    listed = {j["id"]: j for j in d.get("/api/jobs").json()["jobs"]}
    assert listed[fine]["args"] == {"n": 1} and listed[nested]["task"] == "nested"
    assert listed[deep]["args"].startswith(f"cannot be decoded: nested deeper than {MAX_DEPTH} levels")
    assert listed[huge]["args"].startswith("cannot be decoded: Exceeds the limit (4300 digits)")
    assert listed[huge]["meta"].startswith("cannot be decoded:")
    for job, reason in ((deep, "nested deeper than"), (huge, "Exceeds the limit")):
        page = d.get(f"/jobs/{job}")
        assert page.status_code == 200
        args = re.search(r'<pre id="args">(.*?)</pre>', page.text, re.S)
        assert args is not None and args.group(1).startswith(f"cannot be decoded: {reason}")
        assert len(args.group(1)) < 2 * RAW_CHARS + 100  # the value's text shown truncated
        assert d.get(f"/api/jobs/{job}").json()["job"]["args"].startswith("cannot be decoded:")
    assert d.get(f"/api/jobs/{nested}").json()["job"]["args"] is not None  # as deep as shown: decoded
    assert "cannot be decoded" not in d.get(f"/jobs/{nested}").text


def test_a_non_loopback_address_is_refused_without_a_token(dsn: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["dashboard", "--dsn", dsn, "--host", "0.0.0.0"]) == 2
    assert "without a token" in capsys.readouterr().err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("dash.example.com")


def test_json_api_lists_and_actions(conn: Conn, dashboard: Callable[..., Client]) -> None:
    conn.execute("SELECT pgjobs.worker_register('w-1', 'h', 7, 'u', '{default}', 2, 5)")
    conn.execute("SELECT pgjobs.schedule('daily', 'report', cron => '0 6 * * *', timezone => 'Europe/Paris')")
    done = enqueue(conn)
    assert run(conn) == done
    conn.execute("SELECT pgjobs.complete(%s)", [done])
    broken, queued = failed(conn), enqueue(conn, queue="mail")
    conn.execute("SELECT * FROM pgjobs.reap()")
    d = dashboard()

    queues = {q["queue"]: q for q in d.get("/api/queues").json()["queues"]}
    assert queues["mail"]["queued"] == 1
    series = d.get("/api/series").json()
    assert sum(r["complete"] for r in series["series"]) == 1 and sum(r["failed"] for r in series["series"]) == 1
    workers = d.get("/api/workers").json()
    assert [w["id"] for w in workers["workers"]] == ["w-1"] and workers["counts"] == {"alive": 1}
    assert [s["name"] for s in d.get("/api/schedules").json()["schedules"]] == ["daily"]
    preview = d.get("/api/schedules/preview", params={"name": "daily", "start": "2026-03-28", "end": "2026-03-31"})
    ticks = preview.json()["ticks"]
    assert [t["tick"] for t in ticks] == ["2026-03-28T05:00:00+00:00", "2026-03-29T04:00:00+00:00",
                                          "2026-03-30T04:00:00+00:00"]  # fmt: skip
    assert {t["action"] for t in ticks} == {"enqueued"}
    assert one(conn, "SELECT count(*) FROM pgjobs.jobs WHERE task = 'report'") == 0  # a preview changes nothing
    assert d.get(f"/api/jobs/{broken}").json()["job"]["status"] == "failed"
    assert d.get("/api/jobs/999999").status_code == 404

    assert d.api(f"/api/jobs/{broken}/retry").json() == {"id": broken, "status": "queued"}
    assert d.api(f"/api/jobs/{broken}/retry").status_code == 409
    assert d.api(f"/api/jobs/{queued}/cancel").json() == {"id": queued, "status": "aborted"}
    assert d.api(f"/api/jobs/{queued}/delete").json() == {"id": queued, "deleted": True}
    assert d.api("/api/jobs/999999/cancel").status_code == 404
    assert d.api("/api/queues/mail/pause").json()["queue"]["paused"] is True
    assert d.api("/api/workers/stop", {"worker_id": "w-1"}).json()["status"] == "stopping"
    assert d.api("/api/schedules/pause", {"name": "daily"}).json() == {"name": "daily", "enabled": False}
    job_id = d.api("/api/schedules/run", {"name": "daily"}).json()["job_id"]
    assert one(conn, "SELECT task FROM pgjobs.jobs WHERE id = %s", [job_id]) == "report"
    assert d.api("/api/schedules/run", {"name": "nope"}).status_code == 404
    assert d.api("/api/jobs/cancel", [1]).status_code == 400
    assert d.api("/api/jobs/cancel", {"status": "bogus"}).status_code == 400


def test_metrics_serve_the_database_gauges(conn: Conn, dashboard: Callable[..., Client]) -> None:
    enqueue(conn, queue="mail")
    conn.execute("SELECT pgjobs.worker_register('w', 'h', 1, 'u', '{default}', 1, 5)")
    text = dashboard().get("/metrics").text
    assert 'pgjobs_queue_jobs{queue="mail",status="queued"} 1.0' in text
    assert 'pgjobs_queue_oldest_queued_seconds{queue="mail"}' in text
    assert 'pgjobs_workers{status="running"} 1.0' in text


def test_the_dashboard_acts_as_a_member_of_pgjobs_admin_and_shows_as_one_of_pgjobs_worker(
    dsn: str, conn: Conn, login: Callable[[str], Conn], dashboard: Callable[..., Client]
) -> None:
    job = failed(conn)
    pages = ("/", "/jobs", f"/jobs/{job}", "/workers", "/schedules", "/api/series", "/metrics")
    viewer = dashboard(make_conninfo(dsn, user=login("pgjobs_worker").info.user))
    for url in pages:
        assert viewer.get(url).status_code == 200, url
    assert "permission denied" in viewer.act(f"/jobs/{job}/retry").text
    assert status(conn, job) == "failed"

    admin = dashboard(make_conninfo(dsn, user=login("pgjobs_admin").info.user))
    for url in pages:
        assert admin.get(url).status_code == 200, url
    admin.act(f"/jobs/{job}/retry")
    assert status(conn, job) == "queued"
    admin.act("/queues/default/pause")
    assert one(conn, "SELECT paused FROM pgjobs.queues WHERE queue = 'default'") is True


def test_a_fair_queue_its_depth_limit_and_a_jobs_tenant_are_shown(conn: Conn, dashboard: Callable[..., Client]) -> None:
    conn.execute("SELECT pgjobs.set_queue('exports', fair => true, max_active => 4, max_queued => 4)")
    job_id = one(conn, "SELECT pgjobs.enqueue('export', queue => 'exports', tenant => 'acme')")
    d = dashboard()
    overview = d.get("/").text
    assert "max active 4, fair share, max queued 4 (25% full)" in overview
    assert re.search(r"<dt>Tenant</dt><dd>acme</dd>", d.get(f"/jobs/{job_id}").text)
    queues = {q["queue"]: q for q in d.get("/api/queues").json()["queues"]}
    assert queues["exports"]["fair"] is True
