"""Fixtures come from plugin modules; tests that start processes share one parallel worker."""

from __future__ import annotations

import importlib.util

import pytest

pytest_plugins = ["tests.fixtures", "tests.cluster", "tests.partition", "tests.pgbouncer"]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Under `pytest -n N --dist loadgroup` (pyproject's addopts) the tests that start worker
    # processes, servers, pgbouncer or a browser run one after another on one test process, so
    # their timings and their CPU measurements are not disturbed by each other; the rest spread
    # over the other processes.
    for item in items:
        if item.path.parent.name in ("acceptance", "conformance"):
            item.add_marker(pytest.mark.xdist_group("processes"))


# tests/django needs Django (its own virtualenvs, see .ci/run); elsewhere it is not collected.
collect_ignore = [] if importlib.util.find_spec("django") else ["django"]
