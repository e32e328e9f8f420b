"""The one layer that talks to PostgreSQL: finding the DSN, connecting, running named queries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.pq import TransactionStatus
from psycopg.rows import AsyncRowFactory, RowFactory, dict_row
from psycopg.types.json import set_json_loads

from . import embedded
from .errors import ConfigurationError, DatabaseUnavailable

try:  # pgjobs[fast]: decodes a job's arguments in under a third of the standard parser's time
    import orjson
except ImportError:  # the standard parser then
    orjson = None  # type: ignore[assignment]

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
    """One line saying why; DatabaseUnavailable when a later attempt may succeed (the server is
    down, starting, full, or out of reach), ConfigurationError when the settings are wrong."""
    text = str(exc).strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("Is the server")]
    reason = lines[-1] if lines else type(exc).__name__
    reason = reason.replace(dsn, redact(dsn))
    message = f"cannot connect to PostgreSQL at {redact(dsn)}: {reason}"
    if _REFUSED_OPTIONS.search(text):
        return ConfigurationError(
            f"{message} (a pooler, refusing the options that the DSN or PGOPTIONS sets: set them on the server)"
        )
    if isinstance(exc, psycopg.OperationalError) and not _FATAL_CONNECT.search(text):
        return DatabaseUnavailable(message)
    return ConfigurationError(message)


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


def pooled(dsn: str | None = None) -> bool:
    """Whether the DSN leads to a pooler that hands each transaction any server session (PgBouncer
    with ``pool_mode = transaction``): then no session state is set or relied on (no startup
    ``options``, no prepared statements, no LISTEN).

    ``PGJOBS_POOLED`` says so for every DSN of the process. Without it, a DSN counts as pooled from
    the moment one of its connections was refused the startup ``options`` (see connect()): ask with
    the DSN, after its first connection, to learn that too."""
    text = os.environ.get("PGJOBS_POOLED", "").strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text not in ("", "0", "false", "no", "off"):
        raise ConfigurationError(f"PGJOBS_POOLED must be 1 or 0 (true/false, yes/no, on/off), got {text!r}")
    return dsn is not None and _pooler_key(dsn) in _poolers


# What a pooler answers to the startup ``options`` pgjobs sends: PgBouncer up to 1.19 refuses the
# parameter ("unsupported startup parameter: options"), later ones the settings in it
# ("unsupported startup parameter in options: tcp_keepalives_idle"); hosted poolers say the same.
_REFUSED_OPTIONS = re.compile(r"unsupported startup parameter(:\s*options\b| in options)", re.IGNORECASE)

# The DSNs found to lead to a pooler in this process (see pooled()), and those it was said of.
_poolers: set[object] = set()
_announced: set[object] = set()
_poolers_lock = threading.Lock()


def _pooler_key(dsn: str) -> object:
    """The DSN as its parameters, so that the same target written another way is the same."""
    try:
        return tuple(sorted((k, str(v)) for k, v in conninfo_to_dict(dsn).items()))
    except psycopg.ProgrammingError:
        return dsn


def _pooler_refused(dsn: str, exc: psycopg.OperationalError, params: dict[str, Any], direct: bool) -> bool:
    """Whether exc is a pooler refusing the startup ``options`` that session_params() added, so that
    an attempt without them may succeed. Such a refusal makes the DSN pooled(dsn) from then on;
    ``direct``, it raises ConfigurationError instead."""
    if not _REFUSED_OPTIONS.search(str(exc)):
        return False
    with _poolers_lock:
        _poolers.add(_pooler_key(dsn))
    if direct:
        raise ConfigurationError(
            f"{redact(dsn)} leads to a pooler, not to PostgreSQL itself (it refused the startup parameter "
            "options): this connection needs a server session of its own, give PostgreSQL's own DSN"
        )
    return "options" in params  # else the DSN's own options: _connect_error says so


def _switched(dsn: str) -> None:
    """Say once per DSN, at INFO, that pgjobs found a pooler behind it and works in pooled mode."""
    key = _pooler_key(dsn)
    with _poolers_lock:
        if key in _announced:
            return
        _announced.add(key)
    logger.info(
        "%s is a pooler (it refused the startup parameter options): running in pooled mode (no startup "
        "options, prepared statements or LISTEN through it); set PGJOBS_POOLED=1 to say so",
        redact(dsn),
    )


def session_params(dsn: str, application_name: str = "pgjobs", *, direct: bool = False) -> dict[str, Any]:
    """Connection parameters that make a session die with its host, both ends, unless the DSN sets
    them itself: a host that vanishes (power loss, a partition) leaves the server with a session
    that TCP alone keeps for hours, holding its locks, and the client waiting as long.

    With T = dead_peer_timeout(): keepalives after T/3 s idle, every T/6 s, 4 unanswered ones end the
    session (T in all), unacknowledged data ends it after T (``tcp_user_timeout``); a connection
    attempt gives up after T/3; a transaction left idle is ended after T/3 so that a frozen client
    cannot hold row locks. The server side gets the same through ``options``. The session is named
    (``application_name``, truncated by the server to 63 bytes) so operators can tell them apart.

    Behind a transaction pooler (pooled(dsn), unless ``direct``: a DSN that bypasses it) the server
    sessions are the pooler's: no ``options`` (PgBouncer refuses them), and statements are not
    prepared (a prepared statement lives in one server session, the next transaction may get another).
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
    params: dict[str, Any] = {k: v for k, v in client.items() if k not in given}
    server = {
        "tcp_keepalives_idle": idle, "tcp_keepalives_interval": interval, "tcp_keepalives_count": "4",
        "tcp_user_timeout": user_timeout, "idle_in_transaction_session_timeout": f"{idle}s",
    }  # fmt: skip
    if pooled(dsn) and not direct:
        params["prepare_threshold"] = None
        return params
    options = str(given.get("options") or "")
    extra = " ".join(f"-c {k}={v}" for k, v in server.items() if k not in options)
    if extra:
        params["options"] = f"{options} {extra}".strip()
    return params


