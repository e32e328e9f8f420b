-- Admin: what an operator does to jobs by hand (retry, cancel, delete), one job or many at once.

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
    PERFORM pgjobs._notify(pgjobs._channel(w), '') FROM unnest(woken) AS w;
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

-- Whether job j matches a filter (NULL: any): queue, status, task, group_key and key exactly, and
-- error holding the text `error` (case-insensitive, no wildcards). Only jobs the session may act on
-- (a client's own, see _may_act) ever match.
CREATE OR REPLACE FUNCTION pgjobs._job_matches(
    j pgjobs.jobs, queue text, status pgjobs.job_status, task text, group_key text, key text, error text
) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT (queue IS NULL OR j.queue = queue)
       AND (status IS NULL OR j.status = status)
       AND (task IS NULL OR j.task = task)
       AND (group_key IS NULL OR j.group_key = group_key)
       AND (key IS NULL OR j.key = key)
       AND (error IS NULL OR strpos(lower(j.error), lower(error)) > 0)
       AND pgjobs._may_act(j.enqueued_by)
$$;

-- Put every failed or aborted job that matches a filter back in its queue (see _requeue), or with
-- dry_run only count them; returns how many. max_jobs (NULL: all) takes at most that many, the
-- oldest first, so that a long retry can go in steps. A status other than failed or aborted matches none.
-- Jobs whose key an unfinished job holds are left as they are; of several with one key, the
-- newest is retried.
CREATE OR REPLACE FUNCTION pgjobs.retry_matching(
    queue text DEFAULT NULL,
    status pgjobs.job_status DEFAULT NULL,
    task text DEFAULT NULL,
    group_key text DEFAULT NULL,
    key text DEFAULT NULL,
    error text DEFAULT NULL,
    dry_run boolean DEFAULT false,
    max_jobs integer DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    ids bigint[];
BEGIN
    IF max_jobs < 1 THEN
        PERFORM pgjobs._refuse('max_jobs', format('must be NULL or at least 1, got %s', max_jobs));
    END IF;
    ids := ARRAY(
        SELECT d.id FROM (
            SELECT DISTINCT ON (j.enqueued_by, j.key, CASE WHEN j.key IS NULL THEN j.id END) j.id
            FROM pgjobs.jobs j
            WHERE j.status IN ('failed', 'aborted')
              AND pgjobs._job_matches(j, queue, status, task, group_key, key, error)
              AND (j.key IS NULL OR NOT EXISTS (SELECT FROM pgjobs.jobs_live u
                                                WHERE u.enqueued_by = j.enqueued_by AND u.key = j.key
                                                  AND u.status IN ('waiting', 'queued', 'active', 'aborting')))
            ORDER BY j.enqueued_by, j.key, CASE WHEN j.key IS NULL THEN j.id END, j.id DESC) d
        ORDER BY d.id
        LIMIT max_jobs);
    IF coalesce(dry_run, false) THEN
        RETURN cardinality(ids);
    END IF;
    RETURN pgjobs._requeue(ids);
END;
$$;

-- Retry every failed job of a queue and/or task (NULL: any); returns how many (see retry_matching).
CREATE OR REPLACE FUNCTION pgjobs.retry_failed(queue text DEFAULT NULL, task text DEFAULT NULL)
RETURNS integer
LANGUAGE plpgsql AS $$
BEGIN
    RETURN pgjobs.retry_matching(queue => queue, status => 'failed', task => task);
END;
$$;

-- Cancel every waiting, queued or active job that matches a filter (each as pgjobs.cancel does:
-- waiting and queued ones end aborted, active ones are told to stop), or with dry_run only count
-- them; returns how many. Jobs being cancelled already (aborting) are not counted again.
CREATE OR REPLACE FUNCTION pgjobs.cancel_matching(
    queue text DEFAULT NULL,
    status pgjobs.job_status DEFAULT NULL,
    task text DEFAULT NULL,
    group_key text DEFAULT NULL,
    key text DEFAULT NULL,
    error text DEFAULT NULL,
    dry_run boolean DEFAULT false
) RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    ids bigint[];
    job_id bigint;
    n integer := 0;
BEGIN
    ids := ARRAY(
        SELECT j.id FROM pgjobs.jobs j
        WHERE j.status IN ('waiting', 'queued', 'active') AND j.expires_at IS NULL
          AND pgjobs._job_matches(j, queue, status, task, group_key, key, error)
        ORDER BY j.id);
    IF coalesce(dry_run, false) THEN
        RETURN cardinality(ids);
    END IF;
    FOREACH job_id IN ARRAY ids LOOP
        IF pgjobs.cancel(job_id) IN ('aborted', 'aborting') THEN
            n := n + 1;
        END IF;
    END LOOP;
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
    UNION ALL
    -- The server's NOTIFY queue, 0 to 1: a session that LISTENs and sits in an open transaction
    -- holds it back, and once it is full every statement that notifies fails.
    SELECT 'notify_queue_usage', '', pg_notification_queue_usage()
$$;
