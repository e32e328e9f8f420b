"""Schema migrations: numbered ones in ``sql/migrations``, then the schema files in ``sql/schema``.

Each migration is a ``NNNN_name.up.sql`` file, with a ``NNNN_name.down.sql`` twin unless it cannot be
rolled back. They are applied in order, each in its own transaction, under an advisory lock so that
two processes migrating at once are safe, and recorded in ``pgjobs.migrations``. Migrations hold
tables, types, indexes, roles and data; ``0001_baseline`` is the schema of the first release (the
migrations of the development before it were squashed into it). Functions, triggers, views and
policies live in ``sql/schema/*.sql`` (their current text, one file per concern), applied with
``CREATE OR REPLACE`` after the migrations whenever their digest differs from the one recorded, in
the transaction of the last migration. Functions the files no longer define are dropped there.
Applying again is a no-op. A database whose record names migrations no release ships (made by a
development checkout before the squash) is refused with what to do.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from dataclasses import dataclass

import psycopg
from psycopg import sql

from . import _database, _sql
from .errors import ConfigurationError, PgjobsError, SchemaError

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

    @property
    def reversible(self) -> bool:
        """False for a migration shipped without a down file."""
        return (_sql.SQL_DIR / "migrations" / f"{self.version:04d}_{self.name}.down.sql").is_file()


def schema_files() -> list[tuple[str, str]]:
    """The files of ``sql/schema`` in the order they apply: (name, text)."""
    return [(p.name, p.read_text(encoding="utf-8")) for p in sorted((_sql.SQL_DIR / "schema").glob("*.sql"))]


def schema_digest() -> str:
    """A digest of the ``sql/schema`` files: when it differs from the database's, they apply again."""
    h = hashlib.sha256()
    for name, text in schema_files():
        h.update(name.encode() + b"\0" + text.encode() + b"\0")
    return h.hexdigest()


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
    return list(recorded(conn))


def recorded(conn: psycopg.Connection[_database.Row]) -> dict[int, str]:
    """The migrations recorded in the database behind conn, version: name (empty when the schema
    does not exist)."""
    if not _database.fetch(conn, _sql.query("schema_exists"))[0]["present"]:
        return {}
    return {r["version"]: r["name"] for r in _database.fetch(conn, _sql.query("migration_applied"))}


def _refuse_unreleased(done: dict[int, str], migrations: list[Migration]) -> None:
    """Raise SchemaError when the database records a migration under a number this pgjobs ships with
    another name: a development version made it (the migrations 1 to 13 of the development before
    the first release were squashed into 0001_baseline), and no migration leads from there."""
    shipped = {m.version: m.name for m in migrations}
    if any(shipped.get(version, name) != name for version, name in done.items()):
        raise SchemaError(
            "the pgjobs schema in this database was made by an unreleased development version of pgjobs "
            f"(migrations {min(done)} to {max(done)}, which no release ships): drop the pgjobs schema "
            "(DROP SCHEMA pgjobs CASCADE; its jobs go with it) and run `pgjobs migrate`"
        )


def check(conn: psycopg.Connection[_database.Row]) -> None:
    """Raise SchemaError unless every shipped migration is applied."""
    done = recorded(conn)
    latest = latest_version()
    if not done:
        raise SchemaError("the pgjobs schema is missing in this database: run `pgjobs migrate`")
    _refuse_unreleased(done, available())
    if max(done) < latest:
        raise SchemaError(
            f"the pgjobs schema is at version {max(done)}, this pgjobs needs {latest}: run `pgjobs migrate`"
        )
    if max(done) > latest:
        raise SchemaError(
            f"the pgjobs schema is at version {max(done)}, newer than this pgjobs ({latest}): upgrade pgjobs"
        )


def migrate(dsn: str | None = None, *, target: int | None = None) -> list[int]:
    """Apply pending migrations (or roll back to ``target``); returns the versions changed.

    A negative list entry means that version was rolled back.
    """
    # The migration lock is a session's, and a transaction pooler gives each statement any session.
    if _database.pooled():
        raise _needs_a_session("unset PGJOBS_POOLED and give the server's DSN")
    dsn = _database.resolve_dsn(dsn)
    try:
        conn = _database.connect(dsn, direct=True)
    except ConfigurationError:
        if _database.pooled(dsn):
            raise _needs_a_session(
                f"{_database.redact(dsn)} is one: it refused the startup parameter options; give the server's DSN"
            ) from None
        raise
    with conn:
        return migrate_connection(conn, target=target)


def _needs_a_session(why: str) -> ConfigurationError:
    return ConfigurationError(
        "pgjobs migrate needs a session of its own: run it against PostgreSQL itself, not through "
        f"a transaction pooler ({why})"
    )


#: Seconds migrate waits for another session's migration lock before it says whose it is.
LOCK_WAIT = 60.0


