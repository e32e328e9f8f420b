"""Tasks for the benchmark: a no-op, and one that reports when it started."""

from __future__ import annotations

import time

import pgjobs


@pgjobs.task(name="bench.noop")
async def noop() -> None:
    return None


@pgjobs.task(name="bench.stamp")
async def stamp() -> float:
    return time.time()
