-- 0004 security, rolled back: functions back to invoker rights and PUBLIC execute, no row
-- security, 0001's _job_row and complete_many. The roles stay: other databases may use them.
DO $$
DECLARE
    f record;
BEGIN
    FOR f IN SELECT p.oid::regprocedure AS sig FROM pg_proc p
             WHERE p.pronamespace = 'pgjobs'::regnamespace AND p.prokind = 'f'
               AND p.proname NOT IN ('harden', 'max_payload', '_fit_error', '_fit_result', '_fit_error_trigger')
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY INVOKER RESET search_path', f.sig);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO PUBLIC', f.sig);
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_worker') THEN
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM pgjobs_worker', f.sig);
        END IF;
        IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_client') THEN
            EXECUTE format('REVOKE ALL ON FUNCTION %s FROM pgjobs_client', f.sig);
        END IF;
    END LOOP;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_worker') THEN
        REVOKE ALL ON ALL TABLES IN SCHEMA pgjobs FROM pgjobs_worker;
        REVOKE ALL ON SCHEMA pgjobs FROM pgjobs_worker;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_client') THEN
        REVOKE ALL ON ALL TABLES IN SCHEMA pgjobs FROM pgjobs_client;
        REVOKE ALL ON SCHEMA pgjobs FROM pgjobs_client;
    END IF;
END;
$$;

ALTER TABLE pgjobs.schedules DROP CONSTRAINT schedules_misfire_grace_finite_check;
ALTER TABLE pgjobs.workers DROP CONSTRAINT workers_heart_rate_finite_check;
DROP POLICY jobs_read ON pgjobs.jobs;
ALTER TABLE pgjobs.jobs DISABLE ROW LEVEL SECURITY;
DROP FUNCTION pgjobs.harden();
ALTER TABLE pgjobs.jobs DROP COLUMN enqueued_by;
DROP TRIGGER jobs_fit_error ON pgjobs.jobs;
DROP FUNCTION pgjobs._fit_error_trigger();

