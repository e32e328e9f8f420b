"""Migrations: applied once, under a lock, reversible, refused when the schema is behind."""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

import pgjobs
from pgjobs import _sql, migrations
from tests.fixtures import _create, _drop


def schema_objects(dsn: str) -> list[tuple[str, str]]:
    """Everything in the pgjobs schema, with definitions: tables, columns, indexes, functions,
    triggers and enum labels."""
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            """SELECT 'relation', c.relkind::text || ' ' || c.relname || ' ' || coalesce(c.reloptions::text, '')
               FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'pgjobs'
               UNION ALL
               SELECT 'column', table_name || '.' || column_name || ' ' || data_type || ' '
                                || coalesce(column_default, '') || ' ' || is_nullable
               FROM information_schema.columns WHERE table_schema = 'pgjobs'
               UNION ALL
               SELECT 'index', indexdef FROM pg_indexes WHERE schemaname = 'pgjobs'
               UNION ALL
               SELECT 'constraint', conname || ' ' || pg_get_constraintdef(c.oid) FROM pg_constraint c
               JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = 'pgjobs'
               UNION ALL
               SELECT 'function', pg_get_functiondef(p.oid) FROM pg_proc p
               JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pgjobs'
               UNION ALL
               SELECT 'trigger', pg_get_triggerdef(t.oid) FROM pg_trigger t
               JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'pgjobs' AND NOT t.tgisinternal
               UNION ALL
               SELECT 'enum', t.typname || '.' || e.enumlabel FROM pg_enum e
               JOIN pg_type t ON t.oid = e.enumtypid JOIN pg_namespace n ON n.oid = t.typnamespace
               WHERE n.nspname = 'pgjobs'
               ORDER BY 1, 2"""
        ).fetchall()
    return [(r[0], r[1]) for r in rows]


def test_migrate_applies_every_migration_once(empty_dsn: str) -> None:
    assert pgjobs.migrate(empty_dsn) == list(range(1, migrations.latest_version() + 1))
    assert pgjobs.migrate(empty_dsn) == []
    with psycopg.connect(empty_dsn, row_factory=psycopg.rows.dict_row) as conn:
        assert migrations.applied(conn) == list(range(1, migrations.latest_version() + 1))  # type: ignore[arg-type]


