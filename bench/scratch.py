"""A scratch database for a benchmark run: created on the server, migrated, dropped afterwards."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

import pgjobs


@contextlib.contextmanager
def scratch_database(server: str, label: str) -> Iterator[str]:
    """A fresh database named after label and this process on the server of that DSN, with the
    pgjobs schema of the pgjobs this process imports; yields its DSN."""
    name = f"pgjobs_{label}_{os.getpid()}"
    with psycopg.connect(server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    dsn = make_conninfo(server, dbname=name)
    try:
        pgjobs.migrate(dsn)
        yield dsn
    finally:
        with psycopg.connect(server, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
