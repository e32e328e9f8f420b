"""Locks are pgjobs' own: a login with no pgjobs grant takes the advisory locks pgjobs used to
serialise on, and no claim, group, heartbeat or migration waits for it; no wait is unbounded."""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgjobs
from pgjobs import migrations
from pgjobs.errors import ConfigurationError
from pgjobs.metrics import DatabaseCollector

Conn = psycopg.Connection[dict[str, Any]]


@pytest.fixture
def stranger(dsn: str, conn: Conn) -> Iterator[psycopg.Connection[Any]]:
    """A session of a login that holds no pgjobs role and no grant."""
    name = f"stranger_{secrets.token_hex(4)}"
    conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    try:
        with psycopg.connect(make_conninfo(dsn, user=name), autocommit=True) as session:
            yield session
    finally:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def claim(conn: Conn, queue: str) -> list[int]:
    conn.execute("SET statement_timeout = '10s'")  # the code before this file's changes waited forever
    return [r["id"] for r in conn.execute("SELECT id FROM pgjobs.dequeue('w', ARRAY[%s], 5)", [queue])]


def test_a_squatted_advisory_lock_holds_up_no_claim_of_a_limited_queue(conn: Conn, stranger: Any) -> None:
    conn.execute("SELECT pgjobs.set_queue('limited', max_active => 5)")
    job_id = conn.execute("SELECT pgjobs.enqueue('t', queue => 'limited') AS id").fetchone()["id"]  # type: ignore[index]
    stranger.execute("SELECT pg_advisory_lock(1885957987, hashtext('limited'))")
    started = time.monotonic()
    assert claim(conn, "limited") == [job_id]
    assert time.monotonic() - started < 2


def test_a_squatted_advisory_lock_keeps_no_group_from_being_claimed(conn: Conn, stranger: Any) -> None:
    job_id = conn.execute("SELECT pgjobs.enqueue('t', group_key => 'customer:77') AS id").fetchone()["id"]  # type: ignore[index]
    stranger.execute("SELECT pg_advisory_lock(1885957986, hashtext('customer:77'))")
    assert claim(conn, "default") == [job_id]


def test_the_salt_of_the_group_locks_is_the_owners_alone(conn: Conn, login: Any) -> None:
    for group in ("pgjobs_worker", "pgjobs_client", "pgjobs_admin"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            login(group).execute("SELECT salt FROM pgjobs.lock_keys")
    (row,) = conn.execute("SELECT count(*) AS n, min(length(salt)) AS length FROM pgjobs.lock_keys").fetchall()
    assert (row["n"], row["length"]) == (1, 72)


def test_a_heartbeat_waits_a_second_at_most_for_a_lock(conn: Conn, dsn: str) -> None:
    conn.execute("SELECT pgjobs.worker_register('w', 'h', 1, 'u', '{default}', 1, 5)")
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT FROM pgjobs.workers WHERE id = 'w' FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(psycopg.errors.LockNotAvailable):
            conn.execute("SET statement_timeout = '10s'")
            conn.execute("SELECT * FROM pgjobs.worker_heartbeat('w')")
        assert time.monotonic() - started < 3


def test_migrate_names_who_holds_its_lock_instead_of_waiting_for_ever(
    dsn: str, stranger: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    stranger.execute("SELECT pg_advisory_lock(1885957987, 0)")
    monkeypatch.setattr(migrations, "LOCK_WAIT", 0.5)
    started = time.monotonic()
    with pytest.raises(ConfigurationError, match=r"another session holds pgjobs' migration lock .*pid \d+ \(stranger_"):
        pgjobs.migrate(dsn)
    assert time.monotonic() - started < 5
    stranger.execute("SELECT pg_advisory_unlock_all()")
    assert pgjobs.migrate(dsn) == []


def test_health_says_how_full_the_notify_queue_is(conn: Conn, dsn: str) -> None:
    # A session that LISTENs and sits in an open transaction holds the queue back; once it is full
    # (8 GB by default) every statement that notifies fails. Health and the metrics show it coming.
    rows = {(r["metric"], r["subject"]): r["value"] for r in conn.execute("SELECT * FROM pgjobs.health()")}
    usage = rows[("notify_queue_usage", "")]
    assert 0 <= usage < 0.01
    registry = CollectorRegistry()
    registry.register(DatabaseCollector(dsn))
    assert "pgjobs_notify_queue_usage " in generate_latest(registry).decode()
