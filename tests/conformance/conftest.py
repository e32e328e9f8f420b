"""Fixtures of the conformance suite: a fleet of workers of each kind, on a fresh database."""

from __future__ import annotations

import sys
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from .workers import COMMANDS, CUSTOM, Fleet, query, require

# One worker at a time: each kind of worker alone.
SINGLE = [kind for kind in ("python", "node", "custom") if kind in COMMANDS]
# Several workers on one queue: each kind alone, and kinds mixed (started in turn, in this order).
FLEETS = {"python": ["python"], "node": ["node"], "mixed": ["node", "python"]}
if CUSTOM:
    FLEETS |= {"custom": ["custom"], "custom+python": ["custom", "python"]}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "conformance: the rules every pgjobs worker follows, for workers of any language"
    )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if report.when == "call":
        item.stash[_failed] = report.failed
    return report


_failed = pytest.StashKey[bool]()


def _fleet(request: pytest.FixtureRequest, dsn: str, log_dir: Path, kinds: list[str]) -> Iterator[Fleet]:
    for kind in kinds:
        require(kind)
    fleet = Fleet(dsn, log_dir, kinds)
    # A first reaper pass makes the days of history ahead, before any worker's reaper runs: two
    # sessions' first passes at once both make them, and one fails (a race in pgjobs.reap()).
    query(dsn, "SELECT * FROM pgjobs.reap()")
    try:
        yield fleet
    finally:
        if request.node.stash.get(_failed, False):
            sys.stderr.write(fleet.outputs())  # what the workers said, under the failed test's report
        fleet.close()


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    (tmp_path / "runs").mkdir()
    return tmp_path / "runs"


@pytest.fixture(params=SINGLE)
def one(request: pytest.FixtureRequest, dsn: str, log_dir: Path) -> Iterator[Fleet]:
    """Workers of one kind (a test starts one at a time)."""
    yield from _fleet(request, dsn, log_dir, [request.param])


@pytest.fixture(params=list(FLEETS))
def fleet(request: pytest.FixtureRequest, dsn: str, log_dir: Path) -> Iterator[Fleet]:
    """Workers of one kind, or of several kinds started in turn (a mixed run)."""
    yield from _fleet(request, dsn, log_dir, FLEETS[request.param])
