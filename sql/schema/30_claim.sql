-- Claim: dequeue.

-- Claim due jobs (jobs without a group claimed by the statement that locks them).
CREATE OR REPLACE FUNCTION pgjobs.dequeue(worker_id text, queues text[], max_jobs integer DEFAULT 1)
RETURNS SETOF pgjobs.jobs
LANGUAGE plpgsql
-- The plan made once serves every call: planning it again for each call (PostgreSQL's choice, as
-- the generic plan's estimates for LIMIT wanted are huge) cost more than running it, and those
-- estimates must not start JIT compilation either. A session makes that plan at its first call,
-- often on an empty queue, whose statistics favour scanning the whole table and sorting it:
-- without sequential scans the plan walks the indexes, right for any size (a plan made on an empty
-- table claimed 50 jobs of 20,000 in 23 ms instead of 2).
SET plan_cache_mode = force_generic_plan SET jit = off SET enable_seqscan = off AS $$
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
                WHERE j.status = 'queued' AND j.expires_at IS NULL
                  AND j.queue = q.name
                  AND j.scheduled_at <= now()
                  AND (j.group_key IS NULL OR (
                       -- OFFSET 0: probe the group index per candidate; never hash every running job.
                       NOT EXISTS (SELECT FROM pgjobs.jobs a
                                   WHERE a.group_key = j.group_key AND a.status IN ('active', 'aborting')
                                     AND a.expires_at IS NULL OFFSET 0)
                       AND pg_try_advisory_xact_lock(1885957986, hashtext(j.group_key))))
                ORDER BY j.priority, j.scheduled_at, j.id
                LIMIT wanted
                FOR UPDATE OF j SKIP LOCKED
            ) l
            ORDER BY l.priority, l.scheduled_at, l.id
            LIMIT wanted
        ), free AS (
            -- By id from an array: the one plan for every call must probe the primary key however
            -- many rows it guesses a claim takes (a join could hash the table).
            UPDATE pgjobs.jobs j
            SET status = 'active', attempts = j.attempts + 1, worker_id = dequeue.worker_id,
                started_at = now(), touched_at = now(), completed_at = NULL
            WHERE j.id = ANY (ARRAY(SELECT c.id FROM c WHERE c.group_key IS NULL)) AND j.expires_at IS NULL
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
            ), free AS (
                SELECT c.id FROM c
                WHERE c.nth = 1
                  AND NOT EXISTS (SELECT FROM pgjobs.jobs a
                                  WHERE a.group_key = c.group_key AND a.status IN ('active', 'aborting')
                                    AND a.expires_at IS NULL OFFSET 0)
            )
            UPDATE pgjobs.jobs j
            SET status = 'active', attempts = j.attempts + 1, worker_id = dequeue.worker_id,
                started_at = now(), touched_at = now(), completed_at = NULL
            WHERE j.id = ANY (ARRAY(SELECT free.id FROM free)) AND j.expires_at IS NULL
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

-- A worker's round trip: record the results of its finished runs (done_*: as complete_many) and
-- claim its next jobs (as dequeue) in one transaction, so that a worker pays one round trip and
-- one commit where the two calls cost two. Returns first one row per completion that changed
-- nothing because the run was no longer current (claimed false, the other columns NULL), then one
-- per job claimed (claimed true, the columns a run needs; meta NULL when empty).
CREATE OR REPLACE FUNCTION pgjobs.complete_and_dequeue(
    worker_id text,
    queues text[],
    max_jobs integer,
    done_ids bigint[] DEFAULT '{}',
    done_results jsonb[] DEFAULT NULL,
    done_attempts integer[] DEFAULT NULL
) RETURNS TABLE (
    id bigint, claimed boolean, task text, args jsonb, attempts integer, max_attempts integer, queue text,
    priority integer, group_key text, key text, meta jsonb, scheduled_at timestamptz, enqueued_at timestamptz,
    started_at timestamptz, timeout double precision, heartbeat double precision, retry_delay double precision,
    retry_backoff double precision, ttl integer, progress double precision, error text
)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    done bigint[];
BEGIN
    IF cardinality(done_ids) > 0 THEN
        done := ARRAY(SELECT pgjobs.complete_many(done_ids, done_results, done_attempts));
        RETURN QUERY
        SELECT u.id, false, NULL::text, NULL::jsonb, NULL::integer, NULL::integer, NULL::text, NULL::integer,
               NULL::text, NULL::text, NULL::jsonb, NULL::timestamptz, NULL::timestamptz, NULL::timestamptz,
               NULL::float8, NULL::float8, NULL::float8, NULL::float8, NULL::integer, NULL::float8, NULL::text
        FROM unnest(done_ids) AS u(id)
        WHERE u.id <> ALL (done);
    END IF;
    -- dequeue checks the arguments, max_jobs 0 included (then it claims nothing).
    RETURN QUERY
    SELECT d.id, true, d.task, d.args, d.attempts, d.max_attempts, d.queue, d.priority, d.group_key, d.key,
           nullif(d.meta, '{}'), d.scheduled_at, d.enqueued_at, d.started_at, d.timeout, d.heartbeat,
           d.retry_delay, d.retry_backoff, d.ttl, d.progress, d.error
    FROM pgjobs.dequeue(complete_and_dequeue.worker_id, complete_and_dequeue.queues,
                        complete_and_dequeue.max_jobs) AS d;
END;
$$;
