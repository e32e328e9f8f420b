-- 0005 speed, rolled back: earlier bodies of the functions it replaced, the group index over
-- every running job, no listeners.
DROP INDEX pgjobs.jobs_group_key_idx;
CREATE UNIQUE INDEX jobs_group_key_idx
    ON pgjobs.jobs (group_key) WHERE status IN ('active', 'aborting');

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
DROP TABLE pgjobs.listeners;

SELECT pgjobs.harden();
