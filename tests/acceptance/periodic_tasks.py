"""A task with a 1-second schedule, for the scheduler acceptance test only (other tests' workers
must not fire it)."""

from __future__ import annotations

import pgjobs
from pgjobs import Job


@pgjobs.periodic(cron="* * * * * *", name="every-second", pass_job=True)
async def every_second(job: Job) -> str:
    assert job.tick is not None
    return job.tick.isoformat()
