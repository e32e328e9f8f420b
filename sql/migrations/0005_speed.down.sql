-- 0005 speed, rolled back: earlier bodies of the functions it replaced, the group and key indexes
-- over every job of their statuses, no listeners.
ALTER TABLE pgjobs.jobs RESET (autovacuum_vacuum_scale_factor, autovacuum_vacuum_threshold);
DROP INDEX pgjobs.jobs_group_key_idx;
CREATE UNIQUE INDEX jobs_group_key_idx
    ON pgjobs.jobs (group_key) WHERE status IN ('active', 'aborting');
DROP INDEX pgjobs.jobs_key_idx;
CREATE UNIQUE INDEX jobs_key_idx
    ON pgjobs.jobs (key) WHERE status IN ('queued', 'active', 'aborting');

CREATE OR REPLACE FUNCTION pgjobs.enqueue_job(
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

CREATE OR REPLACE FUNCTION pgjobs.enqueue_many(jobs jsonb)
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

CREATE OR REPLACE FUNCTION pgjobs._announce_done(job_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pgjobs.done', string_agg(u.id::text, ','))
    FROM unnest(job_ids) WITH ORDINALITY AS u(id, n)
    GROUP BY (u.n - 1) / 500;
END;
$$;

CREATE OR REPLACE FUNCTION pgjobs._events_trigger() RETURNS trigger
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

CREATE OR REPLACE FUNCTION pgjobs.dequeue(worker_id text, queues text[], max_jobs integer DEFAULT 1)
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

CREATE OR REPLACE FUNCTION pgjobs.harden() RETURNS void
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

CREATE OR REPLACE FUNCTION pgjobs.backfill(name text, ticks timestamptz[], rerun_failed boolean DEFAULT false,
                                dry_run boolean DEFAULT false)
RETURNS TABLE (tick timestamptz, job_id bigint, action text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s pgjobs.schedules;
    t timestamptz;
    existing bigint;
    existing_status pgjobs.job_status;
BEGIN
    SELECT * INTO s FROM pgjobs.schedules x WHERE x.name = backfill.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgjobs: schedule: no schedule %', quote_literal(backfill.name) USING ERRCODE = 'no_data_found';
    END IF;
    FOREACH t IN ARRAY coalesce(backfill.ticks, '{}') LOOP
        SELECT r.job_id, j.status INTO existing, existing_status
        FROM pgjobs.schedule_runs r LEFT JOIN pgjobs.jobs j ON j.id = r.job_id
        WHERE r.schedule = s.name AND r.tick = t;
        IF existing IS NULL THEN
            IF dry_run THEN
                RETURN QUERY SELECT t, NULL::bigint, 'enqueued'::text;
                CONTINUE;
            END IF;
            INSERT INTO pgjobs.schedule_runs (schedule, tick, job_id) VALUES (s.name, t, 0) ON CONFLICT DO NOTHING;
            IF FOUND THEN
                existing := pgjobs._schedule_job(s, t);
                UPDATE pgjobs.schedule_runs r SET job_id = existing WHERE r.schedule = s.name AND r.tick = t;
                RETURN QUERY SELECT t, existing, 'enqueued'::text;
            ELSE  -- the scheduler fired it a moment ago
                RETURN QUERY SELECT t, (SELECT r.job_id FROM pgjobs.schedule_runs r
                                        WHERE r.schedule = s.name AND r.tick = t), 'skipped'::text;
            END IF;
        ELSIF rerun_failed AND existing_status = 'failed' THEN
            IF NOT dry_run THEN
                existing := pgjobs._schedule_job(s, t);
                UPDATE pgjobs.schedule_runs r SET job_id = existing, enqueued_at = now()
                WHERE r.schedule = s.name AND r.tick = t;
            END IF;
            RETURN QUERY SELECT t, existing, 'rerun'::text;
        ELSE
            RETURN QUERY SELECT t, existing, 'skipped'::text;
        END IF;
    END LOOP;
END;
$$;

CREATE OR REPLACE FUNCTION pgjobs.max_payload() RETURNS bigint
LANGUAGE sql STABLE AS $$
    SELECT coalesce(pg_size_bytes(nullif(current_setting('pgjobs.max_payload', true), '')), 1048576)
$$;

DROP FUNCTION pgjobs.listen(text);
DROP FUNCTION pgjobs.unlisten(text);
DROP FUNCTION pgjobs._heard(text);
DROP FUNCTION pgjobs._job_problem(text, jsonb, text, integer, timestamptz, text, text, integer,
    double precision, double precision, double precision, double precision, integer, jsonb, bigint);
DROP FUNCTION pgjobs._channel(text);
DROP TABLE pgjobs.listeners;

SELECT pgjobs.harden();
