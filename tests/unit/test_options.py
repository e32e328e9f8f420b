"""Pure functions: enqueue option parsing, DSN redaction, the SQL files shipped."""

from __future__ import annotations

import argparse
import datetime as dt
import math

import psycopg
import pytest
from psycopg.errors import (
    AdminShutdown,
    DeadlockDetected,
    InsufficientPrivilege,
    InvalidParameterValue,
    ReadOnlySqlTransaction,
    SerializationFailure,
    TooManyConnections,
    UndefinedTable,
)

import pgjobs
from pgjobs import ArgumentError, _sql, cli, migrations
from pgjobs._database import needs_reconnect, redact, session_params, transient


def test_job_maps_options_to_columns() -> None:
    request = pgjobs.job(
        "t", retries=2, timeout=dt.timedelta(minutes=1), retry_backoff=True, ttl=dt.timedelta(days=2), delay=5
    )
    o = request.options
    assert (o["max_attempts"], o["timeout"], o["ttl"], o["delay"]) == (3, 60.0, 172800, 5.0)
    assert math.isinf(o["retry_backoff"])
    assert pgjobs.job("t", retry_backoff=False).options["retry_backoff"] == 0.0
    assert pgjobs.job("t").options["max_attempts"] is None  # the database's default applies


def test_the_enqueue_many_document_carries_only_what_was_given() -> None:
    when = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    doc = pgjobs.job("t", 1, scheduled=when, retry_backoff=True).document()
    assert doc == {"task": "t", "args": [1], "scheduled_at": when.isoformat(), "retry_backoff": "Infinity"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"priority": 1.5}, "priority must be an integer"),
        ({"priority": True}, "priority must be an integer"),
        ({"delay": float("inf")}, "delay"),
        ({"retry_backoff": -1}, "retry_backoff"),
        ({"args": "abc"}, "args must be a list or a dict"),
        ({"meta": [1]}, "meta must be a dict"),
    ],
)
def test_bad_options_are_refused(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(ArgumentError, match=match):
        pgjobs.job("t", **kwargs)  # type: ignore[arg-type]


def test_a_task_needs_a_name_or_a_task() -> None:
    with pytest.raises(ArgumentError, match="task must be"):
        pgjobs.job(42)  # type: ignore[arg-type]


def test_unknown_task_options_are_refused_at_decoration() -> None:
    with pytest.raises(TypeError, match="unknown task option"):
        pgjobs.task(name="x.y", retrys=3)


def test_task_names_default_to_module_and_function() -> None:
    @pgjobs.task
    def some_function() -> int:
        return 1

    assert some_function.name == f"{__name__}.test_task_names_default_to_module_and_function.<locals>.some_function"
    assert some_function() == 1


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        ("postgresql://me:s3cret@db:5432/app", "postgresql://me:***@db:5432/app"),
        ("postgresql://me@db/app", "postgresql://me@db/app"),
        ("host=db password=s3cret user=me", "host=db password=*** user=me"),
        ("host=db password='s3 cret' user=me", "host=db password=*** user=me"),
        ("postgresql://db/app?user=me&password=s3cret", "postgresql://db/app?user=me&password=***"),
    ],
)
def test_redact_hides_passwords(dsn: str, shown: str) -> None:
    assert redact(dsn) == shown


def test_migrations_are_numbered_without_gaps_and_have_down_files() -> None:
    found = migrations.available()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert (found[0].version, found[0].name) == (1, "baseline")
    irreversible: set[int] = set()  # versions shipped without a down file, each with its reason
    for m in found:
        assert m.up.strip() and (m.down.strip() if m.version not in irreversible else not m.reversible)


def test_every_named_query_parses() -> None:
    names = set(_sql.queries())
    assert {"job_enqueue", "job_dequeue", "job_complete_many", "migration_lock"} <= names
    assert set(_sql.queries("django.sql")) == {"django_job_enqueue", "django_job_get"}
    for query in [*_sql.queries().values(), *_sql.queries("django.sql").values()]:
        assert query.as_string(None).strip()


