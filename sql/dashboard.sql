-- Queries the browser dashboard sends (pgjobs/dashboard). Each follows a `-- name: <name>` line and
-- a one-line comment. Values are always parameters; NULL in a filter means any.

-- name: dashboard_queues
-- Every queue with unfinished jobs or settings: pgjobs.queues.
SELECT * FROM pgjobs.queues ORDER BY queue;

-- name: dashboard_finished_per_minute
-- Jobs completed and failed per queue and minute over the last minutes.
SELECT queue, minute, complete, failed FROM pgjobs.finished_per_minute(%(minutes)s::integer);

-- name: dashboard_worker_counts
-- Workers by state: alive (running or stopping, beating), silent (past their heartbeat), stopped, dead.
SELECT CASE WHEN w.status IN ('running', 'stopping') AND pgjobs.worker_is_alive(w.id) THEN 'alive'
            WHEN w.status IN ('running', 'stopping') THEN 'silent'
            ELSE w.status::text END AS state,
       count(*) AS n
FROM pgjobs.workers w GROUP BY 1 ORDER BY 1;

-- name: dashboard_workers
-- Workers, running ones first then newest, with liveness, heartbeat age and the jobs they run.
SELECT w.id, w.hostname, w.pid, w.os_user, w.queues, w.concurrency, w.heart_rate, w.status, w.started_at,
       w.heartbeat_at, w.stopped_at, pgjobs.worker_is_alive(w.id) AS alive, w.stats,
       extract(epoch FROM now() - w.heartbeat_at)::double precision AS heartbeat_age,
       ARRAY(SELECT j.id FROM pgjobs.jobs j
             WHERE j.worker_id = w.id AND j.status IN ('active', 'aborting') AND j.expires_at IS NULL
             ORDER BY j.id) AS running
FROM pgjobs.workers w
ORDER BY w.status IN ('running', 'stopping') DESC, w.started_at DESC
LIMIT %(limit)s;

-- name: dashboard_schedules
-- Every schedule, the next to run first, with the id and status of its latest run.
SELECT s.*, r.job_id AS last_job_id, j.status AS last_job_status
FROM pgjobs.schedules s
LEFT JOIN LATERAL (SELECT x.job_id FROM pgjobs.schedule_runs x WHERE x.schedule = s.name
                   ORDER BY x.tick DESC LIMIT 1) r ON true
LEFT JOIN pgjobs.jobs j ON j.id = r.job_id
ORDER BY s.enabled DESC, s.next_run_at NULLS LAST, s.name;

-- name: dashboard_schedule
-- One schedule by name.
SELECT * FROM pgjobs.schedules WHERE name = %(name)s;

-- name: dashboard_jobs
-- One page of jobs, newest first, that match the filter, below the cursor id.
SELECT * FROM pgjobs.job_list(
    queue => %(queue)s::text,
    status => %(status)s::pgjobs.job_status,
    task => %(task)s::text,
    group_key => %(group_key)s::text,
    key => %(key)s::text,
    error => %(error)s::text,
    before_id => %(before)s::bigint,
    max_jobs => %(limit)s::integer
);

-- name: dashboard_job
-- One job by id.
SELECT * FROM pgjobs.jobs WHERE id = %(id)s;

-- name: dashboard_job_parents
-- The jobs a job depends on (depends_on), by id.
SELECT id, task, queue, status FROM pgjobs.jobs WHERE id = ANY (%(ids)s::bigint[]) ORDER BY id;

-- name: dashboard_job_children
-- Jobs whose depends_on holds this job: enqueued after it, so only newer ids are read.
SELECT id, task, queue, status FROM pgjobs.jobs
WHERE id > %(id)s AND depends_on @> ARRAY[%(id)s::bigint]
ORDER BY id
LIMIT 200;

-- name: dashboard_job_retry
-- Put a failed or aborted job back in its queue; its new status, NULL if it was neither.
SELECT pgjobs.retry(%(id)s) AS status;

-- name: dashboard_job_cancel
-- Cancel a job; its status afterwards, NULL for an unknown id.
SELECT pgjobs.cancel(%(id)s) AS status;

-- name: dashboard_job_delete
-- Delete a job that is not running; whether one was deleted.
SELECT pgjobs.delete_job(%(id)s) AS deleted;

-- name: dashboard_retry_matching
-- Retry (or with dry_run count) every failed or aborted job matching the filter.
SELECT pgjobs.retry_matching(
    queue => %(queue)s::text, status => %(status)s::pgjobs.job_status, task => %(task)s::text,
    group_key => %(group_key)s::text, key => %(key)s::text, error => %(error)s::text, dry_run => %(dry_run)s
) AS n;

-- name: dashboard_cancel_matching
-- Cancel (or with dry_run count) every waiting, queued or active job matching the filter.
SELECT pgjobs.cancel_matching(
    queue => %(queue)s::text, status => %(status)s::pgjobs.job_status, task => %(task)s::text,
    group_key => %(group_key)s::text, key => %(key)s::text, error => %(error)s::text, dry_run => %(dry_run)s
) AS n;

-- name: dashboard_queue_pause
-- Pause or resume a queue; its row of pgjobs.queues afterwards.
SELECT * FROM pgjobs.set_queue(queue => %(queue)s::text, paused => %(paused)s::boolean);

-- name: dashboard_worker_stop
-- Ask a worker to stop; its status, NULL for an unknown worker.
SELECT pgjobs.worker_stop(%(id)s) AS status;

-- name: dashboard_schedule_enable
-- Pause (false) or resume (true) a schedule; whether it exists.
SELECT pgjobs.schedule_enable(%(name)s, %(enabled)s) AS found;

-- name: dashboard_schedule_run_now
-- Run a schedule once now; the job's id.
SELECT pgjobs.schedule_run_now(%(name)s) AS job_id;

-- name: dashboard_schedule_backfill_preview
-- What a backfill of these ticks would do, changing nothing: one row a tick.
SELECT * FROM pgjobs.backfill(%(name)s, %(ticks)s::timestamptz[], %(rerun_failed)s, true);

-- name: dashboard_chart_timeout
-- Bound the chart's query (it reads the last hour of history) within its transaction.
SELECT set_config('statement_timeout', '3s', true);

-- name: dashboard_now
-- The database clock, and the start of its current minute (the chart's last bar).
SELECT now() AS now, date_trunc('minute', now()) AS minute;
