-- Queries the Python package sends. Each follows a `-- name: <name>` line and a one-line comment.
-- Values are always parameters; identifiers (channel names) are filled in with psycopg.sql.

-- name: job_enqueue
-- Enqueue one job (delay in seconds is added to the database clock) and return its row, its
-- columns in the order of pgjobs.Job's fields (all NULL: refused by a full queue, on_full 'reject').
SELECT j.task, j.args, j.id, j.queue, j.status, j.priority, j.group_key, j.key, j.attempts, j.max_attempts,
       j.scheduled_at, j.timeout, j.heartbeat, j.retry_delay, j.retry_backoff, j.ttl, j.progress, j.meta, j.result,
       j.error, j.worker_id, j.enqueued_at, j.started_at, j.touched_at, j.completed_at, j.abort_reason, j.depends_on,
       j.tenant
FROM pgjobs.enqueue_job(
    task => %(task)s::text,
    args => %(args)s::jsonb,
    queue => %(queue)s::text,
    priority => %(priority)s::integer,
    scheduled_at => coalesce(%(scheduled_at)s::timestamptz, now() + make_interval(secs => %(delay)s::double precision)),
    group_key => %(group_key)s::text,
    key => %(key)s::text,
    max_attempts => %(max_attempts)s::integer,
    timeout => %(timeout)s::double precision,
    heartbeat => %(heartbeat)s::double precision,
    retry_delay => %(retry_delay)s::double precision,
    retry_backoff => %(retry_backoff)s::double precision,
    ttl => %(ttl)s::integer,
    meta => %(meta)s::jsonb,
    depends_on => %(depends_on)s::bigint[],
    tenant => %(tenant)s::text,
    on_full => %(on_full)s::text
) AS j;

-- name: job_enqueue_many
-- Enqueue a JSON array of jobs; one id per element, in input order (NULL: refused by a full queue).
SELECT item, id FROM pgjobs.enqueue_many(%(jobs)s, on_full => %(on_full)s::text) ORDER BY item;

-- name: job_enqueue_arrays
-- Enqueue jobs given as arrays (one element for all, or one a job); args and meta as JSON arrays.
SELECT item, id FROM pgjobs.enqueue_many(
    task => %(task)s::text[],
    args => ARRAY(SELECT jsonb_array_elements(%(args)s::jsonb)),
    queue => %(queue)s::text[],
    priority => %(priority)s::integer[],
    scheduled_at => %(scheduled_at)s::timestamptz[],
    delay => %(delay)s::double precision[],
    group_key => %(group_key)s::text[],
    key => %(key)s::text[],
    max_attempts => %(max_attempts)s::integer[],
    timeout => %(timeout)s::double precision[],
    heartbeat => %(heartbeat)s::double precision[],
    retry_delay => %(retry_delay)s::double precision[],
    retry_backoff => %(retry_backoff)s::double precision[],
    ttl => %(ttl)s::integer[],
    meta => ARRAY(SELECT jsonb_array_elements(%(meta)s::jsonb)),
    tenant => %(tenant)s::text[],
    on_full => %(on_full)s::text
) ORDER BY item;

-- name: job_has
-- Whether the caller has an unfinished job with this key.
SELECT pgjobs.has_job(%(key)s) AS has;

-- name: job_get
-- One job by id.
SELECT * FROM pgjobs.jobs WHERE id = %(id)s;

-- name: job_get_many
-- Several jobs by id.
SELECT * FROM pgjobs.jobs WHERE id = ANY (%(ids)s);

-- name: job_status_many
-- The status of several jobs by id, as this session may see them, and whether each was ever claimed.
SELECT id, status::text AS status, started_at IS NOT NULL AS started FROM pgjobs.jobs WHERE id = ANY (%(ids)s);

-- name: job_cancel
-- Cancel one job; returns its status afterwards (NULL for an unknown id).
SELECT pgjobs.cancel(%(id)s) AS status;

-- name: job_dequeue
-- Claim up to max_jobs due jobs for a worker.
SELECT * FROM pgjobs.dequeue(%(worker_id)s, %(queues)s, %(max_jobs)s);

