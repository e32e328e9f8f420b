"""The reaper: kills runs past their timeout or heartbeat, resets the jobs of dead workers,
deletes finished jobs past their ttl.

The work is ``pgjobs.reap()`` in SQL, safe from several sessions at once; inside workers one
leader at a time runs it, the holder of a session advisory lock, so that a fleet does not repeat
the same scans.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass
from typing import Any

import psycopg

from . import _database, _sql

logger = logging.getLogger("pgjobs.reaper")


@dataclass(frozen=True)
class ReaperConfig:
    """How the reaper runs.

    :param interval: seconds between passes (each wait jittered by ±10%).
    :param batch_size: the most rows one step of a pass changes.
    :param grace_multiplier: a worker is dead when its heartbeat is older than this many heart rates.
    """

    interval: float = 5.0
    batch_size: int = 1000
    grace_multiplier: float = 2.1


@dataclass(frozen=True)
class ReapCounts:
    """What one pass did."""

    killed: int = 0
    dead_workers: int = 0
    reset: int = 0
    deleted_jobs: int = 0
    deleted_workers: int = 0

    def __bool__(self) -> bool:
        return any(vars(self).values())

    def full(self, batch_size: int) -> bool:
        """Whether some step of the pass changed as many rows as it may: more may be waiting."""
        return max(self.killed, self.dead_workers, self.reset, self.deleted_jobs, self.deleted_workers) >= batch_size


async def reap_once(conn: psycopg.AsyncConnection[Any], config: ReaperConfig = ReaperConfig()) -> ReapCounts:
    """Run one pass of ``pgjobs.reap()`` and return its counts."""
    rows = await _database.fetch_async(
        conn, _sql.query("reap"), {"batch_size": config.batch_size, "grace": config.grace_multiplier}
    )
    return ReapCounts(**rows[0])


class Reaper:
    """Runs the reaper every interval while this process holds the leader lock."""

    def __init__(self, dsn: str, config: ReaperConfig = ReaperConfig()) -> None:
        self.config = config
        self.leader = False
        self._link = _database.Link(dsn, "reaper")

    async def run_once(self) -> ReapCounts | None:
        """One pass if this process is (or becomes) the leader; None otherwise."""
        try:
            conn = await self._link.get()
            if not self.leader:
                rows = await _database.fetch_async(conn, _sql.query("reaper_lead"))
                self.leader = bool(rows[0]["leader"])
                if self.leader:
                    logger.info("this worker now runs the reaper")
            if not self.leader:
                return None
            counts = await reap_once(conn, self.config)
        except psycopg.OperationalError as exc:
            self.leader = False  # the lock went with the connection
            await self._link.broken(exc)
            return None
        if counts:
            logger.info(
                "reaper: %d killed, %d workers dead, %d jobs reset, %d jobs and %d workers deleted",
                counts.killed, counts.dead_workers, counts.reset, counts.deleted_jobs, counts.deleted_workers,
            )  # fmt: skip
        return counts

    async def run(self) -> None:
        """Pass after pass until cancelled."""
        try:
            while True:
                counts = None
                try:
                    counts = await self.run_once()
                except psycopg.Error as exc:  # a bad pass is logged; the next one tries again
                    logger.error("reaper pass failed: %s", _database.first_line(exc))
                if counts is not None and counts.full(self.config.batch_size):
                    # More is waiting than a pass may take (finished jobs come faster than
                    # batch_size an interval): go on at once, or the table would grow unbounded.
                    await asyncio.sleep(0)
                    continue
                await asyncio.sleep(self.config.interval * random.uniform(0.9, 1.1))
        finally:
            await self._link.close()