def test_concurrent_migrations_are_safe(empty_dsn: str) -> None:
    results: list[list[int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(pgjobs.migrate(empty_dsn))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(len(r) for r in results) == [0, 0, 0, migrations.latest_version()]


def tables(dsn: str) -> list[tuple[str, str]]:
    """schema_objects() but what sql/schema makes (functions, triggers, views), which a rollback
    leaves as the newer release's."""
    objects = schema_objects(dsn)
    views = {o[1].split()[1] for o in objects if o[0] == "relation" and o[1].startswith("v ")}
    return [
        o for o in objects
        if o[0] not in ("function", "trigger")
        and not (o[0] == "relation" and o[1].startswith("v "))
        and not (o[0] == "column" and o[1].split(".")[0] in views)
    ]  # fmt: skip


@pytest.fixture
def next_migrations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[dict[str, str]], None]:
    """next_migrations({"NNNN_name.up.sql": text, …}): pgjobs reads its SQL from a copy of sql/ that
    ships these migrations too, as a later release would."""
    copy = tmp_path / "sql"
    shutil.copytree(_sql.SQL_DIR, copy)
    monkeypatch.setattr(_sql, "SQL_DIR", copy)

    def add(files: dict[str, str]) -> None:
        for name, text in files.items():
            (copy / "migrations" / name).write_text(text, encoding="utf-8")

    return add


def probe(version: int, *, reversible: bool = True) -> dict[str, str]:
    """A migration numbered version that adds a column to pgjobs.workers (an enum value when it
    cannot be rolled back: PostgreSQL does not drop one)."""
    if not reversible:
        return {f"{version:04d}_probe.up.sql": "ALTER TYPE pgjobs.worker_status ADD VALUE 'probe';\n"}
    return {
        f"{version:04d}_probe.up.sql": "ALTER TABLE pgjobs.workers ADD COLUMN probe integer;\n",
        f"{version:04d}_probe.down.sql": "ALTER TABLE pgjobs.workers DROP COLUMN probe;\n",
    }


def test_each_down_migration_restores_the_schema_before_its_up(empty_dsn: str) -> None:
    latest = migrations.latest_version()
    floor = max((m.version for m in migrations.available() if not m.reversible), default=0)
    snapshots = {}
    for version in range(1, latest + 1):
        assert pgjobs.migrate(empty_dsn, target=version) == [version]
        snapshots[version] = tables(empty_dsn)
    everything = schema_objects(empty_dsn)
    for version in range(latest - 1, floor - 1, -1):
        assert pgjobs.migrate(empty_dsn, target=version) == [-(version + 1)]
        if version > 0:
            assert tables(empty_dsn) == snapshots[version]
    if floor == 0:
        # Version 0 keeps the schema and the record of migrations, nothing else: no function, no
        # type, and no grant to pgjobs' roles that would keep DROP ROLE from dropping them.
        assert {kind for kind, _ in schema_objects(empty_dsn)} <= {"relation", "column", "index", "constraint"}
        with psycopg.connect(empty_dsn) as conn:
            assert conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'pgjobs'::regnamespace ORDER BY 1"
            ).fetchall() == [("migrations",), ("migrations_pkey",)]
            assert conn.execute(
                """SELECT count(*) FROM pg_shdepend d JOIN pg_roles r ON r.oid = d.refobjid
                   WHERE d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
                     AND r.rolname IN ('pgjobs_client', 'pgjobs_worker', 'pgjobs_admin')"""
            ).fetchone() == (0,)
    assert pgjobs.migrate(empty_dsn) == list(range(floor + 1, latest + 1))
    assert schema_objects(empty_dsn) == everything


def test_a_migration_without_a_down_file_is_not_rolled_back(
    empty_dsn: str, next_migrations: Callable[[dict[str, str]], None]
) -> None:
    latest = migrations.latest_version()
    next_migrations(probe(latest + 1, reversible=False))
    assert pgjobs.migrate(empty_dsn) == list(range(1, latest + 2))
    before = schema_objects(empty_dsn)
    with pytest.raises(pgjobs.PgjobsError, match=rf"{latest + 1:04d}_probe cannot be rolled back"):
        pgjobs.migrate(empty_dsn, target=latest)
    assert schema_objects(empty_dsn) == before


@pytest.fixture
def fresh_db(server_dsn: str) -> Iterator[Callable[[], str]]:
    """Makes more empty databases, dropped after the test."""
    made: list[str] = []

    def make() -> str:
        made.append(f"pgjobs_fresh_{os.getpid()}_{len(made)}")
        return _create(server_dsn, made[-1])

    yield make
    for name in made:
        _drop(server_dsn, name)


