"""Migrations: applied once, under a lock, reversible, refused when the schema is behind."""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Callable, Iterator

import psycopg
import pytest

import pgjobs
from pgjobs import migrations
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


def test_each_down_migration_restores_the_schema_before_its_up(empty_dsn: str) -> None:
    last_reversible = migrations.SCHEMA_FILES_FROM - 1
    snapshots = {0: schema_objects(empty_dsn)}
    for version in range(1, last_reversible + 1):
        assert pgjobs.migrate(empty_dsn, target=version) == [version]
        snapshots[version] = schema_objects(empty_dsn)
    for version in range(last_reversible - 1, -1, -1):
        assert pgjobs.migrate(empty_dsn, target=version) == [-(version + 1)]
        assert schema_objects(empty_dsn) == snapshots[version] or version == 0
    # Version 0 keeps the schema and the record of migrations, nothing else.
    assert {kind for kind, _ in schema_objects(empty_dsn)} <= {"relation", "column", "index", "constraint"}
    assert pgjobs.migrate(empty_dsn, target=last_reversible) == list(range(1, last_reversible + 1))
    assert schema_objects(empty_dsn) == snapshots[last_reversible]


def test_a_migration_without_a_down_file_is_not_rolled_back(empty_dsn: str) -> None:
    pgjobs.migrate(empty_dsn)
    before = schema_objects(empty_dsn)
    with pytest.raises(pgjobs.PgjobsError, match=r"0009_waiting cannot be rolled back"):
        pgjobs.migrate(empty_dsn, target=migrations.SCHEMA_FILES_FROM - 1)
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


@pytest.mark.parametrize("start", range(0, migrations.latest_version()))
def test_an_upgrade_from_any_earlier_version_equals_a_fresh_install(
    empty_dsn: str, fresh_db: Callable[[], str], start: int
) -> None:
    pgjobs.migrate(empty_dsn, target=start)
    if 1 <= start < migrations.SCHEMA_FILES_FROM:  # jobs of every status made by that version's own functions
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            ids = [conn.execute("SELECT pgjobs.enqueue('t', ttl => %s)", [t]).fetchone()[0] for t in (0, -1, 60, 60)]  # type: ignore[index]
            conn.execute("SELECT pgjobs.dequeue('w', ARRAY['default'], 3)")
            conn.execute("SELECT pgjobs.complete(%s)", [ids[0]])
            conn.execute("SELECT pgjobs.complete(%s)", [ids[1]])
    elif start >= migrations.SCHEMA_FILES_FROM:
        # This release holds only the latest functions: an older version's rows are written by hand,
        # as its functions left them (a running job of a group among them).
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            conn.execute(
                """INSERT INTO pgjobs.jobs
                       (task, ttl, status, group_key, worker_id, started_at, completed_at, expires_at)
                   VALUES ('t', 0, 'complete', NULL, 'w', now(), now(), '9999-12-31 00:00:00+00'),
                          ('t', -1, 'complete', NULL, 'w', now(), now(), NULL),
                          ('t', 60, 'active', 'g', 'w', now(), NULL, NULL),
                          ('t', 60, 'queued', NULL, NULL, NULL, NULL, NULL)"""
            )
    pgjobs.migrate(empty_dsn)
    fresh = fresh_db()
    pgjobs.migrate(fresh)
    assert schema_objects(empty_dsn) == schema_objects(fresh)
    if start >= 1:
        with psycopg.connect(empty_dsn, row_factory=psycopg.rows.dict_row) as conn:
            rows = conn.execute(
                "SELECT id, status, tableoid::regclass::text AS part FROM pgjobs.jobs ORDER BY id"
            ).fetchall()
        # Finished jobs already in history, except the one not kept: the reaper deletes it.
        assert [(r["status"], r["part"]) for r in rows] == [
            ("complete", "pgjobs.jobs_done_kept"), ("complete", "pgjobs.jobs_live"),
            ("active", "pgjobs.jobs_live"), ("queued", "pgjobs.jobs_live"),
        ]  # fmt: skip
    if start >= 1:
        with psycopg.connect(empty_dsn) as conn:
            slots = conn.execute("SELECT group_key, group_slot FROM pgjobs.jobs WHERE status = 'active'").fetchall()
        assert slots == [(None, None)] if start < migrations.SCHEMA_FILES_FROM else [("g", 0)]


def test_the_latest_migration_rolls_back_to_the_tables_before_it(empty_dsn: str, fresh_db: Callable[[], str]) -> None:
    latest = migrations.latest_version()
    pgjobs.migrate(empty_dsn)
    assert pgjobs.migrate(empty_dsn, target=latest - 1) == [-latest]
    before = fresh_db()
    pgjobs.migrate(before, target=latest - 1)

    def tables(dsn: str) -> list[tuple[str, str]]:  # sql/schema's objects stay the newer release's after a rollback
        objects = schema_objects(dsn)
        views = {o[1].split()[1] for o in objects if o[0] == "relation" and o[1].startswith("v ")}
        return [
            o for o in objects
            if o[0] not in ("function", "trigger")
            and not (o[0] == "relation" and o[1].startswith("v "))
            and not (o[0] == "column" and o[1].split(".")[0] in views)
        ]  # fmt: skip

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


def test_a_schema_that_is_behind_is_refused_with_the_fix(empty_dsn: str) -> None:
    with psycopg.connect(empty_dsn, autocommit=True, row_factory=psycopg.rows.dict_row) as conn:
        with pytest.raises(pgjobs.SchemaError, match=r"missing.*pgjobs migrate"):
            migrations.check(conn)  # type: ignore[arg-type]
        pgjobs.migrate(empty_dsn)
        migrations.check(conn)  # type: ignore[arg-type]
        conn.execute("DELETE FROM pgjobs.migrations WHERE version = %s", [migrations.latest_version()])
        with pytest.raises(pgjobs.SchemaError, match="pgjobs migrate"):
            migrations.check(conn)  # type: ignore[arg-type]
        conn.execute("INSERT INTO pgjobs.migrations (version, name) VALUES (999, 'future')")
        with pytest.raises(pgjobs.SchemaError, match="upgrade pgjobs"):
            migrations.check(conn)  # type: ignore[arg-type]
