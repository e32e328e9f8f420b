"""Running one statement from Python, sync or async, on the caller's connection or on a
process-wide pool: the only sync- and async-specific code of the client API.

Each public function builds one ``Call`` (query, parameters, how to read the rows); ``run`` and
``run_async`` send it. Without a connection the pool on the configured DSN is used; with one, the
statement joins the caller's transaction.
"""

from __future__ import annotations

import asyncio
import atexit
import threading
import weakref
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row, tuple_row
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from . import _database, migrations

T = TypeVar("T")

Connection = psycopg.Connection[Any]
AsyncConnection = psycopg.AsyncConnection[Any]


@dataclass(frozen=True)
class Call(Generic[T]):
    """One statement: its query, its parameters, and how to read its rows."""

    query: sql.SQL | sql.Composed
    params: Mapping[str, Any]
    parse: Callable[[list[Any]], T]
    #: Rows as tuples rather than dicts, where parse reads them by position.
    tuples: bool = False


_lock = threading.Lock()
_pool: ConnectionPool[Any] | None = None
_async_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool[Any]] = (
    weakref.WeakKeyDictionary()
)


def _ready_dsn() -> str:
    """The configured DSN, checked to answer and to hold the schema (created on the embedded server)."""
    dsn = migrations.prepare()
    with _database.connect(dsn) as conn:  # one clear line for a wrong DSN, not a pool timeout
        migrations.check(conn)
    return dsn


def _default_pool() -> ConnectionPool[Any]:
    global _pool
    with _lock:
        if _pool is None:
            dsn = _ready_dsn()
            _pool = ConnectionPool(
                dsn, min_size=1, max_size=8, kwargs={"autocommit": True, **_database.session_params(dsn)},
                open=True, name="pgjobs",
            )  # fmt: skip
            atexit.register(_pool.close)
        return _pool


async def _default_async_pool() -> AsyncConnectionPool[Any]:
    loop = asyncio.get_running_loop()
    pool = _async_pools.get(loop)
    if pool is None:
        dsn = await asyncio.to_thread(_ready_dsn)
        kwargs = {"autocommit": True, **_database.session_params(dsn)}
        pool = AsyncConnectionPool(dsn, min_size=1, max_size=8, kwargs=kwargs, open=False)
        await pool.open()
        _async_pools[loop] = pool
    return pool


def close() -> None:
    """Close the default connection pool (it reopens on the next call)."""
    global _pool
    with _lock:
        if _pool is not None:
            _pool.close()
            _pool = None


async def close_async() -> None:
    """Close the default async pool of the running event loop."""
    pool = _async_pools.pop(asyncio.get_running_loop(), None)
    if pool is not None:
        await pool.close()


def run(call: Call[T], conn: Connection | None) -> T:
    rows = tuple_row if call.tuples else dict_row
    if conn is not None:
        return call.parse(_database.fetch(conn, call.query, call.params, row_factory=rows))
    with _default_pool().connection() as c:
        return call.parse(_database.fetch(c, call.query, call.params, row_factory=rows))


async def run_async(call: Call[T], conn: AsyncConnection | None) -> T:
    rows = tuple_row if call.tuples else dict_row
    if conn is not None:
        return call.parse(await _database.fetch_async(conn, call.query, call.params, row_factory=rows))
    async with (await _default_async_pool()).connection() as c:
        return call.parse(await _database.fetch_async(c, call.query, call.params, row_factory=rows))
