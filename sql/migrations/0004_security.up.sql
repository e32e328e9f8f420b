-- 0004 security: payload size caps, stricter ranges, roles with least privilege, functions that
-- run with the owner's rights behind a pinned search_path, and row security on jobs.

-- ---------------------------------------------------------------------------------------------
-- Limits
-- ---------------------------------------------------------------------------------------------

-- The cap, in bytes, on a job's args and meta and on a result: the setting pgjobs.max_payload
-- (ALTER DATABASE … SET pgjobs.max_payload = '4MB', or per session), default 1 MiB.
CREATE FUNCTION pgjobs.max_payload() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(pg_size_bytes(nullif(current_setting('pgjobs.max_payload', true), '')), 1048576)
$$;

-- The cap on an error text kept with a job: longer ones keep their head and tail.
CREATE FUNCTION pgjobs._fit_error(error text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN length(error) <= 65536 THEN error
                ELSE left(error, 32000) || format(E'\n… [%s characters cut by pgjobs] …\n', length(error) - 64000)
                     || right(error, 32000) END
$$;

-- A result over the cap is replaced by a note that says so, with the start of its text.
CREATE FUNCTION pgjobs._fit_result(result jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN result IS NULL OR pg_column_size(result) <= pgjobs.max_payload() THEN result
                ELSE jsonb_build_object('pgjobs_truncated', true, 'bytes', pg_column_size(result),
                                        'start', left(result::text, 1000)) END
$$;

-- Validate one job's options and fill in defaults (0001's version plus size caps and ranges).
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
            format('must be 1 to 200 characters without spaces or control characters, got %L', left(task, 300)));
    END IF;
    r.task := task;
    r.queue := coalesce(queue, 'default');
    IF r.queue !~ '^[A-Za-z0-9_.:-]{1,48}$' THEN
        PERFORM pgjobs._refuse(label || 'queue',
            format('must be 1 to 48 characters from A-Z a-z 0-9 _ . : -, got %L', left(r.queue, 300)));
    END IF;
    r.args := coalesce(args, '{}');
    IF jsonb_typeof(r.args) NOT IN ('object', 'array') THEN
        PERFORM pgjobs._refuse(label || 'args',
            format('must be a JSON object (keyword arguments) or array (positional), got %s',
                   jsonb_typeof(r.args)));
    END IF;
    IF pg_column_size(r.args) > pgjobs.max_payload() THEN
        PERFORM pgjobs._refuse(label || 'args', format('is %s bytes, over the cap of %s (pgjobs.max_payload)',
            pg_column_size(r.args), pgjobs.max_payload()));
    END IF;
    r.meta := coalesce(meta, '{}');
    IF jsonb_typeof(r.meta) <> 'object' THEN
        PERFORM pgjobs._refuse(label || 'meta', 'must be a JSON object');
    END IF;
    IF pg_column_size(r.meta) > pgjobs.max_payload() THEN
        PERFORM pgjobs._refuse(label || 'meta', format('is %s bytes, over the cap of %s (pgjobs.max_payload)',
            pg_column_size(r.meta), pgjobs.max_payload()));
    END IF;
    r.priority := coalesce(priority, 0);
    IF r.priority NOT BETWEEN -1000000 AND 1000000 THEN
        PERFORM pgjobs._refuse(label || 'priority', format('must be between -1000000 and 1000000, got %s', r.priority));
    END IF;
    r.scheduled_at := coalesce(scheduled_at, now());
    IF r.scheduled_at = '-infinity' OR r.scheduled_at = 'infinity' THEN
        PERFORM pgjobs._refuse(label || 'scheduled_at', 'must be a finite time');
    END IF;
    IF group_key = '' OR key = '' THEN
        PERFORM pgjobs._refuse(label || CASE WHEN key = '' THEN 'key' ELSE 'group_key' END,
            'must be NULL or non-empty');
    END IF;
    IF octet_length(group_key) > 1000 OR octet_length(key) > 1000 THEN  -- both are indexed
        PERFORM pgjobs._refuse(label || CASE WHEN octet_length(key) > 1000 THEN 'key' ELSE 'group_key' END,
            'must be at most 1000 bytes');
    END IF;
    r.group_key := group_key;
    r.key := key;
    r.max_attempts := coalesce(max_attempts, 3);
    IF r.max_attempts NOT BETWEEN 1 AND 1000 THEN
        PERFORM pgjobs._refuse(label || 'max_attempts', format('must be between 1 and 1000, got %s', r.max_attempts));
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
    IF NOT (r.retry_backoff >= 0) OR r.retry_backoff = 'NaN' THEN  -- 'Infinity' is allowed: no cap
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