def test_another_command_takes_the_worker_options_of_pgjobs_worker() -> None:
    """Frameworks (django-admin pgjobs_worker) add the same options, with MODULE optional."""
    ours = argparse.ArgumentParser()
    cli.add_worker_arguments(ours, modules="*")
    theirs = cli._parser().parse_args(["worker", "app.tasks", "-q", "a", "-q", "b", "--executor", "process"])
    mine = ours.parse_args(["-q", "a", "-q", "b", "--executor", "process"])
    assert {k: v for k, v in vars(theirs).items() if k not in ("command", "func", "log_level", "dsn", "modules")} == {
        k: v for k, v in vars(mine).items() if k != "modules"
    }
    assert (mine.modules, theirs.modules) == ([], ["app.tasks"])
    with pytest.raises(SystemExit):
        cli._parser().parse_args(["worker"])  # pgjobs worker still needs a module


def test_sessions_die_with_their_host_unless_the_dsn_says_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGJOBS_DEAD_PEER_TIMEOUT", raising=False)
    params = session_params("postgresql://u@db/x", "pgjobs listen w1")
    assert (params["keepalives_idle"], params["keepalives_interval"], params["keepalives_count"]) == ("10", "5", "4")
    assert (params["tcp_user_timeout"], params["connect_timeout"]) == ("30000", "10")
    assert params["application_name"] == "pgjobs listen w1"
    assert "-c tcp_keepalives_idle=10" in params["options"] and "-c tcp_user_timeout=30000" in params["options"]
    assert "-c idle_in_transaction_session_timeout=10s" in params["options"]
    # What the DSN sets wins, its options are kept, and nothing it names is set twice.
    mine = session_params("host=db keepalives_idle=60 application_name=app options='-c tcp_keepalives_idle=60'")
    assert "keepalives_idle" not in mine and "application_name" not in mine
    assert (
        mine["options"].startswith("-c tcp_keepalives_idle=60 ") and mine["options"].count("tcp_keepalives_idle") == 1
    )
    monkeypatch.setenv("PGJOBS_DEAD_PEER_TIMEOUT", "6")
    assert session_params("host=db")["tcp_user_timeout"] == "6000"
    monkeypatch.setenv("PGJOBS_DEAD_PEER_TIMEOUT", "soon")
    with pytest.raises(pgjobs.ConfigurationError, match="PGJOBS_DEAD_PEER_TIMEOUT"):
        session_params("host=db")


def test_behind_a_transaction_pooler_sessions_carry_no_state(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PGJOBS_DEAD_PEER_TIMEOUT", raising=False)
    monkeypatch.setenv("PGJOBS_POOLED", "1")
    pooled = session_params("host=bouncer")
    assert "options" not in pooled and pooled["prepare_threshold"] is None
    assert pooled["keepalives_idle"] == "10"  # the client's own end still gives up on a dead peer
    direct = session_params("host=db", direct=True)  # a listen DSN that bypasses the pooler
    assert "prepare_threshold" not in direct and "-c tcp_user_timeout=30000" in direct["options"]
    monkeypatch.setenv("PGJOBS_POOLED", "maybe")
    with pytest.raises(pgjobs.ConfigurationError, match="PGJOBS_POOLED"):
        session_params("host=db")


def test_transient_errors_are_told_from_mistakes() -> None:
    assert transient(psycopg.OperationalError("connection lost"))  # no SQLSTATE: the connection failed
    for cls in (ReadOnlySqlTransaction, TooManyConnections, AdminShutdown, SerializationFailure, DeadlockDetected):
        assert transient(cls()), cls
    for cls in (InvalidParameterValue, UndefinedTable, InsufficientPrivilege):
        assert not transient(cls()), cls
    assert needs_reconnect(ReadOnlySqlTransaction()) and not needs_reconnect(SerializationFailure())