def connect(
    dsn: str, *, autocommit: bool = True, name: str = "pgjobs", direct: bool = False
) -> psycopg.Connection[Row]:
    """A connection returning dict rows, with session_params() (``name`` is its application_name;
    ``direct``: the DSN must lead to PostgreSQL itself, not to a pooler); a wrong DSN raises
    ConfigurationError with one line.

    A DSN found to lead to a pooler (it refuses the startup ``options``: PgBouncer) is connected to
    again at once without them, and is pooled(dsn) from then on; ``direct``, it is refused instead."""
    try:
        params = session_params(dsn, name, direct=direct)
        try:
            conn = psycopg.connect(dsn, autocommit=autocommit, row_factory=dict_row, **params)
        except psycopg.OperationalError as exc:
            if not _pooler_refused(dsn, exc, params, direct):
                raise
            params = session_params(dsn, name)  # pooled now
            conn = psycopg.connect(dsn, autocommit=autocommit, row_factory=dict_row, **params)
            _switched(dsn)
    except (psycopg.Error, ValueError) as exc:
        raise _connect_error(dsn, exc) from None
    _decode_json(conn)
    return conn


async def connect_async(
    dsn: str, *, autocommit: bool = True, name: str = "pgjobs", direct: bool = False
) -> psycopg.AsyncConnection[Row]:
    """The async twin of connect()."""
    try:
        params = session_params(dsn, name, direct=direct)
        try:
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit, row_factory=dict_row, **params)
        except psycopg.OperationalError as exc:
            if not _pooler_refused(dsn, exc, params, direct):
                raise
            params = session_params(dsn, name)  # pooled now
            conn = await psycopg.AsyncConnection.connect(dsn, autocommit=autocommit, row_factory=dict_row, **params)
            _switched(dsn)
    except (psycopg.Error, ValueError) as exc:
        raise _connect_error(dsn, exc) from None
    _decode_json(conn)
    return conn


def _decode_json(conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any]) -> None:
    set_json_loads(_loads if orjson is not None else _standard_loads, conn)


@dataclass(frozen=True)
class Undecodable:
    """A json or jsonb value Python cannot decode (nested past its recursion limit, an integer of
    thousands of digits): why, and the start of its text. It stands in for the value, so that one
    such job fails alone (a worker records it failed) instead of failing every read of its rows."""

    reason: str
    text: str

    @classmethod
    def of(cls, raw: bytes | str, exc: BaseException, shown: int = 200) -> Undecodable:
        text = raw if isinstance(raw, str) else raw.decode("utf-8", "replace")
        return cls(str(exc)[:shown] or type(exc).__name__, text[:shown] + ("…" if len(text) > shown else ""))

    def __str__(self) -> str:
        return f"cannot be decoded: {self.reason}. Its text begins: {self.text}"


