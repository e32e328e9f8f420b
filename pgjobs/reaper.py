"""The reaper: kills runs past their timeout or heartbeat, resets the jobs of dead workers,
deletes finished jobs past their ttl.

The work is ``pgjobs.reap()`` in SQL, safe from several sessions at once; inside workers one
leader at a time runs it, the holder of the ``reaper`` lease (``pgjobs.reap_as``), so that a fleet
does not repeat the same scans. The lease is on the database clock and renewed by each pass in the
transaction that does the pass's work: a leader that freezes or is cut off loses it when it runs
out, and a deposed leader that wakes up changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import secrets
import time
from dataclasses import dataclass

import psycopg

from . import _database, _sql
from .errors import ArgumentError, ConfigurationError

logger = logging.getLogger("pgjobs.reaper")

# The bounds pgjobs.lease_take and pgjobs.reap hold every caller to (sql/schema/50_liveness.sql):
# a lease a holder stops renewing leaves the fleet without a reaper for the rest of its ttl, and
# under 1.5 heart rates of silence a live worker whose beat is a moment late would be declared
# dead and its runs handed out again while it still runs them.
MAX_LEASE_TTL = 600.0
MIN_GRACE_MULTIPLIER = 1.5


@dataclass(frozen=True)
class ReaperConfig:
    """How the reaper runs.

    :param interval: seconds between passes (each wait jittered by ±10%).
    :param batch_size: the most rows one step of a pass changes.
    :param grace_multiplier: a worker is dead when its heartbeat is older than this many heart rates
        (at least 1.5).
    :param lease_ttl: seconds the leader's lease lasts after each pass (at most 600); when it runs
        out another worker takes over. Default: 3 intervals, so one or two late passes do not cost
        the lease, and 600 for intervals over 200 s (then the lease may move between passes).
    :param vacuum_threshold: after a pass, the leader VACUUMs the hot table ``pgjobs.jobs_live``
        once it has this many dead tuples (0: never). Every claim walks the index entries of the
        jobs claimed since the last vacuum, and autovacuum (a minute apart at best, off on some
        servers) falls behind a queue; with the visibility map a vacuum this frequent costs little.
    :param vacuum_scale_factor: ... and at least this fraction of its live rows dead: a vacuum reads
        every index whole, so a deep backlog (a million queued jobs) is vacuumed less often, while
        index scans skip the entries they find dead meanwhile.
    """

    interval: float = 5.0
    batch_size: int = 1000
    grace_multiplier: float = 2.1
    lease_ttl: float | None = None
    vacuum_threshold: int = 10_000
    vacuum_scale_factor: float = 0.2

    def __post_init__(self) -> None:
        if not 0 < self.interval < math.inf:
            raise ArgumentError(f"reaper interval must be a positive number of seconds, got {self.interval!r}")
        if self.batch_size < 1:
            raise ArgumentError(f"reaper batch_size must be at least 1, got {self.batch_size!r}")
        if not MIN_GRACE_MULTIPLIER <= self.grace_multiplier < math.inf:
            raise ArgumentError(
                f"grace_multiplier must be at least {MIN_GRACE_MULTIPLIER} heart rates, got {self.grace_multiplier!r}"
            )
        if self.lease_ttl is not None and not 0 < self.lease_ttl <= MAX_LEASE_TTL:
            raise ArgumentError(
                f"lease_ttl must be more than 0 and at most {MAX_LEASE_TTL:g} seconds, got {self.lease_ttl!r}"
            )

    @property
    def ttl(self) -> float:
        """The lease's ttl in seconds."""
        return self.lease_ttl if self.lease_ttl is not None else min(3 * self.interval, MAX_LEASE_TTL)


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


