"""The one layer that talks to PostgreSQL: finding the DSN, connecting, running named queries."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from . import embedded
from .errors import ConfigurationError

Row = dict[str, Any]

_embedded_dsn: str | None = None


def resolve_dsn(dsn: str | None = None) -> str:
    """The DSN to use: the argument, ``PGJOBS_DSN``, ``DATABASE_URL``, else the embedded server."""
    global _embedded_dsn
    for candidate in (dsn, os.environ.get("PGJOBS_DSN"), os.environ.get("DATABASE_URL")):
        if candidate:
            return candidate
    if _embedded_dsn is None:
        _embedded_dsn = embedded.start()
    return _embedded_dsn


def uses_embedded(dsn: str | None = None) -> bool:
    """Whether resolve_dsn(dsn) falls back to the embedded server."""
    return not (dsn or os.environ.get("PGJOBS_DSN") or os.environ.get("DATABASE_URL"))


_URI_PASSWORD = re.compile(r"^(\w+://[^:/@]*:)([^@]+)(@)")
_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def redact(dsn: str) -> str:
    """The DSN with any password replaced by ``***``, for logs and messages."""
    dsn = _URI_PASSWORD.sub(r"\1***\3", dsn)
    dsn = _KV_PASSWORD.sub(r"\1***", dsn)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", dsn)


def _connect_error(dsn: str, exc: Exception) -> ConfigurationError:
    reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    reason = reason.replace(dsn, redact(dsn))
    return ConfigurationError(f"cannot connect to PostgreSQL at {redact(dsn)}: {reason}")


def connect(dsn: str, *, autocommit: bool = True) -> psycopg.Connection[Row]:
    """A connection returning dict rows; a wrong DSN raises ConfigurationError with one line."""
    try:
        return psycopg.connect(dsn, autocommit=autocommit, row_factory=dict_row)
    except (psycopg.Error, ValueError) as exc:
        raise _connect_error(dsn, exc) from None


async def connect_async(dsn: str, *, autocommit: bool = True) -> psycopg.AsyncConnection[Row]:
    """The async twin of connect()."""
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit, row_factory=dict_row)
    except (psycopg.Error, ValueError) as exc:
        raise _connect_error(dsn, exc) from None


def fetch(conn: psycopg.Connection[Any], query: sql.SQL | sql.Composed, params: Any = None) -> list[Row]:
    """Run one query and return its rows as dicts (the caller's transaction, if any, is kept)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.description else []


async def fetch_async(
    conn: psycopg.AsyncConnection[Any], query: sql.SQL | sql.Composed, params: Any = None
) -> list[Row]:
    """The async twin of fetch()."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall() if cur.description else []


def listen_query(channels: Sequence[str]) -> sql.Composed:
    """``LISTEN`` on each channel, the names quoted as identifiers."""
    return sql.SQL("; ").join(sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in channels)
