-- 0002 liveness: workers as rows, heartbeats, the reaper, and events of job state changes.

-- ---------------------------------------------------------------------------------------------
-- Enums
-- ---------------------------------------------------------------------------------------------
CREATE TYPE pgjobs.worker_status AS ENUM (
    'running',  -- claiming and running jobs -> stopping, stopped, dead
    'stopping', -- asked to stop (worker_stop or a signal); finishing its jobs -> stopped, dead
    'stopped',  -- exited cleanly (final)
    'dead'      -- missed its heartbeats; the reaper reset its jobs -> running if it beats again
);

-- ---------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------
CREATE TABLE pgjobs.workers (
    id           text PRIMARY KEY,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    os_user      text NOT NULL,
    queues       text[] NOT NULL,
    concurrency  integer NOT NULL,
    heart_rate   double precision NOT NULL,  -- seconds between heartbeats
    status       pgjobs.worker_status NOT NULL DEFAULT 'running',
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz,
    CONSTRAINT workers_heart_rate_check CHECK (heart_rate > 0),
    CONSTRAINT workers_concurrency_check CHECK (concurrency >= 1)
);

-- Why the reaper asked a running job to stop (timeout, heartbeat). NULL while aborting means a
-- user cancelled it: it ends aborted. Non-NULL: it ends like a failure (retried or failed).
ALTER TABLE pgjobs.jobs ADD COLUMN abort_reason text;

-- ---------------------------------------------------------------------------------------------
-- Indexes
-- ---------------------------------------------------------------------------------------------
-- reap: workers whose heartbeat is overdue.
CREATE INDEX workers_heartbeat_at_idx ON pgjobs.workers (heartbeat_at) WHERE status IN ('running', 'stopping');

-- reap (retention): finished jobs, oldest first.
CREATE INDEX jobs_completed_at_idx ON pgjobs.jobs (completed_at)
    WHERE status IN ('complete', 'failed', 'aborted') AND ttl <> 0;

-- ---------------------------------------------------------------------------------------------
-- Functions: helpers
-- ---------------------------------------------------------------------------------------------

-- Where a job goes when a run ends without a result: aborted when a user cancelled it, queued
-- again while attempts remain (and retry), else failed.
CREATE FUNCTION pgjobs._after_run(j pgjobs.jobs, retry boolean) RETURNS pgjobs.job_status
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN j.status = 'aborting' AND j.abort_reason IS NULL THEN 'aborted'
        WHEN retry AND j.attempts < j.max_attempts THEN 'queued'
        ELSE 'failed'
    END::pgjobs.job_status
$$;

-- Send ids, comma-separated, on a channel: at most 500 a notification, far below the
-- 8000-byte payload limit.
CREATE FUNCTION pgjobs._notify_ids(channel text, ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(channel, string_agg(u.id::text, ','))
    FROM unnest(ids) WITH ORDINALITY AS u(id, n)
    GROUP BY (u.n - 1) / 500;
END;
$$;

-- Events: every change of a job's status is announced on channel pgjobs.events as
-- "id:status" items, comma-separated, a few hundred per notification. Set pgjobs.events = 'off'
-- in a session to send none from it.
CREATE FUNCTION pgjobs._events_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('pgjobs.events', true), '') = 'off' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('pgjobs.events', string_agg(c.item, ','))
        FROM (SELECT n.id || ':' || n.status AS item, (row_number() OVER () - 1) / 300 AS batch
              FROM new_rows n) c
        GROUP BY c.batch;
    ELSE
        PERFORM pg_notify('pgjobs.events', string_agg(c.item, ','))
        FROM (SELECT n.id || ':' || n.status AS item, (row_number() OVER () - 1) / 300 AS batch
              FROM new_rows n JOIN old_rows o ON o.id = n.id
              WHERE n.status IS DISTINCT FROM o.status) c
        GROUP BY c.batch;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_events_insert AFTER INSERT ON pgjobs.jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgjobs._events_trigger();

CREATE TRIGGER jobs_events_update AFTER UPDATE ON pgjobs.jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgjobs._events_trigger();

