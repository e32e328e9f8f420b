"""The one layer that talks to PostgreSQL: finding the DSN, connecting, running named queries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from . import embedded
from .errors import ConfigurationError

Row = dict[str, Any]

logger = logging.getLogger("pgjobs")

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


DEAD_PEER_TIMEOUT = 30.0


def dead_peer_timeout() -> float:
    """Seconds after which a silent peer counts as gone: ``PGJOBS_DEAD_PEER_TIMEOUT``, default 30."""
    text = os.environ.get("PGJOBS_DEAD_PEER_TIMEOUT")
    if not text:
        return DEAD_PEER_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 2 <= value <= 86400:
        raise ConfigurationError(f"PGJOBS_DEAD_PEER_TIMEOUT must be 2 to 86400 seconds, got {text!r}")
    return value


def session_params(dsn: str, application_name: str = "pgjobs") -> dict[str, Any]:
    """Connection parameters that make a session die with its host, both ends, unless the DSN sets
    them itself: a host that vanishes (power loss, a partition) leaves the server with a session
    that TCP alone keeps for hours, holding its locks, and the client waiting as long.

    With T = dead_peer_timeout(): keepalives after T/3 s idle, every T/6 s, 4 unanswered ones end the
    session (T in all), unacknowledged data ends it after T (``tcp_user_timeout``); a connection
    attempt gives up after T/3; a transaction left idle is ended after T/3 so that a frozen client
    cannot hold row locks. The server side gets the same through ``options``. The session is named
    (``application_name``, truncated by the server to 63 bytes) so operators can tell them apart.
    """
    t = dead_peer_timeout()
    try:
        given = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return {}  # connect() reports the malformed DSN
    idle, interval, user_timeout = str(max(1, round(t / 3))), str(max(1, round(t / 6))), str(round(t * 1000))
    client = {
        "keepalives": "1", "keepalives_idle": idle, "keepalives_interval": interval, "keepalives_count": "4",
        "tcp_user_timeout": user_timeout, "connect_timeout": str(max(2, round(t / 3))),
        "application_name": application_name,
    }  # fmt: skip
    params = {k: v for k, v in client.items() if k not in given}
    server = {
        "tcp_keepalives_idle": idle, "tcp_keepalives_interval": interval, "tcp_keepalives_count": "4",
        "tcp_user_timeout": user_timeout, "idle_in_transaction_session_timeout": f"{idle}s",
    }  # fmt: skip
    options = str(given.get("options") or "")
    extra = " ".join(f"-c {k}={v}" for k, v in server.items() if k not in options)
    if extra:
        params["options"] = f"{options} {extra}".strip()
    return params


def connect(dsn: str, *, autocommit: bool = True, name: str = "pgjobs") -> psycopg.Connection[Row]:
    """A connection returning dict rows, with session_params() (``name`` is its application_name);
    a wrong DSN raises ConfigurationError with one line."""
    try:
        return psycopg.connect(dsn, autocommit=autocommit, row_factory=dict_row, **session_params(dsn, name))
    except (psycopg.Error, ValueError) as exc:
        raise _connect_error(dsn, exc) from None


async def connect_async(dsn: str, *, autocommit: bool = True, name: str = "pgjobs") -> psycopg.AsyncConnection[Row]:
    """The async twin of connect()."""
    try:
        return await psycopg.AsyncConnection.connect(
            dsn, autocommit=autocommit, row_factory=dict_row, **session_params(dsn, name)
        )
    except (psycopg.Error, ValueError) as exc:
        raise _connect_error(dsn, exc) from None


def fetch(conn: psycopg.Connection[Any], query: sql.SQL | sql.Composed, params: Any = None) -> list[Row]:
    """Run one query and return its rows as dicts (the caller's transaction, if any, is kept)."""
    with conn.cursor(row_factory=dict_row) as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.rownumber is not None else []  # description would build Column objects


async def fetch_async(
    conn: psycopg.AsyncConnection[Any], query: sql.SQL | sql.Composed, params: Any = None
) -> list[Row]:
    """The async twin of fetch()."""
    async with conn.cursor(row_factory=dict_row) as cur:
        await cur.execute(query, params)
        return await cur.fetchall() if cur.rownumber is not None else []


def listen_query(channels: Sequence[str]) -> sql.Composed:
    """``LISTEN`` on each channel, the names quoted as identifiers."""
    return sql.SQL("; ").join(sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in channels)


class Link:
    """One long-lived async connection, reopened with backoff and jitter after it breaks.

    :param name: what the connection is for, in logs; with ``owner`` its application_name.
    :param setup: run on each new connection (LISTEN, re-registration…) before it is handed out.
    :param owner: who holds it (a worker id), so that operators can tell sessions apart.
    """

    def __init__(
        self,
        dsn: str,
        name: str,
        setup: Callable[[psycopg.AsyncConnection[Row]], Awaitable[None]] | None = None,
        *,
        owner: str | None = None,
    ) -> None:
        self.dsn, self.name, self.setup = dsn, name, setup
        self.application_name = f"pgjobs {name} {owner}" if owner else f"pgjobs {name}"
        self.conn: psycopg.AsyncConnection[Row] | None = None
        self.failures = 0

    async def get(self, deadline: float | None = None) -> psycopg.AsyncConnection[Row]:
        """The connection, reconnecting until it works (or, past the monotonic deadline, raising)."""
        delay = 0.05
        while self.conn is None or self.conn.closed:
            try:
                conn = await connect_async(self.dsn, name=self.application_name)
                if self.setup is not None:
                    await self.setup(conn)
                self.conn = conn
                if self.failures:
                    logger.info("%s connection restored", self.name)
                self.failures = 0
            except (ConfigurationError, psycopg.OperationalError) as exc:
                self.failures += 1
                if self.failures == 1 or self.failures % 20 == 0:
                    logger.warning("%s connection failed (%s); retrying", self.name, first_line(exc))
                if deadline is not None and time.monotonic() > deadline:
                    raise
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                delay = min(delay * 2, 5.0)
        return self.conn

    async def broken(self, exc: BaseException) -> None:
        """Drop the connection after an error; the next get() reconnects."""
        logger.warning("%s connection lost: %s", self.name, first_line(exc))
        await self.close()

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line logs."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
