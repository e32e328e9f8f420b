-- 0005 speed: less work per job on the hot path (claim, complete), measured with bench/.
-- - Helpers run without a search_path of their own (see harden), so SQL ones are inlined.
-- - pgjobs.done and pgjobs.events are sent only while some session listens through
--   pgjobs.listen(): the NOTIFYs cost every claim and completion, and most of the time nobody hears.
-- - complete_many reads the payload cap once per call, not once per job.
-- - dequeue claims the jobs without a group in the statement that locks them.
-- - The group index holds only jobs that have a group.

-- ---------------------------------------------------------------------------------------------
-- Listeners of the announcement channels
-- ---------------------------------------------------------------------------------------------
-- Sessions that asked for pgjobs.done or pgjobs.events. A row whose session has ended counts
-- for nothing and is removed by the next listen(). Unlogged: after a crash no session is left.
CREATE UNLOGGED TABLE pgjobs.listeners (
    channel text NOT NULL,
    pid     integer NOT NULL,
    since   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, pid)
);

-- Whether a live session listens on an announcement channel. PL/pgSQL keeps its plans for the
-- session; a SQL function here would be planned again in every transaction.
CREATE FUNCTION pgjobs._heard(channel text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- Most of the time nobody listens: one probe of an empty index.
    IF NOT EXISTS (SELECT FROM pgjobs.listeners l WHERE l.channel = _heard.channel) THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT FROM pgjobs.listeners l, pg_stat_get_activity(l.pid) a WHERE l.channel = _heard.channel);
END;
$$;

-- The payload cap (0004's version in PL/pgSQL, whose plans last the session: it is read by
-- every complete_many).
CREATE OR REPLACE FUNCTION pgjobs.max_payload() RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce(pg_size_bytes(nullif(current_setting('pgjobs.max_payload', true), '')), 1048576);
END;
$$;