-- ---------------------------------------------------------------------------------------------
-- Functions: jobs (replacing 0001's bodies; signatures unchanged)
-- ---------------------------------------------------------------------------------------------

-- Record a failed attempt. With attempts left (and retry true) the job is queued again after
-- its retry delay; otherwise it is failed. A job a user cancelled becomes aborted; one the
-- reaper stopped is retried or failed with the reaper's reason as its error. Returns the new
-- status, or NULL when the job was not active (or the attempt fence did not match).
CREATE OR REPLACE FUNCTION pgjobs.fail(job_id bigint, error text, attempt integer DEFAULT NULL, retry boolean DEFAULT true)
RETURNS pgjobs.job_status
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    old pgjobs.jobs;
    s pgjobs.job_status;
BEGIN
    SELECT * INTO old FROM pgjobs.jobs j
    WHERE j.id = fail.job_id AND j.status IN ('active', 'aborting')
      AND (fail.attempt IS NULL OR j.attempts = fail.attempt)
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    s := pgjobs._after_run(old, coalesce(fail.retry, true));
    UPDATE pgjobs.jobs j
    SET status = s,
        error = coalesce(old.abort_reason, fail.error),
        abort_reason = NULL,
        scheduled_at = CASE WHEN s = 'queued'
            THEN now() + make_interval(secs => pgjobs.retry_delay_for(old.attempts, old.retry_delay, old.retry_backoff))
            ELSE j.scheduled_at END,
        worker_id = CASE WHEN s = 'queued' THEN NULL ELSE j.worker_id END,
        completed_at = CASE WHEN s = 'queued' THEN NULL ELSE now() END,
        touched_at = now()
    WHERE j.id = old.id;
    IF s <> 'queued' THEN
        PERFORM pgjobs._announce_done(ARRAY[old.id]);
    END IF;
    IF s = 'queued' OR old.group_key IS NOT NULL THEN
        -- A retry, or the next job of the group, may be due: wake the workers of the queue.
        PERFORM pg_notify(pgjobs.queue_channel(old.queue), '');
    END IF;
    RETURN s;
END;
$$;

-- Give running jobs back to the queue without counting the attempt (a worker shutting down).
-- Only jobs held by worker_id are touched. A job a user cancelled becomes aborted; one the reaper
-- stopped ends like a failure. Returns the count.
CREATE OR REPLACE FUNCTION pgjobs.release(worker_id text, job_ids bigint[])
RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    woken text[];
    finished bigint[];
    n integer;
BEGIN
    WITH old AS (
        SELECT j.*, CASE WHEN j.status = 'active' THEN 'queued'::pgjobs.job_status
                         ELSE pgjobs._after_run(j, true) END AS next
        FROM pgjobs.jobs j
        WHERE j.id = ANY (release.job_ids) AND j.worker_id = release.worker_id
          AND j.status IN ('active', 'aborting')
        FOR UPDATE
    ), changed AS (
        UPDATE pgjobs.jobs j
        SET status = old.next,
            attempts = CASE WHEN old.status = 'active' THEN greatest(j.attempts - 1, 0) ELSE j.attempts END,
            error = coalesce(old.abort_reason, j.error),
            abort_reason = NULL,
            worker_id = CASE WHEN old.next = 'queued' THEN NULL ELSE j.worker_id END,
            started_at = CASE WHEN old.next = 'queued' THEN NULL ELSE j.started_at END,
            completed_at = CASE WHEN old.next = 'queued' THEN NULL ELSE now() END
        FROM old
        WHERE j.id = old.id
        RETURNING j.id, j.queue, j.status, j.group_key
    )
    SELECT count(*),
           array_agg(DISTINCT c.queue) FILTER (WHERE c.status = 'queued' OR c.group_key IS NOT NULL),
           array_agg(c.id) FILTER (WHERE c.status <> 'queued')
    INTO n, woken, finished
    FROM changed c;
    PERFORM pg_notify(pgjobs.queue_channel(q), '') FROM unnest(woken) AS q;
    PERFORM pgjobs._announce_done(finished);
    RETURN n;
END;
$$;

-- Cancel a job: queued -> aborted at once; active (or stopping for the reaper) -> aborting, and
-- its worker is told on channel pgjobs.cancel. Returns the job's status afterwards (unchanged
-- when already finished), NULL for an unknown id.
CREATE OR REPLACE FUNCTION pgjobs.cancel(job_id bigint)
RETURNS pgjobs.job_status
LANGUAGE plpgsql AS $$
DECLARE
    s pgjobs.job_status;