def _lock(conn: psycopg.Connection[_database.Row], wait: float | None = None) -> None:
    """Take the migration lock, trying for LOCK_WAIT seconds: another migrate ends in seconds, and
    a session that holds it longer (any login may take an advisory lock) is named, not waited for."""
    deadline = time.monotonic() + (LOCK_WAIT if wait is None else wait)
    while not _database.fetch(conn, _sql.query("migration_lock"))[0]["locked"]:
        if time.monotonic() >= deadline:
            holders = _database.fetch(conn, _sql.query("migration_lock_holder"))
            who = ", ".join(f"pid {h['pid']} ({h['usename']}, {h['application_name'] or 'no name'})" for h in holders)
            raise ConfigurationError(
                f"another session holds pgjobs' migration lock (advisory lock 1885957987, 0): {who or 'gone now'}; "
                "if it is not a pgjobs migrate, end it (SELECT pg_terminate_backend(pid)) and run migrate again"
            )
        time.sleep(0.2)


def migrate_connection(conn: psycopg.Connection[_database.Row], *, target: int | None = None) -> list[int]:
    """migrate() on an autocommit connection the caller holds."""
    if not conn.autocommit:
        raise PgjobsError("migrate needs an autocommit connection: each migration is its own transaction")
    migrations = available()
    target = len(migrations) if target is None else target
    if not 0 <= target <= len(migrations):
        raise PgjobsError(f"no migration {target}: versions go from 0 to {len(migrations)}")
    changed: list[int] = []
    _lock(conn)
    try:
        with conn.transaction():
            conn.execute(sql.SQL(_sql.read("bootstrap.sql")))
        record = recorded(conn)
        _refuse_unreleased(record, migrations)
        done = set(record)
        blocked = [m for m in migrations if m.version > target and m.version in done and not m.reversible]
        if blocked:
            raise PgjobsError(
                f"migration {blocked[-1].version:04d}_{blocked[-1].name} cannot be rolled back: "
                f"versions go down to {blocked[-1].version} at most (restore a backup to go further)"
            )
        pending = [m for m in migrations if m.version <= target and m.version not in done]
        # The files hold the functions of the latest version: an older one gets none of them.
        with_files = target == len(migrations)
        if (
            not pending
            and with_files
            and _database.fetch(conn, _sql.query("schema_files_digest"))[0]["digest"] != (schema_digest())
        ):
            with conn.transaction():
                _apply_schema_files(conn)
        for m in pending:
            with conn.transaction():
                conn.execute(sql.SQL(m.up))
                _database.fetch(conn, _sql.query("migration_record"), {"version": m.version, "name": m.name})
                if m is pending[-1] and with_files:
                    _apply_schema_files(conn)
            logger.info("applied migration %04d_%s", m.version, m.name)
            changed.append(m.version)
        for m in reversed(migrations):
            if m.version > target and m.version in done:
                with conn.transaction():
                    conn.execute(sql.SQL(m.down))
                    _database.fetch(conn, _sql.query("migration_forget"), {"version": m.version})
                    if m.version > 1:  # the baseline's down drops the record of the files with its table
                        _database.fetch(conn, _sql.query("schema_files_forget"))
                logger.info("rolled back migration %04d_%s", m.version, m.name)
                changed.append(-m.version)
        if changed and changed[-1] < 0 and target > 0:  # at 0, none are left
            logger.warning("the functions are still this version's: run `pgjobs migrate` of the version rolled back to")
    finally:
        _database.fetch(conn, _sql.query("migration_unlock"))
    return changed


def _apply_schema_files(conn: psycopg.Connection[_database.Row]) -> None:
    """Apply sql/schema in the caller's transaction, then drop the functions it no longer defines."""
    for name, text in schema_files():
        try:
            conn.execute(sql.SQL(text))
        except psycopg.Error as exc:
            raise SchemaError(f"sql/schema/{name} failed: {exc}") from exc
    for row in _database.fetch(conn, _sql.query("schema_functions_obsolete")):
        conn.execute(sql.SQL("DROP FUNCTION {}").format(sql.SQL(row["signature"])))
        logger.info("dropped function %s, which sql/schema no longer defines", row["signature"])
    _database.fetch(conn, _sql.query("schema_harden"))
    _database.fetch(conn, _sql.query("schema_files_record"), {"digest": schema_digest()})
    logger.info("applied sql/schema (%d files)", len(schema_files()))


_prepared: set[str] = set()


def prepare(dsn: str | None = None) -> str:
    """Resolve the DSN; on the embedded server, apply the migrations first (once per process)."""
    embedded = _database.uses_embedded(dsn)
    target = _database.resolve_dsn(dsn)
    if embedded and target not in _prepared:
        migrate(target)
        _prepared.add(target)
    return target