def _standard_loads(data: bytes | bytearray | memoryview | str) -> Any:
    raw = data if isinstance(data, str) else bytes(data)
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return Undecodable.of(raw, exc)


# orjson reads an integer past 64 bits as a float, silently: a document with 19 digits in a row
# (in a number or in a string) goes to the standard parser, which keeps every digit.
_DIGITS = bytes(49 if 48 <= b <= 57 else 48 for b in range(256))  # ASCII digits to "1", the rest "0"
_LONG_RUN = b"1" * 19


def _loads(data: bytes | bytearray | memoryview | str) -> Any:
    raw = data.encode() if isinstance(data, str) else bytes(data)
    if _LONG_RUN not in raw.translate(_DIGITS):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass  # what the standard parser accepts and orjson does not (a lone surrogate, depth past 255)
    return _standard_loads(raw)


def fetch(
    conn: psycopg.Connection[Any],
    query: sql.SQL | sql.Composed,
    params: Any = None,
    *,
    row_factory: RowFactory[Any] = dict_row,
) -> list[Any]:
    """Run one query and return its rows as dicts (the caller's transaction, if any, is kept)."""
    with conn.cursor(row_factory=row_factory) as cur:
        cur.execute(query, params)
        return cur.fetchall() if cur.rownumber is not None else []  # description would build Column objects


async def fetch_async(
    conn: psycopg.AsyncConnection[Any],
    query: sql.SQL | sql.Composed,
    params: Any = None,
    *,
    row_factory: AsyncRowFactory[Any] = dict_row,
    binary: bool = False,
) -> list[Any]:
    """The async twin of fetch(); ``row_factory=tuple_row`` where building dicts costs too much,
    ``binary`` where many rows come back (timestamps and jsonb load faster)."""
    async with conn.cursor(row_factory=row_factory) as cur:
        await cur.execute(query, params, binary=binary)
        return await cur.fetchall() if cur.rownumber is not None else []


def int_array(values: Iterable[int | None]) -> str:
    """Integers (None as NULL) as one PostgreSQL array literal, for a parameter cast to an integer
    array in the query: psycopg dumps a list element by element in Python (70 us for a worker's 50
    ids and attempts), the literal costs a join."""
    return "{" + ",".join(map(str, values)).replace("None", "NULL") + "}"


def listen_query(channels: Sequence[str]) -> sql.Composed:
    """``LISTEN`` on each channel, the names quoted as identifiers."""
    return sql.SQL("; ").join(sql.SQL("LISTEN {}").format(sql.Identifier(c)) for c in channels)


# SQLSTATE classes and codes a later attempt can mend: connection exceptions, resources (too many
# clients, disk full, out of memory), operator intervention (shutdown, cannot connect now, query
# cancelled), system errors, transaction rollbacks (serialization failure, deadlock), and these.
_TRANSIENT_CLASSES = ("08", "53", "57", "58", "40")
_TRANSIENT_CODES = {
    "25006",  # read_only_sql_transaction: a standby, or writes stopped (default_transaction_read_only)
    "25P03",  # idle_in_transaction_session_timeout
    "55P03",  # lock_not_available
    "55006",  # object_in_use
    "72000",  # snapshot_too_old
}
# Errors that leave the session where it is useless (a standby, a dying server): reconnect, so that
# a multi-host DSN finds the primary.
_RECONNECT_CODES = {"25006", "57P01", "57P02", "57P03", "25P03"}
# Connection failures no retry mends: the configuration is wrong.
_FATAL_CONNECT = re.compile(
    r"password authentication failed|authentication failed|no pg_hba\.conf entry|role \".*\" does not exist"
    r"|database \".*\" does not exist|invalid connection option|invalid (sslmode|integer) value|"
    r"password supplied|requires a password|server does not support SSL|invalid (URI|dsn)"
    r"|unsupported startup parameter",  # a pooler (PgBouncer) refusing what the DSN asks for
    re.IGNORECASE,
)


