"""Workers, heartbeats, fences and the reaper through the SQL API, with the database clock."""

from __future__ import annotations

import datetime as dt
import threading
import time
from typing import Any

import psycopg
import pytest

Conn = psycopg.Connection[dict[str, Any]]


def one(conn: Conn, query: str, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return next(iter(row.values()))


def register(conn: Conn, worker_id: str, heart_rate: float = 1.0) -> None:
    conn.execute("SELECT pgjobs.worker_register(%s, 'host', 1, 'me', '{default}', 4, %s)", [worker_id, heart_rate])


def claim(conn: Conn, worker_id: str, n: int = 10) -> list[dict[str, Any]]:
    return conn.execute("SELECT * FROM pgjobs.dequeue(%s, '{default}', %s)", [worker_id, n]).fetchall()


def beat(conn: Conn, worker_id: str, held: list[tuple[int, int]], claiming: bool = False) -> dict[str, Any]:
    row = conn.execute(
        "SELECT * FROM pgjobs.worker_heartbeat(%s, %s::bigint[], %s::int[], claiming => %s)",
        [worker_id, [h[0] for h in held], [h[1] for h in held], claiming],
    ).fetchone()
    assert row is not None
    return row


def silence(conn: Conn, worker_id: str, seconds: float) -> None:
    """Make a worker's last heartbeat `seconds` old (as if it had stopped beating)."""
    conn.execute(
        "UPDATE pgjobs.workers SET heartbeat_at = now() - make_interval(secs => %s) WHERE id = %s",
        [seconds, worker_id],
    )


def reap(conn: Conn) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM pgjobs.reap()").fetchone()
    assert row is not None
    return row


def job(conn: Conn, job_id: int) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM pgjobs.jobs WHERE id = %s", [job_id]).fetchone()
    assert row is not None
    return row


def test_a_heartbeat_touches_the_runs_and_reports_aborts_and_lost_runs(conn: Conn) -> None:
    register(conn, "w1")
    a, b, c = (one(conn, "SELECT pgjobs.enqueue('t')") for _ in range(3))
    claim(conn, "w1")
    conn.execute("UPDATE pgjobs.jobs SET touched_at = now() - interval '1 hour'")
    conn.execute("SELECT pgjobs.cancel(%s)", [b])
    # c was reset and claimed by someone else meanwhile: attempt 2 is not ours
    conn.execute("UPDATE pgjobs.jobs SET attempts = 2, worker_id = 'w2' WHERE id = %s", [c])
    row = beat(conn, "w1", [(a, 1), (b, 1), (c, 1)])
    assert row == {"status": "running", "abort": [b], "lost": [c], "settled": []}
    assert one(conn, "SELECT touched_at > now() - interval '1 minute' FROM pgjobs.jobs WHERE id = %s", [a])
    assert one(conn, "SELECT touched_at < now() - interval '1 minute' FROM pgjobs.jobs WHERE id = %s", [c])


def test_a_beat_settles_the_runs_a_worker_no_longer_holds_that_it_claimed_before_its_previous_beat(
    conn: Conn,
) -> None:
    register(conn, "w1")
    kept, lost, last, cancelled = (
        one(conn, "SELECT pgjobs.enqueue('t', max_attempts => %s, retry_delay => 0)", [n]) for n in (3, 3, 1, 3)
    )
    claim(conn, "w1")
    conn.execute("SELECT pgjobs.cancel(%s)", [cancelled])
    # Claimed after the previous beat (the registration): maybe still on their way to the worker.
    assert beat(conn, "w1", [(kept, 1)])["settled"] == []
    assert {r["status"] for r in conn.execute("SELECT status FROM pgjobs.jobs WHERE id <> %s", [cancelled])} == {
        "active"
    }
    # Now claimed before the previous beat, and still not held: lost, each a failed attempt.
    assert sorted(beat(conn, "w1", [(kept, 1)])["settled"]) == sorted([lost, last, cancelled])
    rows = {r["id"]: r for r in conn.execute("SELECT * FROM pgjobs.jobs")}
    assert (rows[kept]["status"], rows[kept]["worker_id"]) == ("active", "w1")
    assert (rows[lost]["status"], rows[lost]["attempts"], rows[lost]["worker_id"]) == ("queued", 1, None)
    assert rows[lost]["error"] == "lost by worker w1: it no longer held this run"
    assert (rows[last]["status"], rows[last]["error"]) == ("failed", "lost by worker w1: it no longer held this run")
    assert rows[cancelled]["status"] == "aborted"  # a user's cancel ends as the user asked
    # The retry runs again, once.
    assert [r["id"] for r in claim(conn, "w1")] == [lost]
    assert job(conn, lost)["attempts"] == 2


def test_a_beat_sent_while_a_claim_is_in_flight_settles_nothing(conn: Conn) -> None:
    register(conn, "w1")
    a = one(conn, "SELECT pgjobs.enqueue('t')")
    claim(conn, "w1")
    for _ in range(3):
        assert beat(conn, "w1", [], claiming=True)["settled"] == []
    assert job(conn, a)["status"] == "active"
    # A run held under another attempt is not the one the database has: that one is lost.
    assert beat(conn, "w1", [(a, 7)])["settled"] == [a]


def test_a_beat_waits_for_no_lock_of_a_run_it_settles(conn: Conn, dsn: str) -> None:
    register(conn, "w1")
    a = one(conn, "SELECT pgjobs.enqueue('t')")
    claim(conn, "w1")
    beat(conn, "w1", [])
    with psycopg.connect(dsn) as other:
        other.execute("SELECT 1 FROM pgjobs.jobs WHERE id = %s FOR UPDATE", [a])
        conn.execute("SET lock_timeout = '2s'")
        assert beat(conn, "w1", [])["settled"] == []  # skipped, not waited for
        other.rollback()
    assert beat(conn, "w1", [])["settled"] == [a]


def test_a_heartbeat_from_an_unknown_worker_is_an_error(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.NoDataFound):
        beat(conn, "nobody", [])


def test_a_heartbeat_stores_what_the_worker_counts_of_itself(conn: Conn) -> None:
    conn.execute("SELECT pgjobs.worker_register('w1', 'h', 1, 'u', '{default}', 4, 5)")
    conn.execute("""SELECT * FROM pgjobs.worker_heartbeat('w1', stats => '{"kills": 2}')""")
    conn.execute("SELECT * FROM pgjobs.worker_heartbeat('w1')")  # no stats: kept as they were
    assert conn.execute("SELECT stats FROM pgjobs.workers").fetchone()["stats"] == {"kills": 2}
    for bad in ("[1]", '{"x": "%s"}' % ("y" * 9000)):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="pgjobs: stats"):
            conn.execute("SELECT * FROM pgjobs.worker_heartbeat('w1', stats => %s::jsonb)", [bad])