def upgrade_equals_a_fresh_install(dsn: str, fresh_db: Callable[[], str], start: int) -> None:
    """Migrate dsn to start, with jobs in it, then to the latest version: the schema equals a fresh
    install's, and the jobs are where the latest version keeps them."""
    pgjobs.migrate(dsn, target=start)
    if start >= 1:
        # An older version's functions are not shipped: its rows are written by hand, as the
        # baseline's functions leave them (a running job of a group among them).
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                """INSERT INTO pgjobs.jobs
                       (task, ttl, status, group_key, group_slot, worker_id, started_at, completed_at, expires_at)
                   VALUES ('t', 0, 'complete', NULL, NULL, 'w', now(), now(), '9999-12-31 00:00:00+00'),
                          ('t', -1, 'complete', NULL, NULL, 'w', now(), now(), NULL),
                          ('t', 60, 'active', 'g', 0, 'w', now(), NULL, NULL),
                          ('t', 60, 'queued', NULL, NULL, NULL, NULL, NULL, NULL)"""
            )
    pgjobs.migrate(dsn)
    fresh = fresh_db()
    pgjobs.migrate(fresh)
    assert schema_objects(dsn) == schema_objects(fresh)
    if start >= 1:
        with psycopg.connect(dsn, row_factory=psycopg.rows.dict_row) as conn:
            rows = conn.execute(
                "SELECT id, status, tableoid::regclass::text AS part FROM pgjobs.jobs ORDER BY id"
            ).fetchall()
            slots = conn.execute("SELECT group_key, group_slot FROM pgjobs.jobs WHERE status = 'active'").fetchall()
        # Finished jobs already in history, except the one not kept: the reaper deletes it.
        assert [(r["status"], r["part"]) for r in rows] == [
            ("complete", "pgjobs.jobs_done_kept"), ("complete", "pgjobs.jobs_live"),
            ("active", "pgjobs.jobs_live"), ("queued", "pgjobs.jobs_live"),
        ]  # fmt: skip
        assert [(s["group_key"], s["group_slot"]) for s in slots] == [("g", 0)]


@pytest.mark.parametrize("start", range(0, migrations.latest_version()))
def test_an_upgrade_from_any_earlier_version_equals_a_fresh_install(
    empty_dsn: str, fresh_db: Callable[[], str], start: int
) -> None:
    upgrade_equals_a_fresh_install(empty_dsn, fresh_db, start)


def test_an_upgrade_from_this_version_to_a_later_one_equals_a_fresh_install(
    empty_dsn: str, fresh_db: Callable[[], str], next_migrations: Callable[[dict[str, str]], None]
) -> None:
    """What the next release's upgrade from this one will do, with a migration made up for it."""
    latest = migrations.latest_version()
    next_migrations(probe(latest + 1))
    upgrade_equals_a_fresh_install(empty_dsn, fresh_db, latest)


@pytest.mark.parametrize("later", [False, True], ids=["shipped", "with a later migration"])
def test_the_latest_migration_rolls_back_to_the_tables_before_it(
    empty_dsn: str, fresh_db: Callable[[], str], next_migrations: Callable[[dict[str, str]], None], later: bool
) -> None:
    if later:
        next_migrations(probe(migrations.latest_version() + 1))
    latest = migrations.latest_version()
    pgjobs.migrate(empty_dsn)
    assert pgjobs.migrate(empty_dsn, target=latest - 1) == [-latest]
    before = fresh_db()
    pgjobs.migrate(before, target=latest - 1)
    assert tables(empty_dsn) == tables(before)
    assert pgjobs.migrate(empty_dsn) == [latest]
    assert schema_objects(empty_dsn) == schema_objects(fresh_db_migrated(fresh_db))


def fresh_db_migrated(fresh_db: Callable[[], str]) -> str:
    dsn = fresh_db()
    pgjobs.migrate(dsn)
    return dsn


def test_each_function_is_defined_in_exactly_one_schema_file(empty_dsn: str) -> None:
    pgjobs.migrate(empty_dsn)
    defined: dict[str, set[str]] = {}  # overloads of a name live side by side in one file
    for name, text in migrations.schema_files():
        for fn in re.findall(r"^CREATE OR REPLACE FUNCTION pgjobs\.(\w+)\(", text, re.MULTILINE):
            defined.setdefault(fn, set()).add(name)
        assert not re.search(r"^CREATE FUNCTION", text, re.MULTILINE), name
    assert {fn: files for fn, files in defined.items() if len(files) > 1} == {}
    with psycopg.connect(empty_dsn) as conn:
        in_db = {r[0] for r in conn.execute("SELECT proname FROM pg_proc WHERE pronamespace = 'pgjobs'::regnamespace")}
    assert in_db == set(defined)