CREATE OR REPLACE FUNCTION pgjobs.complete_many(job_ids bigint[], results jsonb[] DEFAULT NULL, attempts integer[] DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    done bigint[];
    unblocked text[];
BEGIN
    WITH changed AS (
        UPDATE pgjobs.jobs j
        SET status = 'complete', result = u.result, progress = 1, completed_at = now(), touched_at = now()
        FROM unnest(complete_many.job_ids, coalesce(complete_many.results, '{}'),
                    coalesce(complete_many.attempts, '{}')) AS u(id, result, attempt)
        WHERE j.id = u.id AND j.status IN ('active', 'aborting')
          AND (u.attempt IS NULL OR j.attempts = u.attempt)
        RETURNING j.id, j.queue, j.group_key
    )
    SELECT array_agg(c.id), array_agg(DISTINCT c.queue) FILTER (WHERE c.group_key IS NOT NULL)
    INTO done, unblocked
    FROM changed c;
    PERFORM pgjobs._announce_done(done);
    -- The next job of each group may run now: wake the workers of its queue.
    PERFORM pg_notify(pgjobs.queue_channel(q), '') FROM unnest(unblocked) AS q;
    RETURN QUERY SELECT unnest(done);
END;
$$;

CREATE OR REPLACE FUNCTION pgjobs._job_row(
    label text,
    task text,
    args jsonb,
    queue text,
    priority integer,
    scheduled_at timestamptz,
    group_key text,
    key text,
    max_attempts integer,
    timeout double precision,
    heartbeat double precision,
    retry_delay double precision,
    retry_backoff double precision,
    ttl integer,
    meta jsonb
) RETURNS pgjobs.jobs
LANGUAGE plpgsql AS $$
DECLARE
    r pgjobs.jobs;
BEGIN
    IF task IS NULL OR task !~ '^[^[:space:][:cntrl:]]{1,200}$' THEN
        PERFORM pgjobs._refuse(label || 'task',
            format('must be 1 to 200 characters without spaces or control characters, got %L', task));
    END IF;
    r.task := task;
    r.queue := coalesce(queue, 'default');
    IF r.queue !~ '^[A-Za-z0-9_.:-]{1,48}$' THEN
        PERFORM pgjobs._refuse(label || 'queue',
            format('must be 1 to 48 characters from A-Z a-z 0-9 _ . : -, got %L', r.queue));
    END IF;
    r.args := coalesce(args, '{}');
    IF jsonb_typeof(r.args) NOT IN ('object', 'array') THEN
        PERFORM pgjobs._refuse(label || 'args',
            format('must be a JSON object (keyword arguments) or array (positional), got %s',
                   jsonb_typeof(r.args)));
    END IF;
    r.meta := coalesce(meta, '{}');
    IF jsonb_typeof(r.meta) <> 'object' THEN
        PERFORM pgjobs._refuse(label || 'meta', 'must be a JSON object');
    END IF;
    r.priority := coalesce(priority, 0);
    r.scheduled_at := coalesce(scheduled_at, now());
    IF r.scheduled_at = '-infinity' OR r.scheduled_at = 'infinity' THEN
        PERFORM pgjobs._refuse(label || 'scheduled_at', 'must be a finite time');
    END IF;
    IF group_key = '' OR key = '' THEN
        PERFORM pgjobs._refuse(label || CASE WHEN key = '' THEN 'key' ELSE 'group_key' END,
            'must be NULL or non-empty');
    END IF;
    r.group_key := group_key;
    r.key := key;
    r.max_attempts := coalesce(max_attempts, 3);
    IF r.max_attempts < 1 THEN
        PERFORM pgjobs._refuse(label || 'max_attempts', format('must be at least 1, got %s', r.max_attempts));
    END IF;
    r.timeout := coalesce(timeout, 0);
    r.heartbeat := coalesce(heartbeat, 0);
    r.retry_delay := coalesce(retry_delay, 1);
    r.retry_backoff := coalesce(retry_backoff, 3600);
    IF NOT (r.timeout >= 0 AND r.timeout < 'Infinity') THEN
        PERFORM pgjobs._refuse(label || 'timeout', format('must be a finite number of seconds >= 0, got %s', r.timeout));
    END IF;
    IF NOT (r.heartbeat >= 0 AND r.heartbeat < 'Infinity') THEN
        PERFORM pgjobs._refuse(label || 'heartbeat', format('must be a finite number of seconds >= 0, got %s', r.heartbeat));
    END IF;
    IF NOT (r.retry_delay >= 0 AND r.retry_delay < 'Infinity') THEN
        PERFORM pgjobs._refuse(label || 'retry_delay', format('must be a finite number of seconds >= 0, got %s', r.retry_delay));
    END IF;
    IF NOT (r.retry_backoff >= 0) THEN  -- 'Infinity' is allowed: doubling without a cap
        PERFORM pgjobs._refuse(label || 'retry_backoff', format('must be >= 0, got %s', r.retry_backoff));
    END IF;
    r.ttl := coalesce(ttl, 86400);
    IF r.ttl < -1 THEN
        PERFORM pgjobs._refuse(label || 'ttl', format('must be -1, 0 or a number of seconds, got %s', r.ttl));
    END IF;
    r.status := 'queued';
    r.attempts := 0;
    r.progress := 0;
    r.enqueued_at := now();
    RETURN r;
END;
$$;

CREATE OR REPLACE FUNCTION pgjobs.worker_register(
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

CREATE OR REPLACE FUNCTION pgjobs.schedule_enable(name text, enabled boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE pgjobs.schedules s
    SET enabled = schedule_enable.enabled, updated_at = now(),
        next_run_at = CASE WHEN schedule_enable.enabled AND NOT s.enabled THEN NULL ELSE s.next_run_at END
    WHERE s.name = schedule_enable.name;
    RETURN FOUND;
END;
$$;

DROP FUNCTION pgjobs._fit_result(jsonb);
DROP FUNCTION pgjobs._fit_error(text);
DROP FUNCTION pgjobs.max_payload();