def test_is_alive_follows_the_heartbeat_and_the_grace_multiplier(conn: Conn) -> None:
    register(conn, "w1", heart_rate=10)
    assert one(conn, "SELECT pgjobs.worker_is_alive('w1')") is True
    silence(conn, "w1", 20)
    assert one(conn, "SELECT pgjobs.worker_is_alive('w1')") is True  # 20 s < 2.1 x 10 s
    assert one(conn, "SELECT pgjobs.worker_is_alive('w1', 1.5)") is False
    silence(conn, "w1", 22)
    assert one(conn, "SELECT pgjobs.worker_is_alive('w1')") is False
    beat(conn, "w1", [])
    assert one(conn, "SELECT pgjobs.worker_is_alive('w1')") is True
    assert one(conn, "SELECT pgjobs.worker_is_alive('nobody')") is False


def test_worker_stop_is_seen_at_the_next_heartbeat_and_announced(conn: Conn) -> None:
    register(conn, "w1")
    conn.execute('LISTEN "pgjobs.worker"')
    assert one(conn, "SELECT pgjobs.worker_stop('w1')") == "stopping"
    assert [n.payload for n in conn.notifies(timeout=0.5)] == ["w1"]
    assert beat(conn, "w1", [])["status"] == "stopping"
    assert one(conn, "SELECT pgjobs.worker_stop('nobody')") is None
    conn.execute("SELECT pgjobs.worker_stopped('w1')")
    assert one(conn, "SELECT status FROM pgjobs.workers WHERE id = 'w1'") == "stopped"


