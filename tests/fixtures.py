"""Database fixtures: one server per session, a migrated template, a fresh database per test.

The server is ``PGJOBS_TEST_DSN`` when set, else an embedded PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

import pgjobs
from pgjobs import embedded

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
def template_db(server_dsn: str) -> Iterator[str]:
    name = f"pgjobs_template_{os.getpid()}"
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
