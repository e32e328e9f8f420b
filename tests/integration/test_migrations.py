"""Migrations: applied once, under a lock, reversible, refused when the schema is behind."""

from __future__ import annotations

import threading

import psycopg
import pytest

import pgjobs
from pgjobs import migrations


def schema_objects(dsn: str) -> list[tuple[str, str]]:
    with psycopg.connect(dsn) as conn:
        return [
            (r[0], r[1])
            for r in conn.execute(
                """SELECT c.relkind::text, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                   WHERE n.nspname = 'pgjobs'
                   UNION ALL
                   SELECT 'f', p.oid::regprocedure::text FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                   WHERE n.nspname = 'pgjobs'
                   ORDER BY 1, 2"""
            )
        ]


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


def test_down_then_up_rebuilds_the_same_schema(empty_dsn: str) -> None:
    pgjobs.migrate(empty_dsn)
    before = schema_objects(empty_dsn)
    assert pgjobs.migrate(empty_dsn, target=0) == [-v for v in range(migrations.latest_version(), 0, -1)]
    assert schema_objects(empty_dsn) == [("i", "migrations_pkey"), ("r", "migrations")]
    pgjobs.migrate(empty_dsn)
    assert schema_objects(empty_dsn) == before


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
