-- Admin: what an operator does to jobs by hand (retry, delete), one job or many at once.

-- Put a failed or aborted job back in its queue, with one more attempt if it had used them all.
-- Returns its new status (queued), or NULL when the job is unknown or not failed or aborted. Its
-- last error stays until the next run ends. Dependants it aborted stay aborted.
CREATE OR REPLACE FUNCTION pgjobs.retry(job_id bigint) RETURNS pgjobs.job_status
LANGUAGE plpgsql AS $$
DECLARE
    q text;
    k text;
BEGIN
    UPDATE pgjobs.jobs j
    SET status = 'queued', scheduled_at = now(), max_attempts = greatest(j.max_attempts, j.attempts + 1),
        worker_id = NULL, started_at = NULL, touched_at = NULL, completed_at = NULL, abort_reason = NULL,
        result = NULL, progress = 0, expires_at = NULL  -- back from history to the hot table
    WHERE j.id = job_id AND j.status IN ('failed', 'aborted')
    RETURNING j.queue, j.key INTO q, k;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    PERFORM pg_notify(pgjobs._channel(q), '');
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
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n integer;
    woken text[];
BEGIN
    WITH again AS (
        UPDATE pgjobs.jobs j
        SET status = 'queued', scheduled_at = now(), max_attempts = greatest(j.max_attempts, j.attempts + 1),
            worker_id = NULL, started_at = NULL, touched_at = NULL, completed_at = NULL, abort_reason = NULL,
            result = NULL, progress = 0, expires_at = NULL
        WHERE j.status = 'failed'
          AND (retry_failed.queue IS NULL OR j.queue = retry_failed.queue)
          AND (retry_failed.task IS NULL OR j.task = retry_failed.task)
          AND (j.key IS NULL OR NOT EXISTS (SELECT FROM pgjobs.jobs_live u
                                            WHERE u.enqueued_by = j.enqueued_by AND u.key = j.key
                                              AND u.status IN ('waiting', 'queued', 'active', 'aborting')))
          -- of two failed jobs with one key, the newest
          AND (j.key IS NULL OR NOT EXISTS (SELECT FROM pgjobs.jobs f
                                            WHERE f.enqueued_by = j.enqueued_by AND f.key = j.key
                                              AND f.status = 'failed' AND f.id > j.id))
        RETURNING j.queue
    )
    SELECT count(*), array_agg(DISTINCT again.queue) INTO n, woken FROM again;
    PERFORM pg_notify(pgjobs._channel(w), '') FROM unnest(woken) AS w;
    RETURN n;
END;
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
