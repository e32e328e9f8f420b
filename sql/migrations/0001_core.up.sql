-- 0001 core: the jobs table and the SQL API that every language calls.
-- Parameters are qualified with their function's name wherever a column shares the name.

-- ---------------------------------------------------------------------------------------------
-- Enums
-- ---------------------------------------------------------------------------------------------
CREATE TYPE pgjobs.job_status AS ENUM (
    'queued',   -- waiting; a future scheduled_at means scheduled -> active (dequeue), aborted (cancel)
    'active',   -- claimed by a worker -> complete, failed, queued (retry, release), aborting (cancel)
    'complete', -- finished with a result (final)
    'failed',   -- out of attempts or not retryable (final)
    'aborting', -- cancel asked while active; the worker stops it -> aborted
    'aborted'   -- cancelled (final)
);

-- ---------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------
CREATE TABLE pgjobs.jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    queue         text NOT NULL DEFAULT 'default',
    task          text NOT NULL,
    args          jsonb NOT NULL DEFAULT '{}',
    status        pgjobs.job_status NOT NULL DEFAULT 'queued',
    priority      integer NOT NULL DEFAULT 0,            -- lower runs first
    group_key     text,                                  -- at most one active job per group
    key           text,                                  -- at most one unfinished job per key
    attempts      integer NOT NULL DEFAULT 0,            -- claims so far; the fence of each attempt
    max_attempts  integer NOT NULL DEFAULT 3,
    scheduled_at  timestamptz NOT NULL DEFAULT now(),
    timeout       double precision NOT NULL DEFAULT 0,   -- seconds a run may take; 0 = no limit
    heartbeat     double precision NOT NULL DEFAULT 0,   -- seconds a run may go untouched; 0 = off
    retry_delay   double precision NOT NULL DEFAULT 1,   -- seconds before a retry
    retry_backoff double precision NOT NULL DEFAULT 3600, -- 0 = fixed delay; else cap of doubling
    ttl           integer NOT NULL DEFAULT 86400,        -- seconds a finished job is kept; 0 = forever, -1 = not kept
    progress      double precision NOT NULL DEFAULT 0,
    meta          jsonb NOT NULL DEFAULT '{}',
    result        jsonb,
    error         text,
    worker_id     text,
    enqueued_at   timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    touched_at    timestamptz,                           -- last heartbeat of the running attempt
    completed_at  timestamptz,
    CONSTRAINT jobs_args_check CHECK (jsonb_typeof(args) IN ('object', 'array')),
    CONSTRAINT jobs_meta_check CHECK (jsonb_typeof(meta) = 'object'),
    CONSTRAINT jobs_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1),
    CONSTRAINT jobs_durations_check CHECK (
        timeout >= 0 AND heartbeat >= 0 AND retry_delay >= 0 AND retry_backoff >= 0 AND ttl >= -1
    )
);

-- ---------------------------------------------------------------------------------------------
-- Indexes
-- ---------------------------------------------------------------------------------------------
-- dequeue: due jobs of a queue in claim order; finished jobs never enter it.
CREATE INDEX jobs_queue_priority_scheduled_at_id_idx
    ON pgjobs.jobs (queue, priority, scheduled_at, id) WHERE status = 'queued';

-- dequeue: a group with a running job is skipped; the database itself forbids a second one.
CREATE UNIQUE INDEX jobs_group_key_idx
    ON pgjobs.jobs (group_key) WHERE status IN ('active', 'aborting');

-- enqueue: deduplication by key while a job with that key is unfinished.
CREATE UNIQUE INDEX jobs_key_idx
    ON pgjobs.jobs (key) WHERE status IN ('queued', 'active', 'aborting');

-- release and the reaper: the running jobs of one worker.
CREATE INDEX jobs_worker_id_idx
    ON pgjobs.jobs (worker_id) WHERE status IN ('active', 'aborting');

-- ---------------------------------------------------------------------------------------------
-- Functions: helpers
-- ---------------------------------------------------------------------------------------------