def test_the_reaper_resets_the_jobs_of_a_dead_worker_and_unblocks_its_group(conn: Conn) -> None:
    register(conn, "w1")
    first = one(conn, "SELECT pgjobs.enqueue('t', group_key => 'g', retry_delay => 0)")
    second = one(conn, "SELECT pgjobs.enqueue('t', group_key => 'g')")
    last_try = one(conn, "SELECT pgjobs.enqueue('t', max_attempts => 1)")
    claim(conn, "w1")
    assert claim(conn, "w2") == []  # the group is held by w1
    assert reap(conn)["dead_workers"] == 0
    silence(conn, "w1", 3)
    counts = reap(conn)
    assert (counts["dead_workers"], counts["reset"]) == (1, 2)
    assert one(conn, "SELECT status FROM pgjobs.workers WHERE id = 'w1'") == "dead"
    row = job(conn, first)
    assert (row["status"], row["attempts"], row["worker_id"]) == ("queued", 1, None)
    assert "w1 died" in row["error"]
    row = job(conn, last_try)
    assert (row["status"], row["attempts"]) == ("failed", 1)
    # The group is free again: one of its jobs runs (the reset one is due after the other).
    assert [r["id"] for r in claim(conn, "w2")] == [second]


def test_the_reaper_kills_runs_past_their_timeout_and_they_are_retried(conn: Conn) -> None:
    register(conn, "w1")
    conn.execute('LISTEN "pgjobs.cancel"')
    slow = one(conn, "SELECT pgjobs.enqueue('t', timeout => 5, retry_delay => 0)")
    quick = one(conn, "SELECT pgjobs.enqueue('t', timeout => 5)")
    claim(conn, "w1")
    conn.execute("UPDATE pgjobs.jobs SET started_at = now() - interval '6 s' WHERE id = %s", [slow])
    assert reap(conn)["killed"] == 1
    row = job(conn, slow)
    assert row["status"] == "aborting" and row["abort_reason"].startswith("timeout")
    assert [n.payload for n in conn.notifies(timeout=0.5)] == [str(slow)]
    assert job(conn, quick)["status"] == "active"
    # The worker sees it at its next beat, stops the task and reports the failure.
    assert beat(conn, "w1", [(slow, 1), (quick, 1)])["abort"] == [slow]
    assert one(conn, "SELECT pgjobs.fail(%s, 'CancelledError', 1)", [slow]) == "queued"
    row = job(conn, slow)
    assert row["error"].startswith("timeout: ran longer than 5") and row["abort_reason"] is None


def test_the_reaper_kills_runs_whose_heartbeat_stopped(conn: Conn) -> None:
    register(conn, "w1")
    silent = one(conn, "SELECT pgjobs.enqueue('t', heartbeat => 2, max_attempts => 1)")
    kept = one(conn, "SELECT pgjobs.enqueue('t', heartbeat => 2)")
    claim(conn, "w1")
    conn.execute("UPDATE pgjobs.jobs SET touched_at = now() - interval '3 s' WHERE id = %s", [silent])
    assert reap(conn)["killed"] == 1
    assert one(conn, "SELECT pgjobs.fail(%s, 'stopped', 1)", [silent]) == "failed"
    assert job(conn, silent)["error"].startswith("heartbeat")
    assert job(conn, kept)["status"] == "active"


def test_killed_runs_of_unregistered_clients_are_settled_by_the_reaper(conn: Conn) -> None:
    job_id = one(conn, "SELECT pgjobs.enqueue('t', timeout => 1, retry_delay => 0)")
    cancelled = one(conn, "SELECT pgjobs.enqueue('t')")
    claim(conn, "some-go-client")
    conn.execute("UPDATE pgjobs.jobs SET started_at = now() - interval '2 s' WHERE id = %s", [job_id])
    conn.execute("SELECT pgjobs.cancel(%s)", [cancelled])
    reap(conn)  # kills
    reap(conn)  # nobody registered will stop it: settle
    assert job(conn, job_id)["status"] == "queued"
    assert job(conn, cancelled)["status"] == "aborted"


