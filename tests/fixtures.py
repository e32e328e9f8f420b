"""Database fixtures: one server per session, a migrated template, a fresh database per test.

The server is ``PGJOBS_TEST_DSN`` when set, else an embedded PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import fcntl
import itertools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

import pgjobs
from pgjobs import embedded

DictConn = psycopg.Connection[dict[str, Any]]

_counter = itertools.count()


@pytest.fixture(scope="session")
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    explicit = os.environ.get("PGJOBS_TEST_DSN")
    if explicit:
        yield explicit
        return
    path = Path(tmp_path_factory.mktemp("embedded")) / "data"
    yield embedded.start(path)
    embedded.stop(path)


def _admin(server_dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(server_dsn, autocommit=True)


def _create(server_dsn: str, name: str, template: str | None = None) -> str:
    with _admin(server_dsn) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        if template:
            admin.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(template))
            )
        else:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return make_conninfo(server_dsn, dbname=name)


def _drop(server_dsn: str, name: str) -> None:
    with _admin(server_dsn) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def template_db(server_dsn: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = f"pgjobs_template_{os.getpid()}"
    # Parallel test processes (pytest -n) migrate one at a time: the first migration on a server
    # creates its roles, and two at once would both try.
    with (tmp_path_factory.getbasetemp().parent / "pgjobs-migrate.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        pgjobs.migrate(_create(server_dsn, name))
    yield name
    _drop(server_dsn, name)


@pytest.fixture
def dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh database holding the current pgjobs schema."""
    name = f"pgjobs_test_{os.getpid()}_{next(_counter)}"
    yield _create(server_dsn, name, template_db)
    _drop(server_dsn, name)


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """A fresh database without the pgjobs schema."""
    name = f"pgjobs_empty_{os.getpid()}_{next(_counter)}"
    yield _create(server_dsn, name)
    _drop(server_dsn, name)


@pytest.fixture
def conn(dsn: str) -> Iterator[psycopg.Connection[dict[str, Any]]]:
    """An autocommit connection to the test database, returning dict rows."""
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as c:
        yield c


@pytest.fixture
def env_dsn(dsn: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The test database as PGJOBS_DSN, for code that uses the default pool."""
    monkeypatch.setenv("PGJOBS_DSN", dsn)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    pgjobs.close()
    yield dsn
    pgjobs.close()


@pytest.fixture
def login(
    dsn: str, conn: psycopg.Connection[dict[str, Any]]
) -> Iterator[Callable[[str], psycopg.Connection[dict[str, Any]]]]:
    """login(group) -> a connection as a fresh login role that is a member of group."""
    made: list[str] = []
    opened: list[DictConn] = []

    def make(group: str) -> DictConn:
        name = f"pgjobs_test_{group.split('_')[1]}_{os.getpid()}_{len(made)}"
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(sql.Identifier(name), sql.Identifier(group)))
        made.append(name)
        c = psycopg.connect(make_conninfo(dsn, user=name), autocommit=True, row_factory=dict_row)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()
    for name in made:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(name)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))