def test_schema_files_apply_again_when_changed_and_drop_what_they_no_longer_define(empty_dsn: str) -> None:
    pgjobs.migrate(empty_dsn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute("CREATE FUNCTION pgjobs.obsolete() RETURNS int LANGUAGE sql AS 'SELECT 1'")
        conn.execute("CREATE OR REPLACE FUNCTION pgjobs.max_payload() RETURNS bigint LANGUAGE sql AS 'SELECT 1'")
        assert pgjobs.migrate(empty_dsn) == []  # same digest: nothing applied
        assert conn.execute("SELECT pgjobs.max_payload()").fetchone() == (1,)
        conn.execute("UPDATE pgjobs.schema_files SET digest = 'from another release'")
        assert pgjobs.migrate(empty_dsn) == []
        assert conn.execute("SELECT pgjobs.max_payload()").fetchone() != (1,)
        assert conn.execute("SELECT to_regproc('pgjobs.obsolete')").fetchone() == (None,)


def test_a_schema_that_is_behind_is_refused_with_the_fix(
    empty_dsn: str, next_migrations: Callable[[dict[str, str]], None]
) -> None:
    with psycopg.connect(empty_dsn, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        with pytest.raises(pgjobs.SchemaError, match=r"missing.*pgjobs migrate"):
            migrations.check(conn)  # type: ignore[arg-type]
        pgjobs.migrate(empty_dsn)
        migrations.check(conn)  # type: ignore[arg-type]
        latest = migrations.latest_version()
        next_migrations(probe(latest + 1))  # a later release
        with pytest.raises(
            pgjobs.SchemaError, match=rf"at version {latest}, this pgjobs needs {latest + 1}: run `pgjobs migrate`"
        ):
            migrations.check(conn)  # type: ignore[arg-type]
        conn.execute("DELETE FROM pgjobs.migrations WHERE version = %s", [latest])
        with pytest.raises(pgjobs.SchemaError, match="pgjobs migrate"):
            migrations.check(conn)  # type: ignore[arg-type]
        conn.execute("INSERT INTO pgjobs.migrations (version, name) VALUES (999, 'future')")
        with pytest.raises(pgjobs.SchemaError, match=r"newer than this pgjobs \(\d+\): upgrade pgjobs"):
            migrations.check(conn)  # type: ignore[arg-type]


#: The migrations of pgjobs' development before its first release, squashed into 0001_baseline.
UNRELEASED = [
    "core", "liveness", "schedules", "security", "speed", "leases", "client_scope", "history", "waiting",
    "flow_control", "operations", "lock_keys", "group_scope",
]  # fmt: skip


def test_a_database_an_unreleased_version_made_is_refused_with_what_to_do(empty_dsn: str) -> None:
    pgjobs.migrate(empty_dsn)  # the same schema the development's 13 migrations made, recorded as they did
    with psycopg.connect(empty_dsn, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        conn.execute("DELETE FROM pgjobs.migrations")
        for version, name in enumerate(UNRELEASED, start=1):
            conn.execute("INSERT INTO pgjobs.migrations (version, name) VALUES (%s, %s)", [version, name])
        before = schema_objects(empty_dsn)
        fix = (
            r"made by an unreleased development version of pgjobs \(migrations 1 to 13, which no release ships\): "
            r"drop the pgjobs schema \(DROP SCHEMA pgjobs CASCADE; its jobs go with it\) and run `pgjobs migrate`"
        )
        with pytest.raises(pgjobs.SchemaError, match=fix):
            migrations.check(conn)  # type: ignore[arg-type]
        with pytest.raises(pgjobs.SchemaError, match=fix):
            pgjobs.migrate(empty_dsn)
        assert schema_objects(empty_dsn) == before
        assert conn.execute("SELECT count(*) AS n FROM pgjobs.migrations").fetchone() == {"n": 13}
        conn.execute("DROP SCHEMA pgjobs CASCADE")  # what it says to do, then run pgjobs migrate
        assert pgjobs.migrate(empty_dsn) == list(range(1, migrations.latest_version() + 1))
        migrations.check(conn)  # type: ignore[arg-type]
