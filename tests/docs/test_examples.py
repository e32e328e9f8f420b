"""Every code example of README.md and docs/ runs: one test per block, named page:line.

What runs, how, and the markers that skip, join or prepare a block: tests/docs/examples.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.docs import examples

ROOT = examples.docs_root()


def _params() -> list[object]:
    params = []
    for example in examples.collect(ROOT):
        marks = []
        if example.skip:
            marks.append(pytest.mark.skip(reason=f"{example.id}: {example.skip}"))
        if example.starts_processes:
            marks.append(pytest.mark.xdist_group("processes"))
        params.append(pytest.param(example, id=example.id, marks=marks))
    return params


@pytest.mark.parametrize("example", _params())
def test_example(example: examples.Example, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    if example.error:
        pytest.fail(example.error, pytrace=False)
    dsn = request.getfixturevalue("dsn")
    try:
        examples.run(example, dsn, tmp_path / "work", root=ROOT)
    except examples.ExampleError as e:
        failure = str(e)
    else:
        return
    pytest.fail(failure, pytrace=False)