-- LISTEN on pgjobs.done or pgjobs.events, and have them sent: they are sent only while a session
-- has called this (and has not ended or called unlisten).
CREATE FUNCTION pgjobs.listen(channel text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF channel IS NULL OR channel NOT IN ('pgjobs.done', 'pgjobs.events') THEN
        PERFORM pgjobs._refuse('channel', format('must be pgjobs.done or pgjobs.events, got %L', channel));
    END IF;
    DELETE FROM pgjobs.listeners l WHERE NOT EXISTS (SELECT FROM pg_stat_get_activity(l.pid));
    INSERT INTO pgjobs.listeners (channel, pid) VALUES (listen.channel, pg_backend_pid())
    ON CONFLICT DO NOTHING;
    EXECUTE format('LISTEN %I', channel);
END;
$$;

-- Stop listening on pgjobs.done or pgjobs.events.
CREATE FUNCTION pgjobs.unlisten(channel text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF channel IS NULL OR channel NOT IN ('pgjobs.done', 'pgjobs.events') THEN
        PERFORM pgjobs._refuse('channel', format('must be pgjobs.done or pgjobs.events, got %L', channel));
    END IF;
    DELETE FROM pgjobs.listeners l WHERE l.channel = unlisten.channel AND l.pid = pg_backend_pid();
    EXECUTE format('UNLISTEN %I', channel);
END;
$$;

-- ---------------------------------------------------------------------------------------------
-- Indexes
-- ---------------------------------------------------------------------------------------------
-- Running jobs without a group need no entry: every claim of one skipped this insert.
DROP INDEX pgjobs.jobs_group_key_idx;
CREATE UNIQUE INDEX jobs_group_key_idx
    ON pgjobs.jobs (group_key) WHERE status IN ('active', 'aborting') AND group_key IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Functions (replacing earlier bodies; signatures unchanged)
-- ---------------------------------------------------------------------------------------------

-- Announce finished jobs on pgjobs.done (0001's version, sent only while someone listens).
CREATE OR REPLACE FUNCTION pgjobs._announce_done(job_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF job_ids IS NOT NULL AND pgjobs._heard('pgjobs.done') THEN
        PERFORM pg_notify('pgjobs.done', string_agg(u.id::text, ','))
        FROM unnest(job_ids) WITH ORDINALITY AS u(id, n)
        GROUP BY (u.n - 1) / 500;
    END IF;
END;
$$;

-- Events (0002's version, sent only while someone listens).
CREATE OR REPLACE FUNCTION pgjobs._events_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('pgjobs.events', true), '') = 'off' OR NOT pgjobs._heard('pgjobs.events') THEN
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

-- Record the results of many jobs (0004's version, the cap read once).
CREATE OR REPLACE FUNCTION pgjobs.complete_many(job_ids bigint[], results jsonb[] DEFAULT NULL, attempts integer[] DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    cap bigint := pgjobs.max_payload();
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
        SET status = 'complete',
            result = CASE WHEN u.result IS NULL OR pg_column_size(u.result) <= cap THEN u.result
                          ELSE pgjobs._fit_result(u.result) END,
            progress = 1, completed_at = now(), touched_at = now()
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

-- Claim due jobs (0001's version, jobs without a group claimed by the statement that locks them).
CREATE OR REPLACE FUNCTION pgjobs.dequeue(worker_id text, queues text[], max_jobs integer DEFAULT 1)
RETURNS SETOF pgjobs.jobs
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    wanted integer := max_jobs;
    rows pgjobs.jobs[];
    locked integer;
    ids bigint[];
    groups text[];
    claimed integer;
    grouped integer;
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
        -- 1. Lock candidates and claim those without a group at once. A grouped candidate also
        --    takes its group's transaction-scoped advisory lock, so that concurrent claimers of one
        --    group serialise on it, and is claimed by the next statement.
        WITH c AS (
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
        ), free AS (
            UPDATE pgjobs.jobs j
            SET status = 'active', attempts = j.attempts + 1, worker_id = dequeue.worker_id,
                started_at = now(), touched_at = now(), completed_at = NULL
            FROM c
            WHERE j.id = c.id AND c.group_key IS NULL
            RETURNING j
        )
        SELECT (SELECT array_agg(free.j) FROM free), count(*),
               array_agg(c.id ORDER BY c.priority, c.scheduled_at, c.id) FILTER (WHERE c.group_key IS NOT NULL),
               array_agg(c.group_key ORDER BY c.priority, c.scheduled_at, c.id) FILTER (WHERE c.group_key IS NOT NULL)
        INTO rows, locked, ids, groups
        FROM c;
        EXIT WHEN locked = 0;
        claimed := coalesce(cardinality(rows), 0);
        RETURN QUERY SELECT * FROM unnest(rows);
        -- 2. Claim the grouped ones. This statement's snapshot was taken after the group locks
        --    were held, so it sees every group claimed by a transaction that held the lock before us.
        IF ids IS NOT NULL THEN
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
              AND c.nth = 1
              AND NOT EXISTS (SELECT FROM pgjobs.jobs a
                              WHERE a.group_key = c.group_key AND a.status IN ('active', 'aborting'))
            RETURNING j.*;
            GET DIAGNOSTICS grouped = ROW_COUNT;
            claimed := claimed + grouped;
        END IF;
        -- Fewer rows locked than asked for: the queue holds no more due jobs for us.
        EXIT WHEN locked < wanted;
        wanted := wanted - claimed;
    END LOOP;
END;
$$;

-- Register a worker process (0004's version, refusing a NULL heart_rate with 22023).
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
    IF heart_rate IS NULL OR NOT (heart_rate > 0 AND heart_rate < 'Infinity') THEN
        PERFORM pgjobs._refuse('heart_rate', format('must be a positive number of seconds, got %s', heart_rate));
    END IF;
    IF EXISTS (SELECT FROM pgjobs.workers w WHERE w.id = worker_register.worker_id) THEN
        PERFORM pgjobs._refuse('worker_id', format('%L is registered already: use a fresh id per process', worker_id));
    END IF;
    INSERT INTO pgjobs.workers (id, hostname, pid, os_user, queues, concurrency, heart_rate)
    VALUES (worker_id, hostname, pid, os_user, queues, concurrency, heart_rate);
END;
$$;

-- Backfill (0003's version, refusing a NULL tick with 22023).
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
    IF array_position(backfill.ticks, NULL) IS NOT NULL THEN
        PERFORM pgjobs._refuse('ticks', 'must not hold NULL');
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

-- (0004's version: helpers without a search_path of their own; listen and unlisten for clients.)
CREATE OR REPLACE FUNCTION pgjobs.harden() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    f record;
    client_functions text[] := ARRAY['enqueue', 'enqueue_job', 'enqueue_many', 'cancel', 'queue_channel',
                                     'max_payload', 'worker_is_alive', 'listen', 'unlisten'];
    have_roles boolean := EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_client')
                          AND EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_worker');
BEGIN
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgjobs FROM PUBLIC;
    REVOKE ALL ON ALL TABLES IN SCHEMA pgjobs FROM PUBLIC;
    FOR f IN
        SELECT p.oid::regprocedure AS sig, p.proname AS name, p.prokind, p.prorettype AS rettype
        FROM pg_proc p WHERE p.pronamespace = 'pgjobs'::regnamespace
    LOOP
        IF f.prokind <> 'f' THEN
            CONTINUE;
        END IF;
        -- No object a caller creates (a table or function in another schema, a temporary one)
        -- can stand in for ours or for a built-in: every name is looked up in pg_catalog first.
        -- Helpers other than triggers are run only by our functions, whose pinned path they
        -- inherit: without a SET of their own, SQL ones are inlined and none pays for the switch.
        IF f.name LIKE '\_%' AND f.rettype <> 'trigger'::regtype THEN
            EXECUTE format('ALTER FUNCTION %s RESET search_path', f.sig);
        ELSE
            EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f.sig);
        END IF;
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

SELECT pgjobs.harden();