-- name: job_complete_and_dequeue
-- Record finished runs and claim the next jobs in one transaction: the worker's round trip.
SELECT * FROM pgjobs.complete_and_dequeue(%(worker_id)s, %(queues)s::text[], %(max_jobs)s, %(ids)s::bigint[],
                                          %(results)s::jsonb[], %(attempts)s::integer[]);

-- name: job_complete_many
-- Record the results of finished attempts; returns the ids that were still ours.
SELECT pgjobs.complete_many(%(ids)s, %(results)s, %(attempts)s) AS id;

-- name: job_fail
-- Record a failed attempt; returns the job's new status (NULL when it was no longer ours).
SELECT pgjobs.fail(%(id)s, %(error)s, %(attempt)s, %(retry)s) AS status;

-- name: listen
-- LISTEN on pgjobs.done or pgjobs.events and have them sent (they are sent only while someone listens).
SELECT pgjobs.listen(%(channel)s);

-- name: job_release
-- Give a worker's unfinished jobs back to the queue without counting the attempt.
SELECT pgjobs.release(%(worker_id)s, %(ids)s) AS released;

-- name: migration_applied
-- The migrations applied so far: version and name.
SELECT version, name FROM pgjobs.migrations ORDER BY version;

-- name: migration_record
-- Record one applied migration.
INSERT INTO pgjobs.migrations (version, name) VALUES (%(version)s, %(name)s);

-- name: migration_forget
-- Forget one migration that was rolled back.
DELETE FROM pgjobs.migrations WHERE version = %(version)s;

-- name: schema_files_digest
-- The digest of the sql/schema files last applied (NULL after a rollback).
SELECT (SELECT f.digest FROM pgjobs.schema_files f) AS digest;

-- name: schema_files_record
-- Record the digest of the sql/schema files just applied.
WITH cleared AS (DELETE FROM pgjobs.schema_files)
INSERT INTO pgjobs.schema_files (digest) VALUES (%(digest)s);

-- name: schema_files_forget
-- Forget the applied sql/schema files (a rollback leaves functions another version must apply).
DELETE FROM pgjobs.schema_files;

-- name: schema_functions_obsolete
-- Functions of the pgjobs schema that this transaction did not create or replace: sql/schema
-- no longer defines them.
SELECT p.oid::regprocedure::text AS signature FROM pg_proc p
WHERE p.pronamespace = 'pgjobs'::regnamespace AND p.xmin <> pg_current_xact_id()::xid;

-- name: schema_harden
-- Pin and grant every function (after sql/schema is applied).
SELECT pgjobs.harden();

-- name: notify_queue_usage
-- How full the server's NOTIFY queue is, 0 to 1.
SELECT pg_notification_queue_usage() AS usage;

-- name: migration_lock
-- Serialise migrations: a session-level advisory lock (class 1885957987 is pgjobs' migrations),
-- tried, never waited for (any login may hold it: see migration_lock_holder).
SELECT pg_try_advisory_lock(1885957987, 0) AS locked;

-- name: migration_lock_holder
-- Who holds the migration lock: its session's pid, role and application_name.
SELECT a.pid, a.usename, a.application_name
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.classid = 1885957987 AND l.objid = 0 AND l.objsubid = 2 AND l.granted
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database());

-- name: migration_unlock
-- Release the migration lock.
SELECT pg_advisory_unlock(1885957987, 0);

-- name: schema_exists
-- Whether the pgjobs migrations table exists.
SELECT to_regclass('pgjobs.migrations') IS NOT NULL AS present;

-- name: job_release_unknown
-- Give back the jobs held under a worker's id that it is not running (a claim lost in transit).
SELECT pgjobs.release(%(worker_id)s, ARRAY(
    SELECT id FROM pgjobs.jobs
    WHERE worker_id = %(worker_id)s AND status IN ('active', 'aborting') AND id <> ALL (%(running)s::bigint[])
)) AS released;

-- name: queue_channels
-- The NOTIFY channel of each queue.
SELECT pgjobs.queue_channel(q) AS channel FROM unnest(%(queues)s::text[]) AS q;

-- name: reap
-- One reaper pass; one row of counts.
SELECT * FROM pgjobs.reap(%(batch_size)s, %(grace)s);

-- name: reap_as
-- One reaper pass if holder holds (or takes) the reaper's lease; one row: leader, then the counts.
SELECT * FROM pgjobs.reap_as(%(holder)s, %(lease_ttl)s, %(batch_size)s, %(grace)s);

