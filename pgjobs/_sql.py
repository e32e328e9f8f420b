"""The SQL shipped with pgjobs: migrations and the named queries in ``queries.sql`` (and ``dashboard.sql``)."""

from __future__ import annotations

import functools
import re
from pathlib import Path

from psycopg import sql

_HERE = Path(__file__).resolve().parent
# Wheels carry the files in pgjobs/sql; a source checkout keeps them in the repository's sql/.
SQL_DIR = _HERE / "sql" if (_HERE / "sql").is_dir() else _HERE.parent / "sql"

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)


def read(relative: str) -> str:
    """Return the text of one file below the SQL directory."""
    return (SQL_DIR / relative).read_text(encoding="utf-8")


@functools.cache
def queries(file: str = "queries.sql") -> dict[str, sql.SQL]:
    """Parse a file of named queries (``queries.sql``): each query follows a ``-- name: <name>`` line."""
    text = read(file)
    parts = _NAME.split(text)
    found: dict[str, sql.SQL] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        found[name] = sql.SQL("\n".join(lines).strip().rstrip(";"))
    return found


def query(name: str, file: str = "queries.sql") -> sql.SQL:
    """One named query from ``queries.sql``, or from another file of named queries."""
    return queries(file)[name]