-- The NOTIFY channel that wakes the workers of one queue.
CREATE FUNCTION pgjobs.queue_channel(queue text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'pgjobs.queue.' || queue
$$;

-- Refuse a bad value with SQLSTATE 22023 and a message that names the field.
CREATE FUNCTION pgjobs._refuse(field text, message text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'pgjobs: %: %', field, message USING ERRCODE = 'invalid_parameter_value';
END;
$$;

-- Validate one job's options and fill in defaults; returns the row to insert (id left NULL).
-- `label` prefixes error messages ('' for enqueue, 'jobs[3].' for enqueue_many).
CREATE FUNCTION pgjobs._job_row(
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

-- Announce finished jobs on channel pgjobs.done: their ids, comma-separated, at most 500 a
-- notification so that a payload stays far below PostgreSQL's 8000-byte limit.
CREATE FUNCTION pgjobs._announce_done(job_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgjobs.done', string_agg(u.id::text, ','))
    FROM unnest(job_ids) WITH ORDINALITY AS u(id, n)
    GROUP BY (u.n - 1) / 500;
END;
$$;

-- Seconds to wait before the next attempt, as SAQ defines it: a fixed delay, or with a backoff
-- the delay doubled per attempt, capped by retry_backoff, and drawn uniformly below that (jitter).
CREATE FUNCTION pgjobs.retry_delay_for(attempts integer, retry_delay double precision, retry_backoff double precision)
RETURNS double precision
LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN retry_backoff <= 0 THEN retry_delay
        ELSE random() * least(retry_delay * power(2, least(greatest(attempts - 1, 0), 60)), retry_backoff)
    END
$$;

-- ---------------------------------------------------------------------------------------------
-- Functions: the public API
-- ---------------------------------------------------------------------------------------------

-- Enqueue one job and return its row. With a key, an unfinished job with that key is returned
-- instead and nothing is added. Any NULL argument means its default.
CREATE FUNCTION pgjobs.enqueue_job(
    task text,
    args jsonb DEFAULT '{}',
    queue text DEFAULT 'default',
    priority integer DEFAULT 0,
    scheduled_at timestamptz DEFAULT now(),
    group_key text DEFAULT NULL,
    key text DEFAULT NULL,
    max_attempts integer DEFAULT 3,
    timeout double precision DEFAULT 0,
    heartbeat double precision DEFAULT 0,
    retry_delay double precision DEFAULT 1,
    retry_backoff double precision DEFAULT 3600,
    ttl integer DEFAULT 86400,
    meta jsonb DEFAULT '{}'
) RETURNS pgjobs.jobs
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r pgjobs.jobs;
    j pgjobs.jobs;
BEGIN
    r := pgjobs._job_row('', task, args, queue, priority, scheduled_at, group_key, key,
                         max_attempts, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta);
    LOOP
        INSERT INTO pgjobs.jobs AS t (queue, task, args, priority, group_key, key, max_attempts,
                                      scheduled_at, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta)
        VALUES (r.queue, r.task, r.args, r.priority, r.group_key, r.key, r.max_attempts,
                r.scheduled_at, r.timeout, r.heartbeat, r.retry_delay, r.retry_backoff, r.ttl, r.meta)
        ON CONFLICT (key) WHERE status IN ('queued', 'active', 'aborting') DO NOTHING
        RETURNING t.* INTO j;
        IF FOUND THEN
            -- Delivered at commit only, and folded into one per channel per transaction.
            PERFORM pg_notify(pgjobs.queue_channel(j.queue), '');
            RETURN j;
        END IF;
        -- A new statement sees the job that won the conflict, even one committed a moment ago.
        SELECT * INTO j FROM pgjobs.jobs t
        WHERE t.key = r.key AND t.status IN ('queued', 'active', 'aborting');
        IF FOUND THEN
            RETURN j;
        END IF;
        -- It finished in between: try the insert again.
    END LOOP;
END;
$$;

-- Enqueue one job and return its id (see enqueue_job).
CREATE FUNCTION pgjobs.enqueue(
    task text,
    args jsonb DEFAULT '{}',
    queue text DEFAULT 'default',
    priority integer DEFAULT 0,
    scheduled_at timestamptz DEFAULT now(),
    group_key text DEFAULT NULL,
    key text DEFAULT NULL,
    max_attempts integer DEFAULT 3,
    timeout double precision DEFAULT 0,
    heartbeat double precision DEFAULT 0,
    retry_delay double precision DEFAULT 1,
    retry_backoff double precision DEFAULT 3600,
    ttl integer DEFAULT 86400,
    meta jsonb DEFAULT '{}'
) RETURNS bigint
LANGUAGE sql AS $$
    SELECT (pgjobs.enqueue_job(task, args, queue, priority, scheduled_at, group_key, key, max_attempts,
                               timeout, heartbeat, retry_delay, retry_backoff, ttl, meta)).id
$$;

-- Enqueue many jobs in one call. `jobs` is a JSON array of objects whose keys are the parameters
-- of enqueue ("task" required), plus "delay": seconds from now, instead of scheduled_at. Returns one row per element: its 0-based index and the job id.
-- An element whose key matches an unfinished job, or an earlier element, gets that job's id.
CREATE FUNCTION pgjobs.enqueue_many(jobs jsonb)
RETURNS TABLE (item integer, id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    bad record;
    items integer[];
    ids bigint[];
    keys text[];
    queues text[];
BEGIN
    IF jsonb_typeof(jobs) IS DISTINCT FROM 'array' THEN
        PERFORM pgjobs._refuse('jobs', 'must be a JSON array of job objects');
    END IF;
    SELECT e.n - 1 AS i, jsonb_typeof(e.doc) AS type INTO bad
    FROM jsonb_array_elements(jobs) WITH ORDINALITY AS e(doc, n)
    WHERE jsonb_typeof(e.doc) <> 'object' LIMIT 1;
    IF FOUND THEN
        PERFORM pgjobs._refuse(format('jobs[%s]', bad.i), format('must be a JSON object, got %s', bad.type));
    END IF;
    SELECT e.n - 1 AS i, k AS name INTO bad
    FROM jsonb_array_elements(jobs) WITH ORDINALITY AS e(doc, n), jsonb_object_keys(e.doc) AS k
    WHERE k <> ALL (ARRAY['task', 'args', 'queue', 'priority', 'scheduled_at', 'group_key', 'key',
                          'max_attempts', 'timeout', 'heartbeat', 'retry_delay', 'retry_backoff',
                          'ttl', 'meta', 'delay'])
    LIMIT 1;
    IF FOUND THEN
        PERFORM pgjobs._refuse(format('jobs[%s].%s', bad.i, bad.name), 'is not an enqueue parameter');
    END IF;

    WITH input AS (
        SELECT e.n - 1 AS i, nextval(pg_get_serial_sequence('pgjobs.jobs', 'id')) AS new_id, r.*
        FROM jsonb_array_elements(jobs) WITH ORDINALITY AS e(doc, n),
             LATERAL pgjobs._job_row(format('jobs[%s].', e.n - 1),
                 e.doc->>'task', e.doc->'args', e.doc->>'queue', (e.doc->>'priority')::integer,
                 coalesce((e.doc->>'scheduled_at')::timestamptz,
                          now() + make_interval(secs => (e.doc->>'delay')::double precision)),
                 e.doc->>'group_key', e.doc->>'key',
                 (e.doc->>'max_attempts')::integer, (e.doc->>'timeout')::double precision,
                 (e.doc->>'heartbeat')::double precision, (e.doc->>'retry_delay')::double precision,
                 (e.doc->>'retry_backoff')::double precision, (e.doc->>'ttl')::integer,
                 e.doc->'meta') AS r
    ), inserted AS (
        INSERT INTO pgjobs.jobs AS t (id, queue, task, args, priority, group_key, key, max_attempts,
                                      scheduled_at, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta)
        OVERRIDING SYSTEM VALUE
        SELECT i.new_id, i.queue, i.task, i.args, i.priority, i.group_key, i.key, i.max_attempts,
               i.scheduled_at, i.timeout, i.heartbeat, i.retry_delay, i.retry_backoff, i.ttl, i.meta
        FROM input i ORDER BY i.i
        ON CONFLICT (key) WHERE status IN ('queued', 'active', 'aborting') DO NOTHING
        RETURNING t.id, t.queue
    )
    SELECT array_agg(i.i ORDER BY i.i), array_agg(ins.id ORDER BY i.i), array_agg(i.key ORDER BY i.i),
           array_agg(DISTINCT ins.queue) FILTER (WHERE ins.queue IS NOT NULL)
    INTO items, ids, keys, queues
    FROM input i
    LEFT JOIN inserted ins ON ins.id = i.new_id;

    PERFORM pg_notify(pgjobs.queue_channel(q), '') FROM unnest(queues) AS q;

    -- A new statement sees the jobs that hold the conflicting keys, this call's own included.
    RETURN QUERY
    SELECT u.i, coalesce(u.id, (SELECT t.id FROM pgjobs.jobs t
                                WHERE t.key = u.key AND t.status IN ('queued', 'active', 'aborting')))
    FROM unnest(items, ids, keys) AS u(i, id, key)
    ORDER BY u.i;
END;
$$;

-- Claim up to max_jobs due jobs of the given queues for a worker and mark them active.
-- Order: priority, then scheduled time, then id. Locked rows are skipped, never waited on.
-- A job whose group already has an active job is not returned, and neither one call nor two
-- concurrent calls return two jobs of one group.
CREATE FUNCTION pgjobs.dequeue(worker_id text, queues text[], max_jobs integer DEFAULT 1)
RETURNS SETOF pgjobs.jobs
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    wanted integer := max_jobs;
    ids bigint[];
    groups text[];
    claimed integer;
    rounds integer := 0;
BEGIN
    IF worker_id IS NULL OR worker_id = '' THEN
        PERFORM pgjobs._refuse('worker_id', 'must be a non-empty text');
    END IF;
    IF max_jobs IS NULL OR max_jobs < 0 THEN
        PERFORM pgjobs._refuse('max_jobs', format('must be >= 0, got %s', max_jobs));
    END IF;
    IF queues IS NULL THEN
        PERFORM pgjobs._refuse('queues', 'must be an array of queue names');
    END IF;
    -- Group exclusivity relies on each statement taking a fresh snapshot.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pgjobs: dequeue must run at READ COMMITTED isolation, not %',
            current_setting('transaction_isolation') USING ERRCODE = 'invalid_transaction_state';
    END IF;
    WHILE wanted > 0 AND rounds < 4 LOOP
        rounds := rounds + 1;
        -- 1. Lock candidates. A grouped job also takes its group's transaction-scoped advisory
        --    lock, so that concurrent claimers of one group serialise on it.
        SELECT array_agg(c.id ORDER BY c.priority, c.scheduled_at, c.id),
               array_agg(c.group_key ORDER BY c.priority, c.scheduled_at, c.id)
        INTO ids, groups
        FROM (
            -- One ordered index scan per queue (queue = ANY(...) would sort the whole backlog).
            SELECT l.* FROM unnest(dequeue.queues) AS q(name)
            CROSS JOIN LATERAL (
                SELECT j.id, j.priority, j.scheduled_at, j.group_key
                FROM pgjobs.jobs j
                WHERE j.status = 'queued'
                  AND j.queue = q.name
                  AND j.scheduled_at <= now()
                  AND (j.group_key IS NULL OR (
                       NOT EXISTS (SELECT FROM pgjobs.jobs a
                                   WHERE a.group_key = j.group_key AND a.status IN ('active', 'aborting'))
                       AND pg_try_advisory_xact_lock(1885957986, hashtext(j.group_key))))
                ORDER BY j.priority, j.scheduled_at, j.id
                LIMIT wanted
                FOR UPDATE OF j SKIP LOCKED
            ) l
            ORDER BY l.priority, l.scheduled_at, l.id
            LIMIT wanted
        ) c;
        EXIT WHEN ids IS NULL;
        -- 2. Claim them. This statement's snapshot was taken after the group locks were held, so
        --    it sees every group claimed by a transaction that held the lock before us.
        RETURN QUERY
        WITH c AS (
            SELECT u.id, u.group_key,
                   row_number() OVER (PARTITION BY u.group_key ORDER BY u.ord) AS nth
            FROM unnest(ids, groups) WITH ORDINALITY AS u(id, group_key, ord)
        )
        UPDATE pgjobs.jobs j
        SET status = 'active', attempts = j.attempts + 1, worker_id = dequeue.worker_id,
            started_at = now(), touched_at = now(), completed_at = NULL
        FROM c
        WHERE j.id = c.id
          AND (c.group_key IS NULL OR (
               c.nth = 1 AND NOT EXISTS (SELECT FROM pgjobs.jobs a
                                         WHERE a.group_key = c.group_key
                                           AND a.status IN ('active', 'aborting'))))
        RETURNING j.*;
        GET DIAGNOSTICS claimed = ROW_COUNT;
        -- Fewer rows locked than asked for: the queue holds no more due jobs for us.
        EXIT WHEN cardinality(ids) < wanted;
        wanted := wanted - claimed;
    END LOOP;
END;
$$;

-- Record the results of many jobs in one statement. results and attempts may be NULL or hold
-- NULLs; a non-NULL attempt fences the update to that attempt of the job. Returns the ids that
-- were active (or aborting) and are now complete, and announces them on channel pgjobs.done.
CREATE FUNCTION pgjobs.complete_many(job_ids bigint[], results jsonb[] DEFAULT NULL, attempts integer[] DEFAULT NULL)
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

-- Record the result of one job; true when it was active and is now complete.
CREATE FUNCTION pgjobs.complete(job_id bigint, result jsonb DEFAULT NULL, attempt integer DEFAULT NULL)
RETURNS boolean
LANGUAGE sql AS $$
    SELECT EXISTS (SELECT FROM pgjobs.complete_many(ARRAY[job_id], ARRAY[result], ARRAY[attempt]))
$$;

-- Record a failed attempt. With attempts left (and retry true) the job is queued again after
-- its retry delay; otherwise it is failed. An aborting job becomes aborted. Returns the new
-- status, or NULL when the job was not active (or the attempt fence did not match).
CREATE FUNCTION pgjobs.fail(job_id bigint, error text, attempt integer DEFAULT NULL, retry boolean DEFAULT true)
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

-- Give running jobs back to the queue without counting the attempt (a worker shutting down).
-- Only jobs held by worker_id are touched; aborting ones become aborted. Returns the count.
CREATE FUNCTION pgjobs.release(worker_id text, job_ids bigint[])
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

-- Cancel a job: queued -> aborted at once; active -> aborting (its worker stops it).
-- Returns the job's status afterwards (unchanged when already finished), NULL for an unknown id.
CREATE FUNCTION pgjobs.cancel(job_id bigint)
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