-- name: jobs_dead_tuples
-- Dead and live tuples of the hot jobs table (statistics, a moment late), and whether this role
-- may VACUUM it.
SELECT coalesce((SELECT n_dead_tup FROM pg_stat_user_tables WHERE relid = 'pgjobs.jobs_live'::regclass), 0) AS dead,
       coalesce((SELECT n_live_tup FROM pg_stat_user_tables WHERE relid = 'pgjobs.jobs_live'::regclass), 0) AS live,
       (SELECT pg_has_role(current_user, c.relowner, 'MEMBER') FROM pg_class c WHERE c.oid = 'pgjobs.jobs_live'::regclass)
       OR EXISTS (SELECT FROM pg_roles r WHERE r.rolname = 'pg_maintain' AND pg_has_role(current_user, r.oid, 'MEMBER'))
       AS may_vacuum;

-- name: jobs_vacuum
-- Vacuum the hot jobs table (outside a transaction), skipping it when another vacuum holds it.
VACUUM (SKIP_LOCKED) pgjobs.jobs_live;

-- name: lease_release
-- Hand a lease back so that another worker takes it at once.
SELECT pgjobs.lease_release(%(name)s, %(holder)s) AS released;

-- name: worker_register
-- Register a worker process.
SELECT pgjobs.worker_register(%(id)s, %(hostname)s, %(pid)s, %(os_user)s, %(queues)s, %(concurrency)s,
                              %(heart_rate)s);

-- name: worker_heartbeat
-- One heartbeat: touches the worker's runs, settles the ones it lost track of; returns its status,
-- the runs to abort or drop, and the runs settled.
SELECT * FROM pgjobs.worker_heartbeat(%(id)s, %(job_ids)s::bigint[], %(attempts)s::integer[], %(stats)s::jsonb,
                                     %(claiming)s);

-- name: worker_stopped
-- Record a clean exit.
SELECT pgjobs.worker_stopped(%(id)s);

-- name: worker_stop
-- Ask a worker to stop; returns its status.
SELECT pgjobs.worker_stop(%(id)s) AS status;

-- name: worker_list
-- Workers, newest first, with whether each is alive and whether it holds the reaper's lease.
SELECT w.*, pgjobs.worker_is_alive(w.id) AS alive,
       coalesce(l.holder = w.id AND l.expires_at > now(), false) AS leader
FROM pgjobs.workers w
LEFT JOIN pgjobs.leases l ON l.name = 'reaper'
ORDER BY w.started_at DESC;

-- name: worker_is_alive
-- Whether a worker is alive.
SELECT pgjobs.worker_is_alive(%(id)s, %(grace)s) AS alive;

-- name: job_touch
-- Touch a running job, with optional progress and meta.
SELECT pgjobs.touch(%(id)s, %(attempt)s, %(progress)s, %(meta)s) AS touched;

-- name: schedule_upsert
-- Create or update a schedule.
SELECT (pgjobs.schedule(
    name => %(name)s, task => %(task)s, args => %(args)s, cron => %(cron)s, every => %(every)s::double precision,
    timezone => %(timezone)s, queue => %(queue)s, priority => %(priority)s::integer, group_key => %(group_key)s,
    job_options => %(job_options)s, trigger_on_start => %(trigger_on_start)s,
    missed => %(missed)s::pgjobs.missed_policy, misfire_grace => %(misfire_grace)s::double precision,
    max_catchup => %(max_catchup)s::integer, enabled => %(enabled)s
)).name;

-- name: schedule_due
-- Enabled schedules that are due (or not planned yet), locked for this pass, but the parked ones;
-- with a digest of each one's definition, whether its last run is unfinished, the database clock.
SELECT (d.schedule).*, d.definition, d.busy, d.now
FROM pgjobs.schedule_due(%(limit)s, %(parked)s) AS d;

-- name: schedule_fire
-- Fire ticks of a schedule and store its next run.
SELECT pgjobs.schedule_fire(%(name)s, %(ticks)s::timestamptz[], %(next)s::timestamptz) AS fired;

-- name: schedule_get
-- One schedule by name.
SELECT * FROM pgjobs.schedules WHERE name = %(name)s;

