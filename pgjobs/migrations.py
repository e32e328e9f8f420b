"""Numbered schema migrations: discovered in ``sql/migrations``, recorded in ``pgjobs.migrations``.

Each migration is a ``NNNN_name.up.sql`` file with a ``NNNN_name.down.sql`` twin. They are applied in
order, each in its own transaction, under an advisory lock so that two processes migrating at once are
safe. Applying again is a no-op.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

from . import _database, _sql
from .errors import PgjobsError, SchemaError

logger = logging.getLogger("pgjobs.migrations")

_FILE = re.compile(r"^(\d{4})_(\w+)\.up\.sql$")


@dataclass(frozen=True)
class Migration:
    """One numbered migration."""

    version: int
    name: str

    @property
    def up(self) -> str:
        return _sql.read(f"migrations/{self.version:04d}_{self.name}.up.sql")

    @property
    def down(self) -> str:
        return _sql.read(f"migrations/{self.version:04d}_{self.name}.down.sql")


def available() -> list[Migration]:
    """Every migration shipped with this version, checked to be numbered 1, 2, 3… without gaps."""
    found = []
    for path in sorted((_sql.SQL_DIR / "migrations").iterdir()):
        match = _FILE.match(path.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2)))
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise PgjobsError(f"migration {expected:04d} is missing (found {migration.version:04d})")
    return found


def latest_version() -> int:
    """The version a database has once every shipped migration is applied."""
    return len(available())


def applied(conn: psycopg.Connection[_database.Row]) -> list[int]:
    """Versions applied in the database behind conn (empty when the schema does not exist)."""
    if not _database.fetch(conn, _sql.query("schema_exists"))[0]["present"]:
        return []
    return [r["version"] for r in _database.fetch(conn, _sql.query("migration_applied"))]


def check(conn: psycopg.Connection[_database.Row]) -> None:
    """Raise SchemaError unless every shipped migration is applied."""
    versions = applied(conn)
    latest = latest_version()
    if not versions:
        raise SchemaError("the pgjobs schema is missing in this database: run `pgjobs migrate`")
    if max(versions) < latest:
        raise SchemaError(
            f"the pgjobs schema is at version {max(versions)}, this pgjobs needs {latest}: run `pgjobs migrate`"
        )
    if max(versions) > latest:
        raise SchemaError(
            f"the pgjobs schema is at version {max(versions)}, newer than this pgjobs ({latest}): upgrade pgjobs"
        )


def migrate(dsn: str | None = None, *, target: int | None = None) -> list[int]:
    """Apply pending migrations (or roll back to ``target``); returns the versions changed.

    A negative list entry means that version was rolled back.
    """
    with _database.connect(_database.resolve_dsn(dsn)) as conn:
        return migrate_connection(conn, target=target)


def migrate_connection(conn: psycopg.Connection[_database.Row], *, target: int | None = None) -> list[int]:
    """migrate() on an autocommit connection the caller holds."""
    if not conn.autocommit:
        raise PgjobsError("migrate needs an autocommit connection: each migration is its own transaction")
    migrations = available()
    target = len(migrations) if target is None else target
    if not 0 <= target <= len(migrations):
        raise PgjobsError(f"no migration {target}: versions go from 0 to {len(migrations)}")
    changed: list[int] = []
    _database.fetch(conn, _sql.query("migration_lock"))
    try:
        with conn.transaction():
            conn.execute(sql.SQL(_sql.read("bootstrap.sql")))
        done = set(applied(conn))
        for m in migrations:
            if m.version <= target and m.version not in done:
                with conn.transaction():
                    conn.execute(sql.SQL(m.up))
                    _database.fetch(conn, _sql.query("migration_record"), {"version": m.version, "name": m.name})
                logger.info("applied migration %04d_%s", m.version, m.name)
                changed.append(m.version)
        for m in reversed(migrations):
            if m.version > target and m.version in done:
                with conn.transaction():
                    conn.execute(sql.SQL(m.down))
                    _database.fetch(conn, _sql.query("migration_forget"), {"version": m.version})
                logger.info("rolled back migration %04d_%s", m.version, m.name)
                changed.append(-m.version)
    finally:
        _database.fetch(conn, _sql.query("migration_unlock"))
    return changed


_prepared: set[str] = set()


def prepare(dsn: str | None = None) -> str:
    """Resolve the DSN; on the embedded server, apply the migrations first (once per process)."""
    embedded = _database.uses_embedded(dsn)
    target = _database.resolve_dsn(dsn)
    if embedded and target not in _prepared:
        migrate(target)
        _prepared.add(target)
    return target
