-- 0002 liveness, rolled back: drop what it added and restore 0001's fail, release and cancel.
DROP FUNCTION pgjobs.reap(integer, double precision);
DROP FUNCTION pgjobs.worker_stopped(text);
DROP FUNCTION pgjobs.worker_stop(text);
DROP FUNCTION pgjobs.worker_is_alive(text, double precision);
DROP FUNCTION pgjobs.worker_heartbeat(text, bigint[], integer[]);
DROP FUNCTION pgjobs.worker_register(text, text, integer, text, text[], integer, double precision);
DROP FUNCTION pgjobs.touch(bigint, integer, double precision, jsonb);
DROP TRIGGER jobs_events_update ON pgjobs.jobs;
DROP TRIGGER jobs_events_insert ON pgjobs.jobs;
DROP FUNCTION pgjobs._events_trigger();
DROP FUNCTION pgjobs._notify_ids(text, bigint[]);

CREATE OR REPLACE FUNCTION pgjobs.fail(job_id bigint, error text, attempt integer DEFAULT NULL, retry boolean DEFAULT true)
RETURNS pgjobs.job_status
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    old pgjobs.jobs;
    again boolean;
    s pgjobs.job_status;
BEGIN
    SELECT * INTO old FROM pgjobs.jobs j
    WHERE j.id = fail.job_id AND j.status IN ('active', 'aborting')
      AND (fail.attempt IS NULL OR j.attempts = fail.attempt)
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    again := old.status = 'active' AND old.attempts < old.max_attempts AND coalesce(fail.retry, true);
    s := CASE WHEN old.status = 'aborting' THEN 'aborted' WHEN again THEN 'queued' ELSE 'failed' END;
    UPDATE pgjobs.jobs j
    SET status = s,
        error = fail.error,
        scheduled_at = CASE WHEN again
            THEN now() + make_interval(secs => pgjobs.retry_delay_for(old.attempts, old.retry_delay, old.retry_backoff))
            ELSE j.scheduled_at END,
        worker_id = CASE WHEN again THEN NULL ELSE j.worker_id END,
        completed_at = CASE WHEN again THEN NULL ELSE now() END,
        touched_at = now()
    WHERE j.id = old.id;
    IF NOT again THEN
        PERFORM pgjobs._announce_done(ARRAY[old.id]);
    END IF;
    IF again OR old.group_key IS NOT NULL THEN
        -- A retry, or the next job of the group, may be due: wake the workers of the queue.
        PERFORM pg_notify(pgjobs.queue_channel(old.queue), '');
    END IF;
    RETURN s;
END;
$$;

CREATE OR REPLACE FUNCTION pgjobs.release(worker_id text, job_ids bigint[])
RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    queued_queues text[];
    aborted bigint[];
    n integer;
BEGIN
    WITH changed AS (
        UPDATE pgjobs.jobs j
        SET status = CASE WHEN j.status = 'aborting' THEN 'aborted' ELSE 'queued' END::pgjobs.job_status,
            attempts = CASE WHEN j.status = 'aborting' THEN j.attempts ELSE greatest(j.attempts - 1, 0) END,
            worker_id = CASE WHEN j.status = 'aborting' THEN j.worker_id END,
            started_at = CASE WHEN j.status = 'aborting' THEN j.started_at END,
            completed_at = CASE WHEN j.status = 'aborting' THEN now() END
        WHERE j.id = ANY (release.job_ids) AND j.worker_id = release.worker_id
          AND j.status IN ('active', 'aborting')
        RETURNING j.id, j.queue, j.status, j.group_key
    )
    SELECT count(*),
           array_agg(DISTINCT c.queue) FILTER (WHERE c.status = 'queued' OR c.group_key IS NOT NULL),
           array_agg(c.id) FILTER (WHERE c.status = 'aborted')
    INTO n, queued_queues, aborted
    FROM changed c;
    PERFORM pg_notify(pgjobs.queue_channel(q), '') FROM unnest(queued_queues) AS q;
    PERFORM pgjobs._announce_done(aborted);
    RETURN n;
END;
$$;

CREATE OR REPLACE FUNCTION pgjobs.cancel(job_id bigint)
RETURNS pgjobs.job_status
LANGUAGE plpgsql AS $$
DECLARE
    s pgjobs.job_status;
BEGIN
    UPDATE pgjobs.jobs j
    SET status = CASE WHEN j.status = 'queued' THEN 'aborted' ELSE 'aborting' END::pgjobs.job_status,
        completed_at = CASE WHEN j.status = 'queued' THEN now() END
    WHERE j.id = job_id AND j.status IN ('queued', 'active')
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

DROP FUNCTION pgjobs._after_run(pgjobs.jobs, boolean);
DROP INDEX pgjobs.jobs_completed_at_idx;
DROP INDEX pgjobs.workers_heartbeat_at_idx;
ALTER TABLE pgjobs.jobs DROP COLUMN abort_reason;
DROP TABLE pgjobs.workers;
DROP TYPE pgjobs.worker_status;