-- Record the results of many jobs (0001's version, plus: arrays must match, results over the
-- cap are replaced by a note that says so).
CREATE OR REPLACE FUNCTION pgjobs.complete_many(job_ids bigint[], results jsonb[] DEFAULT NULL, attempts integer[] DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    done bigint[];
    unblocked text[];
BEGIN
    IF complete_many.job_ids IS NULL THEN
        PERFORM pgjobs._refuse('job_ids', 'must be an array of job ids');
    END IF;
    IF cardinality(complete_many.results) IS DISTINCT FROM cardinality(complete_many.job_ids)
       AND complete_many.results IS NOT NULL THEN
        PERFORM pgjobs._refuse('results', 'must be NULL or hold one result per job id');
    END IF;
    IF cardinality(complete_many.attempts) IS DISTINCT FROM cardinality(complete_many.job_ids)
       AND complete_many.attempts IS NOT NULL THEN
        PERFORM pgjobs._refuse('attempts', 'must be NULL or hold one attempt per job id');
    END IF;
    WITH changed AS (
        UPDATE pgjobs.jobs j
        SET status = 'complete', result = pgjobs._fit_result(u.result), progress = 1, completed_at = now(),
            touched_at = now()
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

-- Register a worker process (0002's version, with every argument checked).
CREATE OR REPLACE FUNCTION pgjobs.worker_register(
    worker_id text, hostname text, pid integer, os_user text, queues text[], concurrency integer,
    heart_rate double precision
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF worker_id IS NULL OR worker_id = '' OR length(worker_id) > 200 THEN
        PERFORM pgjobs._refuse('worker_id', 'must be 1 to 200 characters');
    END IF;
    IF hostname IS NULL OR os_user IS NULL OR pid IS NULL THEN
        PERFORM pgjobs._refuse(CASE WHEN hostname IS NULL THEN 'hostname' WHEN os_user IS NULL THEN 'os_user'
                                    ELSE 'pid' END, 'must not be NULL');
    END IF;
    IF queues IS NULL OR cardinality(queues) = 0 OR array_position(queues, NULL) IS NOT NULL THEN
        PERFORM pgjobs._refuse('queues', 'must be a non-empty array of queue names');
    END IF;
    IF concurrency IS NULL OR concurrency < 1 THEN
        PERFORM pgjobs._refuse('concurrency', format('must be at least 1, got %s', concurrency));
    END IF;
    IF NOT (heart_rate > 0 AND heart_rate < 'Infinity') THEN
        PERFORM pgjobs._refuse('heart_rate', format('must be a positive number of seconds, got %s', heart_rate));
    END IF;
    IF EXISTS (SELECT FROM pgjobs.workers w WHERE w.id = worker_register.worker_id) THEN
        PERFORM pgjobs._refuse('worker_id', format('%L is registered already: use a fresh id per process', worker_id));
    END IF;
    INSERT INTO pgjobs.workers (id, hostname, pid, os_user, queues, concurrency, heart_rate)
    VALUES (worker_id, hostname, pid, os_user, queues, concurrency, heart_rate);
END;
$$;

-- Pause (false) or resume (true) a schedule (0003's version, refusing NULL).
CREATE OR REPLACE FUNCTION pgjobs.schedule_enable(name text, enabled boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF schedule_enable.enabled IS NULL THEN
        PERFORM pgjobs._refuse('enabled', 'must be true or false');
    END IF;
    UPDATE pgjobs.schedules s
    SET enabled = schedule_enable.enabled, updated_at = now(),
        next_run_at = CASE WHEN schedule_enable.enabled AND NOT s.enabled THEN NULL ELSE s.next_run_at END
    WHERE s.name = schedule_enable.name;
    RETURN FOUND;
END;
$$;

-- Error texts are kept whatever their size: a huge traceback keeps its head and tail.
CREATE FUNCTION pgjobs._fit_error_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.error := pgjobs._fit_error(NEW.error);
    RETURN NEW;
END;
$$;

CREATE TRIGGER jobs_fit_error BEFORE INSERT OR UPDATE OF error ON pgjobs.jobs
    FOR EACH ROW WHEN (length(NEW.error) > 65536) EXECUTE FUNCTION pgjobs._fit_error_trigger();

-- PostgreSQL sorts NaN above Infinity: these refuse NaN and infinities alike.
ALTER TABLE pgjobs.workers ADD CONSTRAINT workers_heart_rate_finite_check CHECK (heart_rate < 'Infinity');
ALTER TABLE pgjobs.schedules ADD CONSTRAINT schedules_misfire_grace_finite_check CHECK (misfire_grace < 'Infinity');

-- ---------------------------------------------------------------------------------------------
-- Who enqueued a job: clients read only their own.
-- ---------------------------------------------------------------------------------------------
ALTER TABLE pgjobs.jobs ADD COLUMN enqueued_by text NOT NULL DEFAULT session_user;

-- ---------------------------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------------------------
-- pgjobs_client: enqueue, cancel, read its own jobs.  pgjobs_worker: run jobs, manage workers,
-- schedules and the reaper, read every job. Neither may change the schema or write tables
-- directly. Roles are shared by the whole server: created once, kept when this is rolled back.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_client') THEN
        CREATE ROLE pgjobs_client NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_worker') THEN
        CREATE ROLE pgjobs_worker NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'pgjobs: cannot create roles pgjobs_client and pgjobs_worker (no CREATEROLE): '
                  'create them and run pgjobs.harden() to grant them their rights';
END;
$$;

-- (Re)apply privileges: every public function runs with the owner's rights and a pinned
-- search_path; PUBLIC may run none; each role gets what it needs. Migrations that add functions
-- call it again.
CREATE FUNCTION pgjobs.harden() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    f record;
    client_functions text[] := ARRAY['enqueue', 'enqueue_job', 'enqueue_many', 'cancel', 'queue_channel',
                                     'max_payload', 'worker_is_alive'];
    have_roles boolean := EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_client')
                          AND EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_worker');
BEGIN
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgjobs FROM PUBLIC;
    REVOKE ALL ON ALL TABLES IN SCHEMA pgjobs FROM PUBLIC;
    FOR f IN
        SELECT p.oid::regprocedure AS sig, p.proname AS name, p.prokind
        FROM pg_proc p WHERE p.pronamespace = 'pgjobs'::regnamespace
    LOOP
        IF f.prokind <> 'f' THEN
            CONTINUE;
        END IF;
        -- No object a caller creates (a table or function in another schema, a temporary one)
        -- can stand in for ours or for a built-in: every name is looked up in pg_catalog first.
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f.sig);
        IF f.name NOT LIKE '\_%' AND f.name <> 'harden' THEN
            EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER', f.sig);
            IF have_roles THEN
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pgjobs_worker', f.sig);
                IF f.name = ANY (client_functions) THEN
                    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pgjobs_client', f.sig);
                END IF;
            END IF;
        END IF;
    END LOOP;
    IF have_roles THEN
        GRANT USAGE ON SCHEMA pgjobs TO pgjobs_client, pgjobs_worker;
        GRANT SELECT ON ALL TABLES IN SCHEMA pgjobs TO pgjobs_worker;
        GRANT SELECT ON pgjobs.jobs, pgjobs.migrations TO pgjobs_client;
    END IF;
END;
$$;

ALTER TABLE pgjobs.jobs ENABLE ROW LEVEL SECURITY;
-- Owners and superusers are not bound by this; workers read every job, clients their own.
CREATE POLICY jobs_read ON pgjobs.jobs FOR SELECT
    USING (enqueued_by = session_user
           OR EXISTS (SELECT FROM pg_roles r WHERE r.rolname = 'pgjobs_worker' AND pg_has_role(r.oid, 'MEMBER')));

SELECT pgjobs.harden();
