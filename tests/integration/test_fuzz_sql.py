"""Hypothesis throws arbitrary values at every SQL function, as another language's driver would:
each call succeeds or fails with a documented SQLSTATE, and a failed call changes no job."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

# The refusals the SQL reference (docs/reference/sql.md) documents.
DOCUMENTED = {
    "22023",  # invalid_parameter_value: pgjobs' own checks
    "22P02",  # invalid_text_representation: not JSON, not a number
    "22P05",  # untranslatable_character: \u0000 in JSON
    "22003",  # numeric_value_out_of_range
    "22008",  # datetime_field_overflow
    "22007",  # invalid_datetime_format
    "23514",  # check_violation: a table constraint caught a value out of range
    "P0002",  # no_data_found: unknown worker or schedule
    "25000",  # invalid_transaction_state: dequeue outside READ COMMITTED
    "22004",  # null_value_not_allowed
    "2202E",  # array_subscript_error
    "22000",  # data_exception
    "54000",  # program_limit_exceeded
}

texts = st.one_of(
    st.none(),
    st.text(max_size=30),
    st.sampled_from(["default", "t", "", "'; DROP TABLE pgjobs.jobs; --", "%s", "ü🚀", "x" * 5000, "w1"]),
)
ints = st.one_of(st.none(), st.integers(-(2**40), 2**40), st.sampled_from([0, 1, -1, 2**31 - 1]))
floats = st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([0.0, 1.5, -5.0]))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**60), 2**60) | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)
jsons = st.one_of(st.none(), json_values.map(Jsonb))
times = st.one_of(st.none(), st.datetimes(timezones=st.just(dt.UTC), min_value=dt.datetime(1, 1, 2)))
id_lists = st.one_of(st.none(), st.lists(ints.filter(lambda v: v is None or abs(v) < 2**62), max_size=4))
job_docs = st.lists(
    st.dictionaries(
        st.sampled_from(["task", "args", "queue", "priority", "key", "group_key", "delay", "ttl", "bogus"]),
        json_values,
        max_size=5,
    ),
    max_size=4,
).map(Jsonb)

CALLS: list[tuple[str, Any]] = [
    ("SELECT pgjobs.enqueue(%s::text, %s::jsonb, %s::text, %s::int, %s::timestamptz, %s::text, %s::text, %s::int,"
     " %s::float8, %s::float8, %s::float8, %s::float8, %s::int, %s::jsonb)",
     st.tuples(texts, jsons, texts, ints, times, texts, texts, ints, floats, floats, floats, floats, ints, jsons)),
    ("SELECT * FROM pgjobs.enqueue_many(%s::jsonb)", st.tuples(st.one_of(job_docs, jsons))),
    ("SELECT * FROM pgjobs.dequeue(%s::text, %s::text[], %s::int)",
     st.tuples(texts, st.one_of(st.none(), st.lists(texts, max_size=3)), ints)),
    ("SELECT pgjobs.complete(%s::bigint, %s::jsonb, %s::int)", st.tuples(ints, jsons, ints)),
    ("SELECT * FROM pgjobs.complete_many(%s::bigint[], %s::jsonb[], %s::int[])",
     st.tuples(id_lists, st.one_of(st.none(), st.lists(jsons, max_size=4)), id_lists)),
    ("SELECT pgjobs.fail(%s::bigint, %s::text, %s::int, %s::boolean)",
     st.tuples(ints, texts, ints, st.one_of(st.none(), st.booleans()))),
    ("SELECT pgjobs.cancel(%s::bigint)", st.tuples(ints)),
    ("SELECT pgjobs.release(%s::text, %s::bigint[])", st.tuples(texts, id_lists)),
    ("SELECT pgjobs.touch(%s::bigint, %s::int, %s::float8, %s::jsonb)", st.tuples(ints, ints, floats, jsons)),
    ("SELECT pgjobs.worker_register(%s::text, %s::text, %s::int, %s::text, %s::text[], %s::int, %s::float8)",
     st.tuples(texts, texts, ints, texts, st.one_of(st.none(), st.lists(texts, max_size=2)), ints, floats)),
    ("SELECT * FROM pgjobs.worker_heartbeat(%s::text, %s::bigint[], %s::int[])", st.tuples(texts, id_lists, id_lists)),
    ("SELECT pgjobs.worker_stop(%s::text)", st.tuples(texts)),
    ("SELECT pgjobs.worker_is_alive(%s::text, %s::float8)", st.tuples(texts, floats)),
    ("SELECT * FROM pgjobs.reap(%s::int, %s::float8)", st.tuples(ints, floats)),
    ("SELECT * FROM pgjobs.reap_as(%s::text, %s::float8, %s::int, %s::float8)", st.tuples(texts, floats, ints, floats)),
    ("SELECT pgjobs.lease_take(%s::text, %s::text, %s::float8)", st.tuples(texts, texts, floats)),
    ("SELECT pgjobs.lease_release(%s::text, %s::text)", st.tuples(texts, texts)),
    ("SELECT pgjobs.schedule(%s::text, %s::text, %s::jsonb, %s::text, %s::float8, %s::text)",
     st.tuples(texts, texts, jsons, st.one_of(texts, st.sampled_from(["* * * * *", "61 * * * *", "@daily"])),
               floats, st.one_of(texts, st.just("Europe/Paris")))),
    ("SELECT pgjobs.unschedule(%s::text)", st.tuples(texts)),
    ("SELECT pgjobs.schedule_enable(%s::text, %s::boolean)", st.tuples(texts, st.one_of(st.none(), st.booleans()))),
    ("SELECT * FROM pgjobs.backfill(%s::text, %s::timestamptz[], %s::boolean, %s::boolean)",
     st.tuples(texts, st.one_of(st.none(), st.lists(times, max_size=3)), st.booleans(), st.booleans())),
    ("SELECT pgjobs.cron_check(%s::text)", st.tuples(texts)),
]  # fmt: skip


def snapshot(conn: psycopg.Connection[Any]) -> Any:
    return conn.execute(
        "SELECT md5(coalesce(string_agg(j::text, '|' ORDER BY id), '')) AS h FROM pgjobs.jobs j"
    ).fetchone()


@pytest.mark.parametrize(("query", "strategy"), CALLS, ids=[c[0].split("(")[0].split()[-1] for c in CALLS])
def test_every_function_either_works_or_refuses_with_a_documented_error(dsn: str, query: str, strategy: Any) -> None:
    with psycopg.connect(dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("SELECT pgjobs.enqueue('seed', group_key => 'g'), pgjobs.enqueue('seed2', key => 'k')")
        conn.execute("SELECT pgjobs.schedule('w1', 'seed', every => 60)")

        @settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
        @given(params=strategy)
        def check(params: tuple[Any, ...]) -> None:
            before = snapshot(conn)
            try:
                conn.execute(query, params).fetchall()
            except psycopg.Error as exc:
                if exc.sqlstate is None:  # refused by the driver before sending: NUL in a text
                    assert "NUL" in str(exc), exc
                else:
                    assert exc.sqlstate in DOCUMENTED, (exc.sqlstate, str(exc).splitlines()[0], params)
                assert snapshot(conn) == before, "a refused call changed the jobs"

        check()


# JSON values of any size: integers past 64 bits, every finite float, any text.
wide_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=wide_json)
def test_pgjobs_connections_decode_json_as_the_standard_parser_does(dsn: str, value: Any) -> None:
    """With orjson installed (pgjobs[fast]) pgjobs' connections decode jsonb with it, in text and
    in binary (the worker's claims): every value comes out as json.loads reads PostgreSQL's text."""
    from pgjobs import _database

    with _database.connect(dsn) as conn:
        for binary in (False, True):
            try:
                row = conn.execute("SELECT %s::jsonb AS v, %s::jsonb::text AS t", [Jsonb(value)] * 2, binary=binary)
            except psycopg.errors.UntranslatableCharacter:
                return  # \u0000, which PostgreSQL cannot store (enqueue refuses it first)
            got = row.fetchone()
            assert got is not None and repr(got["v"]) == repr(json.loads(got["t"]))
