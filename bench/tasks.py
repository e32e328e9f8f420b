"""pgjobs tasks for the benchmark: a no-op taking keyword arguments (async, and sync for the
executors scenario), and one that also records when it started."""

from __future__ import annotations

import pgjobs

from .systems import _stamp, check_args


@pgjobs.task(name="bench.noop")
async def noop(account_id: int, action: str) -> None:
    check_args(account_id, action)


@pgjobs.task(name="bench.stamp")
async def stamp(account_id: int, action: str, tag: int) -> None:
    check_args(account_id, action)
    _stamp(tag)


@pgjobs.task(name="bench.noop_sync")
def noop_sync(account_id: int, action: str) -> None:
    check_args(account_id, action)