BEGIN
    UPDATE pgjobs.jobs j
    SET status = CASE WHEN j.status = 'queued' THEN 'aborted' ELSE 'aborting' END::pgjobs.job_status,
        abort_reason = NULL,
        completed_at = CASE WHEN j.status = 'queued' THEN now() END
    WHERE j.id = job_id AND j.status IN ('queued', 'active', 'aborting')
    RETURNING j.status INTO s;
    IF FOUND THEN
        IF s = 'aborted' THEN
            PERFORM pgjobs._announce_done(ARRAY[job_id]);
        ELSE
            PERFORM pg_notify('pgjobs.cancel', job_id::text);
        END IF;
        RETURN s;
    END IF;
    SELECT j.status INTO s FROM pgjobs.jobs j WHERE j.id = job_id;
    RETURN s;
END;
$$;

-- Refresh a running job's touched time, and optionally its progress (0 to 1) and meta (merged
-- into the stored object). Fenced by the attempt: false when the run is no longer current.
CREATE FUNCTION pgjobs.touch(job_id bigint, attempt integer, progress double precision DEFAULT NULL, meta jsonb DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    IF touch.progress IS NOT NULL AND NOT (touch.progress >= 0 AND touch.progress <= 1) THEN
        PERFORM pgjobs._refuse('progress', format('must be between 0 and 1, got %s', touch.progress));
    END IF;
    IF touch.meta IS NOT NULL AND jsonb_typeof(touch.meta) <> 'object' THEN
        PERFORM pgjobs._refuse('meta', 'must be a JSON object');
    END IF;
    UPDATE pgjobs.jobs j
    SET touched_at = now(),
        progress = coalesce(touch.progress, j.progress),
        meta = CASE WHEN touch.meta IS NULL THEN j.meta ELSE j.meta || touch.meta END
    WHERE j.id = touch.job_id AND j.attempts = touch.attempt AND j.status IN ('active', 'aborting');
    RETURN FOUND;
END;
$$;

-- ---------------------------------------------------------------------------------------------
-- Functions: workers
-- ---------------------------------------------------------------------------------------------

-- Register a worker process (a fresh id per process start).
CREATE FUNCTION pgjobs.worker_register(
    worker_id text, hostname text, pid integer, os_user text, queues text[], concurrency integer,
    heart_rate double precision
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF worker_id IS NULL OR worker_id = '' OR length(worker_id) > 200 THEN
        PERFORM pgjobs._refuse('worker_id', 'must be 1 to 200 characters');
    END IF;
    IF NOT heart_rate > 0 OR heart_rate = 'Infinity' THEN
        PERFORM pgjobs._refuse('heart_rate', format('must be a positive number of seconds, got %s', heart_rate));
    END IF;
    INSERT INTO pgjobs.workers (id, hostname, pid, os_user, queues, concurrency, heart_rate)
    VALUES (worker_id, hostname, pid, os_user, queues, concurrency, heart_rate);
END;
$$;

-- One heartbeat of a worker: refreshes its row and the touched time of the runs it holds (job
-- ids with the attempt each one claimed), all in one statement each. Returns the worker's status
-- (stopping: it was asked to stop), the runs it must stop because they are aborting, and the
-- runs that are no longer its own (reset by the reaper, maybe running elsewhere).
-- A worker marked dead that beats again is running again; its old runs are lost.
CREATE FUNCTION pgjobs.worker_heartbeat(worker_id text, job_ids bigint[] DEFAULT '{}', attempts integer[] DEFAULT '{}')
RETURNS TABLE (status pgjobs.worker_status, abort bigint[], lost bigint[])
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s pgjobs.worker_status;
BEGIN
    UPDATE pgjobs.workers w
    SET heartbeat_at = now(),
        status = CASE WHEN w.status = 'dead' THEN 'running'::pgjobs.worker_status ELSE w.status END
    WHERE w.id = worker_heartbeat.worker_id
    RETURNING w.status INTO s;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgjobs: worker_id: no worker %', worker_heartbeat.worker_id
            USING ERRCODE = 'no_data_found';
    END IF;
    RETURN QUERY
    WITH held AS (
        SELECT u.id, u.attempt FROM unnest(worker_heartbeat.job_ids, worker_heartbeat.attempts) AS u(id, attempt)
    ), touched AS (
        UPDATE pgjobs.jobs j SET touched_at = now()
        FROM held h
        WHERE j.id = h.id AND j.attempts = h.attempt AND j.worker_id = worker_heartbeat.worker_id
          AND j.status IN ('active', 'aborting')
        RETURNING j.id, j.status
    )
    SELECT s,
           coalesce((SELECT array_agg(t.id) FROM touched t WHERE t.status = 'aborting'), '{}'),
           coalesce((SELECT array_agg(h.id) FROM held h WHERE h.id NOT IN (SELECT t.id FROM touched t)), '{}');
END;
$$;

-- Whether a worker is running and beat within grace_multiplier heart rates (database clock).
CREATE FUNCTION pgjobs.worker_is_alive(worker_id text, grace_multiplier double precision DEFAULT 2.1)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce((
        SELECT w.status IN ('running', 'stopping')
               AND w.heartbeat_at >= now() - make_interval(secs => w.heart_rate * grace_multiplier)
        FROM pgjobs.workers w WHERE w.id = worker_id), false)
$$;

-- Ask a worker to stop gracefully, from anywhere: it is told on channel pgjobs.worker (payload:
-- its id) and sees the status at its next heartbeat. Returns its status, NULL for an unknown id.
CREATE FUNCTION pgjobs.worker_stop(worker_id text)
RETURNS pgjobs.worker_status
LANGUAGE plpgsql AS $$
DECLARE
    s pgjobs.worker_status;
BEGIN
    UPDATE pgjobs.workers w SET status = 'stopping'
    WHERE w.id = worker_stop.worker_id AND w.status = 'running'
    RETURNING w.status INTO s;
    IF FOUND THEN
        PERFORM pg_notify('pgjobs.worker', worker_stop.worker_id);
        RETURN s;
    END IF;
    SELECT w.status INTO s FROM pgjobs.workers w WHERE w.id = worker_stop.worker_id;
    RETURN s;
END;
$$;

-- Record that a worker exited cleanly.
CREATE FUNCTION pgjobs.worker_stopped(worker_id text) RETURNS void
LANGUAGE sql AS $$
    UPDATE pgjobs.workers w SET status = 'stopped', stopped_at = now(), heartbeat_at = now()
    WHERE w.id = worker_id
$$;

-- ---------------------------------------------------------------------------------------------
-- Functions: the reaper
-- ---------------------------------------------------------------------------------------------

-- One pass of the reaper, each step in batches of at most batch_size rows:
-- 1. kill: active jobs past their timeout or heartbeat become aborting with a reason (their worker
--    stops them, and they are retried or failed); jobs held by an id that is not a live registered
--    worker are settled at once;
-- 2. orphans: workers that missed their heartbeats are marked dead and their jobs are reset
--    (queued again, the attempt counted, or failed when out of attempts; user cancels end aborted);
-- 3. retention: finished jobs past their ttl are deleted; so are workers stopped or dead for a week.
-- Safe to run from several sessions at once. Returns one row of counts.
CREATE FUNCTION pgjobs.reap(batch_size integer DEFAULT 1000, grace_multiplier double precision DEFAULT 2.1)
RETURNS TABLE (killed integer, dead_workers integer, reset integer, deleted_jobs integer, deleted_workers integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n_killed integer;
    n_dead integer;
    n_reset integer;
    n_deleted integer;
    n_workers integer;
    ended bigint[];
    woken text[];
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        PERFORM pgjobs._refuse('batch_size', format('must be at least 1, got %s', batch_size));
    END IF;

    -- 1. Kill runs past their timeout or heartbeat.
    WITH over AS (
        SELECT j.id,
               CASE WHEN j.timeout > 0 AND j.started_at + make_interval(secs => j.timeout) < now()
                    THEN format('timeout: ran longer than %s s', j.timeout)
                    ELSE format('heartbeat: not touched for more than %s s', j.heartbeat) END AS reason
        FROM pgjobs.jobs j
        WHERE j.status = 'active'
          AND ((j.timeout > 0 AND j.started_at + make_interval(secs => j.timeout) < now())
            OR (j.heartbeat > 0 AND j.touched_at + make_interval(secs => j.heartbeat) < now()))
        LIMIT batch_size
        FOR UPDATE SKIP LOCKED
    ), changed AS (
        UPDATE pgjobs.jobs j SET status = 'aborting', abort_reason = over.reason
        FROM over WHERE j.id = over.id
        RETURNING j.id
    )
    SELECT count(*), array_agg(c.id) INTO n_killed, ended FROM changed c;
    PERFORM pgjobs._notify_ids('pgjobs.cancel', ended);

    -- 2. Workers that missed their heartbeats are dead.
    WITH gone AS (
        UPDATE pgjobs.workers w SET status = 'dead'
        WHERE w.id IN (
            SELECT w2.id FROM pgjobs.workers w2
            WHERE w2.status IN ('running', 'stopping')
              AND w2.heartbeat_at < now() - make_interval(secs => w2.heart_rate * grace_multiplier)
            LIMIT batch_size
            FOR UPDATE SKIP LOCKED)
        RETURNING w.id
    )
    SELECT count(*) INTO n_dead FROM gone;

    -- Reset the runs of dead or stopped workers, and killed runs that no live registered worker
    -- will stop (their holder is not a worker row, e.g. a client of the SQL API).
    WITH orphan AS (
        SELECT j.*, pgjobs._after_run(j, true) AS next
        FROM pgjobs.jobs j
        LEFT JOIN pgjobs.workers w ON w.id = j.worker_id
        WHERE j.status IN ('active', 'aborting')
          AND (w.status IN ('dead', 'stopped') OR (j.status = 'aborting' AND w.id IS NULL))
        LIMIT batch_size
        FOR UPDATE OF j SKIP LOCKED
    ), changed AS (
        UPDATE pgjobs.jobs j
        SET status = orphan.next,
            error = coalesce(orphan.abort_reason,
                             CASE WHEN orphan.next = 'aborted' THEN j.error
                                  ELSE format('worker %s died while running this job', orphan.worker_id) END),
            abort_reason = NULL,
            scheduled_at = CASE WHEN orphan.next = 'queued'
                THEN now() + make_interval(secs => pgjobs.retry_delay_for(orphan.attempts, orphan.retry_delay, orphan.retry_backoff))
                ELSE j.scheduled_at END,
            worker_id = CASE WHEN orphan.next = 'queued' THEN NULL ELSE j.worker_id END,
            completed_at = CASE WHEN orphan.next = 'queued' THEN NULL ELSE now() END
        FROM orphan WHERE j.id = orphan.id
        RETURNING j.id, j.queue, j.status
    )
    SELECT count(*), array_agg(c.id) FILTER (WHERE c.status <> 'queued'), array_agg(DISTINCT c.queue)
    INTO n_reset, ended, woken
    FROM changed c;
    PERFORM pgjobs._announce_done(ended);
    PERFORM pg_notify(pgjobs.queue_channel(q), '') FROM unnest(woken) AS q;

    -- 3. Retention.
    WITH expired AS (
        SELECT j.id FROM pgjobs.jobs j
        WHERE j.status IN ('complete', 'failed', 'aborted') AND j.ttl <> 0
          AND j.completed_at < now() - make_interval(secs => greatest(j.ttl, 0))
        ORDER BY j.completed_at
        LIMIT batch_size
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM pgjobs.jobs j USING expired e WHERE j.id = e.id RETURNING j.id
    )
    SELECT count(*) INTO n_deleted FROM gone;
    WITH gone AS (
        DELETE FROM pgjobs.workers w
        WHERE w.id IN (SELECT w2.id FROM pgjobs.workers w2
                       WHERE w2.status IN ('stopped', 'dead') AND w2.heartbeat_at < now() - interval '7 days'
                       LIMIT batch_size)
        RETURNING w.id
    )
    SELECT count(*) INTO n_workers FROM gone;

    RETURN QUERY SELECT n_killed, n_dead, n_reset, n_deleted, n_workers;
END;
$$;
