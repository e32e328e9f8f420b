"""Migrations: applied once, under a lock, reversible, refused when the schema is behind."""

from __future__ import annotations

import threading

import psycopg
import pytest

import pgjobs
from pgjobs import migrations


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
    latest = migrations.latest_version()
    snapshots = {0: schema_objects(empty_dsn)}
    for version in range(1, latest + 1):
        assert pgjobs.migrate(empty_dsn, target=version) == [version]
        snapshots[version] = schema_objects(empty_dsn)
    for version in range(latest - 1, -1, -1):
        assert pgjobs.migrate(empty_dsn, target=version) == [-(version + 1)]
        assert schema_objects(empty_dsn) == snapshots[version] or version == 0
    # Version 0 keeps the schema and the record of migrations, nothing else.
    assert {kind for kind, _ in schema_objects(empty_dsn)} <= {"relation", "column", "index", "constraint"}
    assert pgjobs.migrate(empty_dsn) == list(range(1, latest + 1))
    assert schema_objects(empty_dsn) == snapshots[latest]


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