class Reaper:
    """Runs a reaper pass every interval; a pass does work only while ``holder`` holds the lease.

    :param holder: who contends for the lease: the worker's id (``pgjobs workers`` shows the leader).
    :param pool: connections shared with the rest of the process (a worker's); default: one of its own.
    """

    def __init__(
        self,
        dsn: str,
        config: ReaperConfig = ReaperConfig(),
        *,
        holder: str | None = None,
        pool: _database.Pool | None = None,
    ) -> None:
        self.config = config
        self.dsn = dsn
        self.holder = holder or f"reaper:{secrets.token_hex(4)}"
        self.leader = False
        self.vacuums = 0
        self._may_vacuum: bool | None = None  # asked once: only the table's owner may VACUUM it
        self._own_pool = pool is None
        self._pool = pool or _database.Pool(dsn, owner=self.holder)

    async def run_once(self) -> ReapCounts | None:
        """One pass if this process holds (or takes) the lease; None otherwise (or when the
        database is unavailable: the pool reported it)."""
        try:
            async with self._pool.connection("reaper") as conn:
                (row,) = await _database.fetch_async(
                    conn,
                    _sql.query("reap_as"),
                    {
                        "holder": self.holder, "lease_ttl": self.config.ttl, "batch_size": self.config.batch_size,
                        "grace": self.config.grace_multiplier,
                    },
                )  # fmt: skip
        except psycopg.Error as exc:
            if _database.transient(exc):
                return None
            raise
        self._pool.outage.ok()
        leader = bool(row.pop("leader"))
        if leader != self.leader:
            logger.info("this worker %s the reaper", "now runs" if leader else "no longer runs")
            self.leader = leader
        if not leader:
            return None
        counts = ReapCounts(**row)
        if counts:
            logger.info(
                "reaper: %d killed, %d workers dead, %d jobs reset, %d jobs and %d workers deleted",
                counts.killed, counts.dead_workers, counts.reset, counts.deleted_jobs, counts.deleted_workers,
            )  # fmt: skip
        return counts

    async def vacuum_if_due(self) -> bool:
        """VACUUM the jobs table when it holds vacuum_threshold dead tuples and this role may;
        True when it did. SKIP_LOCKED: a vacuum already under way (autovacuum) is not waited for.
        The VACUUM runs on a session of its own, opened for it: on a big table it takes seconds,
        which the shared connection's heartbeats and claims must not wait for."""
        if not self.config.vacuum_threshold or self._may_vacuum is False:
            return False
        async with self._pool.connection("vacuum") as conn:
            (row,) = await _database.fetch_async(conn, _sql.query("jobs_dead_tuples"))
        if self._may_vacuum is None:
            self._may_vacuum = bool(row["may_vacuum"])
            if not self._may_vacuum:
                logger.info("this role does not own pgjobs.jobs_live: the reaper leaves vacuuming to autovacuum")
                return False
        if row["dead"] < max(self.config.vacuum_threshold, self.config.vacuum_scale_factor * row["live"]):
            return False
        began = time.monotonic()
        try:
            session = await _database.connect_async(self.dsn, name=f"pgjobs vacuum {self.holder}")
        except ConfigurationError as exc:  # no free slot, say: the next pass tries again
            logger.debug("no session to vacuum pgjobs.jobs_live: %s", exc)
            return False
        try:
            await session.execute(_sql.query("jobs_vacuum"))
        finally:
            await session.close()
        self.vacuums += 1
        logger.debug("vacuumed pgjobs.jobs_live (%d dead tuples) in %.2f s", row["dead"], time.monotonic() - began)
        return True

    async def resign(self) -> None:
        """Hand the lease back, so that another worker takes over at its next pass, not after the ttl."""
        if not self.leader:
            return
        self.leader = False
        with contextlib.suppress(psycopg.Error):
            async with self._pool.connection("reaper") as conn:
                await _database.fetch_async(
                    conn, _sql.query("lease_release"), {"name": "reaper", "holder": self.holder}
                )

    async def run(self) -> None:
        """Pass after pass until cancelled; the lease is handed back on the way out."""
        try:
            while True:
                counts = None
                try:
                    counts = await self.run_once()
                    if counts is not None:
                        await self.vacuum_if_due()
                except psycopg.Error as exc:  # a bad pass is logged; the next one tries again
                    if not _database.transient(exc):
                        logger.error("reaper pass failed: %s", _database.first_line(exc))
                if counts is not None and counts.full(self.config.batch_size):
                    # More is waiting than a pass may take (finished jobs come faster than
                    # batch_size an interval): go on at once, or the table would grow unbounded.
                    await asyncio.sleep(0)
                    continue
                await asyncio.sleep(self.config.interval * random.uniform(0.9, 1.1))
        finally:
            # Bounded: a host cut off from the database must still be able to stop.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.resign(), 2.0)
            if self._own_pool:
                await self._pool.close()
