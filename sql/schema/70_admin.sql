-- Admin: what an operator does to jobs by hand (retry, delete), one job or many at once.

-- Put these failed or aborted jobs back in their queues now, with one more attempt for those that
-- had used them all, and wake the queues; returns how many. (A job whose key an unfinished job
-- holds now raises unique_violation.)
CREATE OR REPLACE FUNCTION pgjobs._requeue(job_ids bigint[]) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    woken text[];
BEGIN
    WITH again AS (
        UPDATE pgjobs.jobs j
        SET status = 'queued', scheduled_at = now(), max_attempts = greatest(j.max_attempts, j.attempts + 1),
            worker_id = NULL, started_at = NULL, touched_at = NULL, completed_at = NULL, abort_reason = NULL,
            result = NULL, progress = 0, expires_at = NULL  -- back from history to the hot table
        WHERE j.id = ANY (job_ids) AND j.status IN ('failed', 'aborted')
        RETURNING j.queue
    )
    SELECT count(*), array_agg(DISTINCT again.queue) INTO n, woken FROM again;
    PERFORM pg_notify(pgjobs._channel(w), '') FROM unnest(woken) AS w;
    RETURN n;
END;
$$;

-- Put a failed or aborted job back in its queue (see _requeue). Returns its new status (queued),
-- or NULL when the job is unknown or not failed or aborted. Its last error stays until the next
-- run ends. Dependants it aborted stay aborted.
CREATE OR REPLACE FUNCTION pgjobs.retry(job_id bigint) RETURNS pgjobs.job_status
LANGUAGE plpgsql AS $$
DECLARE
    k text;
BEGIN
    IF pgjobs._requeue(ARRAY[job_id]) = 0 THEN
        RETURN NULL;
    END IF;
    RETURN 'queued';
EXCEPTION WHEN unique_violation THEN
    SELECT j.key INTO k FROM pgjobs.jobs j WHERE j.id = job_id;
    RAISE EXCEPTION 'pgjobs: job_id: job % has key %, which an unfinished job holds now', job_id, k
        USING ERRCODE = 'unique_violation';
END;
$$;

-- Retry every failed job of a queue and/or task (NULL: any); returns how many. Jobs whose key an
-- unfinished job holds now are left failed.
CREATE OR REPLACE FUNCTION pgjobs.retry_failed(queue text DEFAULT NULL, task text DEFAULT NULL)
RETURNS integer
LANGUAGE sql AS $$
    SELECT pgjobs._requeue(ARRAY(
        SELECT j.id FROM pgjobs.jobs j
        WHERE j.status = 'failed'
          AND (retry_failed.queue IS NULL OR j.queue = retry_failed.queue)
          AND (retry_failed.task IS NULL OR j.task = retry_failed.task)
          AND (j.key IS NULL OR NOT EXISTS (SELECT FROM pgjobs.jobs_live u
                                            WHERE u.enqueued_by = j.enqueued_by AND u.key = j.key
                                              AND u.status IN ('waiting', 'queued', 'active', 'aborting')))
          -- of two failed jobs with one key, the newest
          AND (j.key IS NULL OR NOT EXISTS (SELECT FROM pgjobs.jobs f
                                            WHERE f.enqueued_by = j.enqueued_by AND f.key = j.key
                                              AND f.status = 'failed' AND f.id > j.id))))
$$;

-- Delete a job that is not running; returns whether one was deleted. A running job must be
-- cancelled first (22023).
CREATE OR REPLACE FUNCTION pgjobs.delete_job(job_id bigint) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    s pgjobs.job_status;
BEGIN
    SELECT j.status INTO s FROM pgjobs.jobs j WHERE j.id = job_id FOR UPDATE;
    IF s IN ('active', 'aborting') THEN
        PERFORM pgjobs._refuse('job_id', format('job %s is running: cancel it first', job_id));
    END IF;
    DELETE FROM pgjobs.jobs j WHERE j.id = job_id;
    RETURN FOUND;
END;
$$;

-- What `pgjobs health` judges, one measurement a row: subject is a queue, a table or '' (the
-- whole installation); the caller applies its thresholds.
--   queue_depth (jobs due), queue_oldest_seconds (the oldest due job's wait),
--   table_dead_tuples and table_bytes (jobs_live, jobs_done), oldest_xmin_seconds (the oldest
--   transaction or snapshot that keeps vacuum from cleaning up), jobs_overdue (active jobs past
--   their timeout or heartbeat: the reaper should have stopped them), workers_alive, workers_silent
--   (running or stopping but past their heartbeat, not yet marked dead).
CREATE OR REPLACE FUNCTION pgjobs.health()
RETURNS TABLE (metric text, subject text, value double precision)
LANGUAGE sql STABLE AS $$
    SELECT 'queue_depth', q.queue, q.queued::float8 FROM pgjobs.queues q
    UNION ALL
    SELECT 'queue_oldest_seconds', q.queue, coalesce(q.oldest_queued_seconds, 0) FROM pgjobs.queues q
    UNION ALL
    SELECT 'table_dead_tuples', s.relname::text, s.n_dead_tup::float8
    FROM pg_stat_user_tables s WHERE s.schemaname = 'pgjobs' AND s.relname IN ('jobs_live')
    UNION ALL
    SELECT 'table_bytes', 'jobs_live', pg_total_relation_size('pgjobs.jobs_live')::float8
    UNION ALL
    SELECT 'table_bytes', 'jobs_done', coalesce(sum(pg_total_relation_size(t.relid)), 0)::float8
    FROM pg_partition_tree('pgjobs.jobs_done') t
    UNION ALL
    SELECT 'oldest_xmin_seconds', '',
           coalesce(extract(epoch FROM now() - min(coalesce(a.xact_start, a.query_start))), 0)::float8
    FROM pg_stat_activity a WHERE a.backend_xmin IS NOT NULL AND a.pid <> pg_backend_pid()
    UNION ALL
    SELECT 'jobs_overdue', '', count(*)::float8 FROM pgjobs.jobs_live j
    WHERE j.status IN ('active', 'aborting')
      AND ((j.timeout > 0 AND j.started_at + make_interval(secs => j.timeout) < now())
           OR (j.heartbeat > 0 AND j.touched_at + make_interval(secs => j.heartbeat) < now()))
    UNION ALL
    SELECT 'workers_alive', '', count(*) FILTER (WHERE pgjobs.worker_is_alive(w.id))::float8
    FROM pgjobs.workers w WHERE w.status IN ('running', 'stopping')
    UNION ALL
    SELECT 'workers_silent', '', count(*) FILTER (WHERE NOT pgjobs.worker_is_alive(w.id))::float8
    FROM pgjobs.workers w WHERE w.status IN ('running', 'stopping')
$$;