def test_a_zombie_cannot_complete_or_touch_a_run_that_was_reset(conn: Conn) -> None:
    register(conn, "zombie")
    register(conn, "w2")
    job_id = one(conn, "SELECT pgjobs.enqueue('t', retry_delay => 0)")
    claim(conn, "zombie")
    silence(conn, "zombie", 10)
    reap(conn)
    assert [r["attempts"] for r in claim(conn, "w2")] == [2]
    assert one(conn, "SELECT pgjobs.complete(%s, '\"zombie\"', 1)", [job_id]) is False
    assert one(conn, "SELECT pgjobs.fail(%s, 'zombie', 1)", [job_id]) is None
    assert one(conn, "SELECT pgjobs.touch(%s, 1, 0.5)", [job_id]) is False
    assert beat(conn, "zombie", [(job_id, 1)]) == {"status": "running", "abort": [], "lost": [job_id], "settled": []}
    assert job(conn, job_id)["status"] == "active" and job(conn, job_id)["worker_id"] == "w2"
    assert one(conn, "SELECT pgjobs.complete(%s, '\"real\"', 2)", [job_id]) is True
    assert job(conn, job_id)["result"] == "real"


def test_touch_records_progress_and_merges_meta(conn: Conn) -> None:
    job_id = one(conn, """SELECT pgjobs.enqueue('t', meta => '{"a": 1}')""")
    claim(conn, "w1")
    assert one(conn, """SELECT pgjobs.touch(%s, 1, 0.25, '{"b": 2}')""", [job_id]) is True
    row = job(conn, job_id)
    assert row["progress"] == 0.25 and row["meta"] == {"a": 1, "b": 2}
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="progress"):
        conn.execute("SELECT pgjobs.touch(%s, 1, 7)", [job_id])


def partitions(conn: Conn) -> set[str]:
    return {
        r["relname"]
        for r in conn.execute(
            """SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               WHERE i.inhparent = 'pgjobs.jobs_done'::regclass"""
        )
    }


def test_finished_jobs_move_to_history_and_stay_readable(conn: Conn) -> None:
    a = one(conn, "SELECT pgjobs.enqueue('t', ttl => 3600)")
    b = one(conn, "SELECT pgjobs.enqueue('t', ttl => 0)")
    c = one(conn, "SELECT pgjobs.enqueue('t')")
    claim(conn, "w1", 3)
    conn.execute("""SELECT pgjobs.complete(%s, '{"x": 1}')""", [a])
    conn.execute("SELECT pgjobs.fail(%s, 'no', retry => false)", [b])

    def where() -> dict[int, tuple[str, str, bool]]:
        rows = conn.execute("SELECT id, tableoid::regclass::text AS part, status, expires_at FROM pgjobs.jobs")
        return {r["id"]: (r["part"], r["status"], r["expires_at"] is not None) for r in rows}

    # Until the reaper's next pass, finished jobs stay in the hot table.
    assert where() == {a: ("pgjobs.jobs_live", "complete", False), b: ("pgjobs.jobs_live", "failed", False),
                       c: ("pgjobs.jobs_live", "active", False)}  # fmt: skip
    reap(conn)
    now = where()
    assert now[a][0].startswith("pgjobs.jobs_done_2") and now[a][1:] == ("complete", True)
    assert now[b] == ("pgjobs.jobs_done_kept", "failed", True)
    assert now[c] == ("pgjobs.jobs_live", "active", False)
    assert job(conn, a)["result"] == {"x": 1} and job(conn, b)["error"] == "no"
    assert one(conn, "SELECT expires_at - completed_at FROM pgjobs.jobs WHERE id = %s", [a]) == dt.timedelta(hours=1)