-- name: schedule_list
-- Every schedule, by name.
SELECT * FROM pgjobs.schedules ORDER BY name;

-- name: schedule_enable
-- Pause or resume a schedule.
SELECT pgjobs.schedule_enable(%(name)s, %(enabled)s) AS found;

-- name: schedule_remove
-- Remove a schedule.
SELECT pgjobs.unschedule(%(name)s) AS found;

-- name: schedule_backfill
-- Enqueue the jobs of given ticks of a schedule.
SELECT * FROM pgjobs.backfill(%(name)s, %(ticks)s::timestamptz[], %(rerun_failed)s, %(dry_run)s);

-- name: queue_set
-- Change a queue's settings (NULL leaves one as it is); returns the queue's row of pgjobs.queues.
SELECT * FROM pgjobs.set_queue(
    queue => %(queue)s::text,
    paused => %(paused)s::boolean,
    rate_limit => %(rate_limit)s::integer,
    rate_period => %(rate_period)s::double precision,
    max_active => %(max_active)s::integer,
    group_rate_limit => %(group_rate_limit)s::integer,
    group_rate_period => %(group_rate_period)s::double precision,
    group_max_active => %(group_max_active)s::integer,
    fair => %(fair)s::boolean,
    max_queued => %(max_queued)s::integer
);

-- name: queue_pressure
-- How hard producers press on these queues (NULL: all): queued, max_queued, their ratio, the wait
-- of the job next in line.
SELECT * FROM pgjobs.queue_pressure(%(queues)s::text[]);

-- name: queue_tenant_set
-- A tenant's weight on a fair queue (NULL: back to 1); returns its row of pgjobs.queue_tenants.
SELECT * FROM pgjobs.set_tenant(%(queue)s::text, %(tenant)s::text, %(weight)s::double precision);

-- name: queue_tenant_list
-- The tenants of a queue that have a weight or a pass, by name.
SELECT * FROM pgjobs.queue_tenants WHERE queue = %(queue)s ORDER BY tenant;

-- name: queue_list
-- Every queue with unfinished jobs or settings.
SELECT * FROM pgjobs.queues ORDER BY queue;

-- name: job_unfinished_count
-- Jobs of these queues not finished yet (a client counts its own).
SELECT count(*) AS n FROM pgjobs.jobs
WHERE queue = ANY (%(queues)s) AND expires_at IS NULL AND status IN ('waiting', 'queued', 'active', 'aborting');

-- name: job_retry
-- Put a failed or aborted job back in its queue; its new status, NULL if it was neither.
SELECT pgjobs.retry(%(id)s) AS status;

-- name: job_retry_failed
-- Retry every failed job of a queue and/or task (NULL: any); how many.
SELECT pgjobs.retry_failed(%(queue)s, %(task)s) AS n;

-- name: job_retry_failed_step
-- Retry at most max_jobs failed jobs of a queue and/or task, or with dry_run count them all; how many.
SELECT pgjobs.retry_matching(queue => %(queue)s, status => 'failed', task => %(task)s, dry_run => %(dry_run)s,
                             max_jobs => %(max_jobs)s) AS n;

-- name: job_delete
-- Delete a job that is not running.
SELECT pgjobs.delete_job(%(id)s) AS deleted;

-- name: job_list
-- Jobs newest first, filtered (NULL: any), one page.
SELECT * FROM pgjobs.jobs
WHERE (%(queue)s::text IS NULL OR queue = %(queue)s)
  AND (%(status)s::pgjobs.job_status IS NULL OR status = %(status)s::pgjobs.job_status)
  AND (%(task)s::text IS NULL OR task = %(task)s)
ORDER BY id DESC
LIMIT %(limit)s;

-- name: health
-- The measurements `pgjobs health` judges.
SELECT metric, subject, value FROM pgjobs.health() ORDER BY metric, subject;

-- name: worker_counts
-- Workers by status; running or stopping ones past their heartbeat count as silent.
SELECT CASE WHEN w.status IN ('running', 'stopping') AND NOT pgjobs.worker_is_alive(w.id) THEN 'silent'
            ELSE w.status::text END AS status,
       count(*) AS n
FROM pgjobs.workers w GROUP BY 1;
