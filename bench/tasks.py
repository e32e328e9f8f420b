"""pgjobs tasks for the benchmark: a no-op, and one that records when it started."""

from __future__ import annotations

import pgjobs

from .systems import _stamp


@pgjobs.task(name="bench.noop")
async def noop() -> None:
    return None


@pgjobs.task(name="bench.stamp")
async def stamp(tag: int | None = None) -> None:
    _stamp(tag)