def test_two_reaper_passes_at_once_make_the_coming_days_of_history_once(dsn: str, conn: Conn) -> None:
    conn.execute("SELECT * FROM pgjobs.reap()")
    days = [r["relname"] for r in conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'pgjobs.jobs_done'::regclass AND c.relname ~ '^jobs_done_[0-9]{8}$' ORDER BY 1"
    )]  # fmt: skip
    conn.execute(f"DROP TABLE pgjobs.{days[-1]}")  # a new day to make, as after midnight
    with psycopg.connect(dsn) as first, psycopg.connect(dsn, autocommit=True) as second:
        first.execute("SELECT * FROM pgjobs.reap()")  # makes the day, its transaction still open
        outcome: list[BaseException | None] = []

        def reap() -> None:
            try:
                second.execute("SELECT * FROM pgjobs.reap()")
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        other = threading.Thread(target=reap)
        other.start()
        time.sleep(0.5)  # the second pass waits for the first
        first.commit()
        other.join(10)
    assert outcome == [None]  # no unique_violation from making the same day twice
    assert conn.execute("SELECT to_regclass(%s) IS NOT NULL AS made", [f"pgjobs.{days[-1]}"]).fetchone()["made"]


def test_a_prepared_query_planned_while_a_day_of_history_is_attached_sees_that_day(dsn: str, conn: Conn) -> None:
    # A finished job waits in jobs_done_other: a fresh database has no day of history yet.
    job_id = one(conn, "SELECT pgjobs.enqueue('t', ttl => 3600)")
    claim(conn, "w1", 1)
    conn.execute("SELECT pgjobs.complete(%s)", [job_id])
    count = "SELECT count(*) FROM pgjobs.jobs WHERE status = 'complete'"
    with psycopg.connect(dsn) as upkeep, psycopg.connect(dsn, autocommit=True) as reader:
        upkeep.execute("SELECT * FROM pgjobs.reap()")  # makes the days, moves the job into one; not committed
        seen: list[Any] = []
        # A statement prepared as drivers do (psycopg after five runs): its plan is made once and
        # kept, here while the reaper attaches the day.
        first = threading.Thread(target=lambda: seen.append(reader.execute(count, prepare=True).fetchone()))
        first.start()
        time.sleep(0.5)
        upkeep.commit()
        first.join(10)
        seen.append(reader.execute(count, prepare=True).fetchone())
    assert seen == [(1,), (1,)]  # not a plan blind to the new day, kept until the next DDL


def test_a_long_read_of_history_defers_a_new_day_without_holding_the_reaper_up(dsn: str, conn: Conn) -> None:
    conn.execute("SELECT * FROM pgjobs.reap()")
    last = sorted(p for p in partitions(conn) if p[10:].isdigit())[-1]
    conn.execute(f"DROP TABLE pgjobs.{last}")  # a new day to make, as after midnight
    with psycopg.connect(dsn) as reader:
        reader.execute("SELECT count(*) FROM pgjobs.jobs")  # its transaction stays open
        began = time.monotonic()
        conn.execute("SELECT * FROM pgjobs.reap()")
        assert time.monotonic() - began < 5
        assert last not in partitions(conn)  # left whole for the next pass, no table half made
        assert one(conn, "SELECT to_regclass(%s) IS NULL AS gone", [f"pgjobs.{last}"])
    conn.execute("SELECT * FROM pgjobs.reap()")
    assert last in partitions(conn)