def transient(exc: BaseException) -> bool:
    """Whether a later attempt may succeed where exc failed (the database, not the request, is at fault)."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if not isinstance(exc, psycopg.Error):
        return False
    state = exc.sqlstate
    if state is None:  # no answer from the server: the connection itself failed
        return isinstance(exc, psycopg.OperationalError)
    return state.startswith(_TRANSIENT_CLASSES) or state in _TRANSIENT_CODES


def needs_reconnect(exc: BaseException) -> bool:
    """Whether the session that raised exc should be replaced by a new one."""
    if not isinstance(exc, psycopg.Error):
        return False
    return exc.sqlstate is None or exc.sqlstate.startswith("08") or exc.sqlstate in _RECONNECT_CODES


class Outage:
    """Whether the database is failing one process now, for one log line when that starts and one
    when it ends (not one per retry), and a shared backoff with jitter while it lasts."""

    def __init__(self, log: logging.Logger = logger, first_delay: float = 0.05, max_delay: float = 5.0) -> None:
        self.log, self.first_delay, self.max_delay = log, first_delay, max_delay
        self.since: float | None = None
        self.retries = 0

    def failed(self, what: str, exc: BaseException) -> None:
        """Note a transient failure of ``what`` (claim, heartbeat…)."""
        self.retries += 1
        if self.since is None:
            self.since = time.monotonic()
            self.log.warning("database unavailable (%s: %s); retrying with backoff", what, first_line(exc))

    def ok(self) -> None:
        """Note a statement that wrote: the database works again."""
        if self.since is not None:
            self.log.warning(
                "database available again after %.1f s (%d retries)", time.monotonic() - self.since, self.retries
            )
            self.since, self.retries = None, 0

    @property
    def delay(self) -> float:
        """Seconds to wait before the next attempt: doubling while the outage lasts, jittered."""
        base = min(self.first_delay * 2 ** min(self.retries, 20), self.max_delay)
        return float(base * random.uniform(0.5, 1.5))

    async def backoff(self) -> None:
        await asyncio.sleep(self.delay)


class Link:
    """One long-lived async connection, reopened with backoff and jitter after it breaks.

    :param name: what the connection is for, in logs; with ``owner`` its application_name.
    :param owner: who holds it (a worker id), so that operators can tell sessions apart.
    :param outage: where failures are reported, for one log line per outage.
    """

    def __init__(
        self,
        dsn: str,
        name: str,
        *,
        owner: str | None = None,
        outage: Outage | None = None,
    ) -> None:
        self.dsn, self.name = dsn, name
        self.application_name = f"pgjobs {name} {owner}" if owner else f"pgjobs {name}"
        self.outage = outage or Outage()
        self.conn: psycopg.AsyncConnection[Row] | None = None

    async def get(self) -> psycopg.AsyncConnection[Row]:
        """The connection, reconnecting with backoff until it works (an outage is reported, not raised)."""
        while self.conn is None or self.conn.closed:
            try:
                self.conn = await connect_async(self.dsn, name=self.application_name)
            except ConfigurationError as exc:  # DatabaseUnavailable too: both may mend
                self.outage.failed(f"{self.name} connection", exc)
                await self.outage.backoff()
        return self.conn

    async def broken(self, exc: BaseException) -> None:
        """Drop the connection after an error; the next get() reconnects."""
        logger.debug("%s connection dropped: %s", self.name, first_line(exc))
        await self.close()

    async def close(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error):
                await conn.close()


class Pool:
    """A few connections that a process's services (claims, outcomes, heartbeats, the reaper, the
    scheduler) take one user at a time: a transaction never sees another user's statements.

    :param size: how many connections at most (one is enough for most workers).
    """

    def __init__(self, dsn: str, size: int = 1, *, owner: str | None = None, outage: Outage | None = None) -> None:
        if size < 1:
            raise ValueError("a pool needs at least one connection")
        self.outage = outage or Outage()
        self.links = [
            Link(dsn, "main" if size == 1 else f"main{i}", owner=owner, outage=self.outage) for i in range(size)
        ]
        self._free: asyncio.Queue[Link] | None = None

    @contextlib.asynccontextmanager
    async def connection(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        """A connection for one user. A transient error is reported to the outage (and a session
        it spoiled is replaced) before it propagates; a statement that wrote should call outage.ok()."""
        if self._free is None:
            self._free = asyncio.Queue()
            for link in self.links:
                self._free.put_nowait(link)
        link = await self._free.get()
        try:
            conn = await link.get()
            try:
                yield conn
            except psycopg.Error as exc:
                if transient(exc):
                    self.outage.failed(what, exc)
                if needs_reconnect(exc) or conn.closed:
                    await link.broken(exc)
                elif not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
                    with contextlib.suppress(psycopg.Error):
                        await conn.rollback()
                raise
        finally:
            self._free.put_nowait(link)

    async def close(self) -> None:
        for link in self.links:
            await link.close()


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line logs."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