def test_retention_drops_past_days_and_deletes_what_is_not_kept(conn: Conn) -> None:
    keep_forever = one(conn, "SELECT pgjobs.enqueue('t', ttl => 0)")
    not_kept = one(conn, "SELECT pgjobs.enqueue('t', ttl => -1)")
    expired = one(conn, "SELECT pgjobs.enqueue('t', ttl => 60)")
    fresh = one(conn, "SELECT pgjobs.enqueue('t', ttl => 60)")
    stray = one(conn, "SELECT pgjobs.enqueue('t', ttl => 60)")
    unfinished = one(conn, "SELECT pgjobs.enqueue('t', ttl => -1, priority => 9)")
    claim(conn, "w1", 5)
    conn.execute("SELECT pgjobs.complete_many(%s)", [[keep_forever, not_kept, expired, fresh, stray]])
    # A pass as if three days ago: history made from that day on; the job not kept is deleted.
    assert one(conn, "SELECT pgjobs._history_upkeep(1000, 7, now() - interval '3 days')") == 1
    two_days_ago = one(conn, "SELECT to_char(now() - interval '2 days', 'YYYYMMDD')")
    assert f"jobs_done_{two_days_ago}" in partitions(conn)
    conn.execute("UPDATE pgjobs.jobs SET expires_at = now() - interval '2 days' WHERE id = %s", [expired])
    # Older than any day made: it waits in jobs_done_other, deleted row by row once expired.
    conn.execute("UPDATE pgjobs.jobs SET expires_at = now() - interval '10 days' WHERE id = %s", [stray])
    part = one(conn, "SELECT tableoid::regclass::text FROM pgjobs.jobs WHERE id = %s", [stray])
    assert part == "pgjobs.jobs_done_other"
    conn.execute("UPDATE pgjobs.jobs SET completed_at = now() - interval '1 day' WHERE id = %s", [keep_forever])
    assert reap(conn)["deleted_jobs"] == 2  # the past day dropped with its job, and stray
    left = {r["id"] for r in conn.execute("SELECT id FROM pgjobs.jobs")}
    assert left == {keep_forever, fresh, unfinished}
    days = sorted(p for p in partitions(conn) if p[10:].isdigit())
    today = one(conn, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYYMMDD')")
    assert days[0] == f"jobs_done_{today}" and len(days) == 8  # today and 7 days ahead, none past


def test_every_status_change_is_an_event(conn: Conn) -> None:
    conn.execute("SELECT pgjobs.listen('pgjobs.events')")
    a = one(conn, "SELECT pgjobs.enqueue('t')")
    b = one(conn, "SELECT pgjobs.enqueue('t', priority => 1)")
    claim(conn, "w1", 1)
    conn.execute("SELECT pgjobs.complete(%s)", [a])
    conn.execute("SELECT pgjobs.cancel(%s)", [b])
    conn.execute("UPDATE pgjobs.jobs SET meta = '{}'")  # no status change, no event
    items = [i for n in conn.notifies(timeout=0.5) for i in n.payload.split(",")]
    assert items == [f"{a}:queued", f"{b}:queued", f"{a}:active", f"{a}:complete", f"{b}:aborted"]
    many = [r["id"] for r in conn.execute("""SELECT id FROM pgjobs.enqueue_many('[{"task": "t"}, {"task": "t"}]')""")]
    items = [i for n in conn.notifies(timeout=0.5) for i in n.payload.split(",")]
    assert items == [f"{i}:queued" for i in many]
    conn.execute("SET pgjobs.events = 'off'")
    one(conn, "SELECT pgjobs.enqueue('t')")
    assert list(conn.notifies(timeout=0.3)) == []


def test_announcements_are_sent_only_while_a_live_session_asked_for_them(dsn: str, conn: Conn) -> None:
    def heard(channel: str) -> list[str]:
        one(conn, "SELECT pgjobs.enqueue('t')")
        return [n.channel for n in conn.notifies(timeout=0.3) if n.channel == channel]

    conn.execute('LISTEN "pgjobs.events"')  # a bare LISTEN does not ask for them
    assert heard("pgjobs.events") == []
    with psycopg.connect(dsn, autocommit=True) as other:
        other.execute("SELECT pgjobs.listen('pgjobs.events')")
        assert heard("pgjobs.events") == ["pgjobs.events"]
        other.execute("SELECT pgjobs.unlisten('pgjobs.events')")
        assert heard("pgjobs.events") == []
        other.execute("SELECT pgjobs.listen('pgjobs.events')")
        assert heard("pgjobs.events") == ["pgjobs.events"]
        pid = other.info.backend_pid
    # The session ended without unlisten: its request lapses with it.
    while one(conn, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", [pid]):
        time.sleep(0.01)
    assert heard("pgjobs.events") == []


def test_listen_takes_only_the_announcement_channels(conn: Conn) -> None:
    for channel in ("pgjobs.queue.default", "pgjobs.cancel", "anything", None):
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="channel"):
            conn.execute("SELECT pgjobs.listen(%s)", [channel])


def test_register_refuses_a_missing_heart_rate(conn: Conn) -> None:
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="heart_rate"):
        conn.execute("SELECT pgjobs.worker_register('w', 'h', 1, 'u', '{default}', 1, NULL)")
