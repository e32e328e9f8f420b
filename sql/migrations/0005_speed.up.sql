-- 0005 speed: less work per job on the hot path (claim, complete), measured with bench/.
-- - Helpers run without a search_path of their own (see harden), so SQL ones are inlined.
-- - pgjobs.done and pgjobs.events are sent only while some session listens through
--   pgjobs.listen(): the NOTIFYs cost every claim and completion, and most of the time nobody hears.
-- - complete_many reads the payload cap once per call, not once per job.
-- - dequeue claims the jobs without a group in the statement that locks them.
-- - enqueue_many checks and inserts its jobs set-based, not through a call per job.
-- - The group and key indexes hold only jobs that have one.
-- - Autovacuum visits the jobs table after 1% of it changed, not 20%.

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
-- Running jobs without a group need no entry: every claim of one paid for this insert.
DROP INDEX pgjobs.jobs_group_key_idx;
CREATE UNIQUE INDEX jobs_group_key_idx
    ON pgjobs.jobs (group_key) WHERE status IN ('active', 'aborting') AND group_key IS NOT NULL;

-- Vacuum the jobs table as a queue: each job leaves two dead row versions (claim, completion), and
-- dead entries at the head of the claim index slow every claim until a vacuum removes them. The
-- default waits for a fifth of the table to be dead.
ALTER TABLE pgjobs.jobs SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);

-- Nor do jobs without a key: enqueue and claim skip this insert too.
DROP INDEX pgjobs.jobs_key_idx;
CREATE UNIQUE INDEX jobs_key_idx
    ON pgjobs.jobs (key) WHERE status IN ('queued', 'active', 'aborting') AND key IS NOT NULL;

-- ---------------------------------------------------------------------------------------------
-- Functions (replacing earlier bodies; signatures unchanged)
-- ---------------------------------------------------------------------------------------------

-- The NOTIFY channel of a queue, for our own functions: inlined where queue_channel (which runs
-- with its owner's rights) would be a function call planned in every transaction.
CREATE FUNCTION pgjobs._channel(queue text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'pgjobs.queue.' || queue
$$;

-- The first thing wrong with one job's options, defaults applied, as {field, message}; NULL when
-- nothing is. One set of rules for enqueue_job (through _job_row) and enqueue_many, which applies
-- it to all its jobs in one statement. cap: pgjobs.max_payload(), read once by the caller.
CREATE FUNCTION pgjobs._job_problem(
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
    meta jsonb,
    cap bigint
) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT CASE
        -- No bounded repetition in these patterns: '^[...]{1,200}$' costs 13 us a job to match.
        WHEN task IS NULL OR length(task) NOT BETWEEN 1 AND 200 OR task ~ '[[:space:][:cntrl:]]' THEN ARRAY['task',
            format('must be 1 to 200 characters without spaces or control characters, got %L', left(task, 300))]
        WHEN length(coalesce(queue, 'default')) NOT BETWEEN 1 AND 48 OR queue ~ '[^A-Za-z0-9_.:-]' THEN ARRAY['queue',
            format('must be 1 to 48 characters from A-Z a-z 0-9 _ . : -, got %L', left(queue, 300))]
        WHEN jsonb_typeof(coalesce(args, '{}')) NOT IN ('object', 'array') THEN ARRAY['args',
            format('must be a JSON object (keyword arguments) or array (positional), got %s', jsonb_typeof(args))]
        WHEN pg_column_size(args) > cap THEN ARRAY['args',
            format('is %s bytes, over the cap of %s (pgjobs.max_payload)', pg_column_size(args), cap)]
        WHEN jsonb_typeof(coalesce(meta, '{}')) <> 'object' THEN ARRAY['meta', 'must be a JSON object']
        WHEN pg_column_size(meta) > cap THEN ARRAY['meta',
            format('is %s bytes, over the cap of %s (pgjobs.max_payload)', pg_column_size(meta), cap)]
        WHEN coalesce(priority, 0) NOT BETWEEN -1000000 AND 1000000 THEN ARRAY['priority',
            format('must be between -1000000 and 1000000, got %s', priority)]
        WHEN scheduled_at IN ('-infinity', 'infinity') THEN ARRAY['scheduled_at', 'must be a finite time']
        WHEN key = '' THEN ARRAY['key', 'must be NULL or non-empty']
        WHEN group_key = '' THEN ARRAY['group_key', 'must be NULL or non-empty']
        WHEN octet_length(key) > 1000 THEN ARRAY['key', 'must be at most 1000 bytes']  -- both are indexed
        WHEN octet_length(group_key) > 1000 THEN ARRAY['group_key', 'must be at most 1000 bytes']
        WHEN coalesce(max_attempts, 3) NOT BETWEEN 1 AND 1000 THEN ARRAY['max_attempts',
            format('must be between 1 and 1000, got %s', max_attempts)]
        WHEN NOT (coalesce(timeout, 0) >= 0 AND coalesce(timeout, 0) < 'Infinity') THEN ARRAY['timeout',
            format('must be a finite number of seconds >= 0, got %s', timeout)]
        WHEN NOT (coalesce(heartbeat, 0) >= 0 AND coalesce(heartbeat, 0) < 'Infinity') THEN ARRAY['heartbeat',
            format('must be a finite number of seconds >= 0, got %s', heartbeat)]
        WHEN NOT (coalesce(retry_delay, 1) >= 0 AND coalesce(retry_delay, 1) < 'Infinity') THEN ARRAY['retry_delay',
            format('must be a finite number of seconds >= 0, got %s', retry_delay)]
        -- 'Infinity' is allowed: doubling without a cap
        WHEN NOT (coalesce(retry_backoff, 3600) >= 0) OR retry_backoff = 'NaN' THEN ARRAY['retry_backoff',
            format('must be >= 0, got %s', retry_backoff)]
        WHEN coalesce(ttl, 86400) < -1 THEN ARRAY['ttl',
            format('must be -1, 0 or a number of seconds, got %s', ttl)]
    END
$$;

-- Validate one job's options and fill in defaults (0004's version, its rules in _job_problem).
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
    -- A variable, not a call in the arguments: a costly argument used twice stops the inlining.
    cap bigint := pgjobs.max_payload();
    problem text[] := pgjobs._job_problem(task, args, queue, priority, coalesce(scheduled_at, now()), group_key,
        key, max_attempts, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta, cap);
    r pgjobs.jobs;
BEGIN
    IF problem IS NOT NULL THEN
        PERFORM pgjobs._refuse(label || problem[1], problem[2]);
    END IF;
    r.task := task;
    r.queue := coalesce(queue, 'default');
    r.args := coalesce(args, '{}');
    r.meta := coalesce(meta, '{}');
    r.priority := coalesce(priority, 0);
    r.scheduled_at := coalesce(scheduled_at, now());
    r.group_key := group_key;
    r.key := key;
    r.max_attempts := coalesce(max_attempts, 3);
    r.timeout := coalesce(timeout, 0);
    r.heartbeat := coalesce(heartbeat, 0);
    r.retry_delay := coalesce(retry_delay, 1);
    r.retry_backoff := coalesce(retry_backoff, 3600);
    r.ttl := coalesce(ttl, 86400);
    r.status := 'queued';
    r.attempts := 0;
    r.progress := 0;
    r.enqueued_at := now();
    RETURN r;
END;
$$;

-- Enqueue one job (0001's version: the key index holds only jobs with a key).
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
        ON CONFLICT (key) WHERE status IN ('queued', 'active', 'aborting') AND key IS NOT NULL DO NOTHING
        RETURNING t.* INTO j;
        IF FOUND THEN
            -- Delivered at commit only, and folded into one per channel per transaction.
            PERFORM pg_notify(pgjobs._channel(j.queue), '');
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

-- Enqueue many jobs (0001's version: the jobs checked by one statement, not one call each).
CREATE OR REPLACE FUNCTION pgjobs.enqueue_many(jobs jsonb)
RETURNS TABLE (item integer, id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    cap bigint := pgjobs.max_payload();
    known text[] := ARRAY['task', 'args', 'queue', 'priority', 'scheduled_at', 'group_key', 'key', 'max_attempts',
                          'timeout', 'heartbeat', 'retry_delay', 'retry_backoff', 'ttl', 'meta', 'delay'];
    problem text[];
    items integer[];
    ids bigint[];
    keys text[];
    queues text[];
BEGIN
    IF jsonb_typeof(jobs) IS DISTINCT FROM 'array' THEN
        PERFORM pgjobs._refuse('jobs', 'must be a JSON array of job objects');
    END IF;
    -- One statement parses each job once, checks them all, and inserts them only if none is wrong
    -- (the first wrong one, in array order, is reported).
    WITH input AS MATERIALIZED (
        SELECT e.n - 1 AS i, nextval('pgjobs.jobs_id_seq'::regclass) AS new_id, r.*,
               CASE
                   WHEN jsonb_typeof(e.doc) <> 'object' THEN
                       ARRAY[format('jobs[%s]', e.n - 1), format('must be a JSON object, got %s', jsonb_typeof(e.doc))]
                   WHEN e.doc - known <> '{}' THEN
                       ARRAY[format('jobs[%s].%s', e.n - 1, (SELECT k FROM jsonb_object_keys(e.doc - known) AS k LIMIT 1)),
                             'is not an enqueue parameter']
                   WHEN r.fault IS NOT NULL THEN
                       ARRAY[format('jobs[%s].', e.n - 1) || r.fault[1], r.fault[2]]
               END AS problem
        FROM jsonb_array_elements(jobs) WITH ORDINALITY AS e(doc, n),
             LATERAL (
                 SELECT d.task, coalesce(d.args, '{}') AS args, coalesce(d.queue, 'default') AS queue,
                        coalesce(d.priority, 0) AS priority,
                        coalesce(d.scheduled_at, now() + make_interval(secs => coalesce(d.delay, 0))) AS scheduled_at,
                        d.group_key, d.key, coalesce(d.max_attempts, 3) AS max_attempts,
                        coalesce(d.timeout, 0) AS timeout, coalesce(d.heartbeat, 0) AS heartbeat,
                        coalesce(d.retry_delay, 1) AS retry_delay, coalesce(d.retry_backoff, 3600) AS retry_backoff,
                        coalesce(d.ttl, 86400) AS ttl, coalesce(d.meta, '{}') AS meta,
                        pgjobs._job_problem(d.task, d.args, d.queue, d.priority,
                            coalesce(d.scheduled_at, now() + make_interval(secs => coalesce(d.delay, 0))),
                            d.group_key, d.key, d.max_attempts, d.timeout, d.heartbeat, d.retry_delay,
                            d.retry_backoff, d.ttl, d.meta, cap) AS fault
                 FROM jsonb_to_record(CASE WHEN jsonb_typeof(e.doc) = 'object' THEN e.doc ELSE '{}' END) AS d(
                     task text, args jsonb, queue text, priority integer, scheduled_at timestamptz, group_key text,
                     key text, max_attempts integer, timeout double precision, heartbeat double precision,
                     retry_delay double precision, retry_backoff double precision, ttl integer, meta jsonb,
                     delay double precision)
             ) r
    ), refused AS (
        SELECT i.problem FROM input i WHERE i.problem IS NOT NULL ORDER BY i.i LIMIT 1
    ), inserted AS (
        INSERT INTO pgjobs.jobs AS t (id, queue, task, args, priority, group_key, key, max_attempts,
                                      scheduled_at, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta)
        OVERRIDING SYSTEM VALUE
        SELECT i.new_id, i.queue, i.task, i.args, i.priority, i.group_key, i.key, i.max_attempts,
               i.scheduled_at, i.timeout, i.heartbeat, i.retry_delay, i.retry_backoff, i.ttl, i.meta
        FROM input i
        WHERE NOT EXISTS (SELECT FROM refused)
        ORDER BY i.i
        ON CONFLICT (key) WHERE status IN ('queued', 'active', 'aborting') AND key IS NOT NULL DO NOTHING
        RETURNING t.id, t.queue
    )
    SELECT (SELECT r.problem FROM refused r),
           array_agg(i.i ORDER BY i.i), array_agg(ins.id ORDER BY i.i), array_agg(i.key ORDER BY i.i),
           array_agg(DISTINCT ins.queue) FILTER (WHERE ins.queue IS NOT NULL)
    INTO problem, items, ids, keys, queues
    FROM input i
    LEFT JOIN inserted ins ON ins.id = i.new_id;
    IF problem IS NOT NULL THEN
        PERFORM pgjobs._refuse(problem[1], problem[2]);
    END IF;

    PERFORM pg_notify(pgjobs._channel(q), '') FROM unnest(queues) AS q;

    -- A new statement sees the jobs that hold the conflicting keys, this call's own included.
    RETURN QUERY
    SELECT u.i, coalesce(u.id, (SELECT t.id FROM pgjobs.jobs t
                                WHERE t.key = u.key AND t.status IN ('queued', 'active', 'aborting')))
    FROM unnest(items, ids, keys) AS u(i, id, key)
    ORDER BY u.i;
END;
$$;

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
LANGUAGE plpgsql
-- One plan for every call, as dequeue (below) explains.
SET plan_cache_mode = force_generic_plan SET jit = off AS $$
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
        -- The id array again, as a primary-key probe the one plan keeps whatever it guesses.
        WHERE j.id = ANY (complete_many.job_ids) AND j.id = u.id AND j.status IN ('active', 'aborting')
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
LANGUAGE plpgsql
-- The plan made once serves every call: planning it again for each call (PostgreSQL's choice, as
-- the generic plan's estimates for LIMIT wanted are huge) cost more than running it, and those
-- estimates must not start JIT compilation either.
SET plan_cache_mode = force_generic_plan SET jit = off AS $$
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
                       -- OFFSET 0: probe the group index per candidate; never hash every running job.
                       NOT EXISTS (SELECT FROM pgjobs.jobs a
                                   WHERE a.group_key = j.group_key AND a.status IN ('active', 'aborting') OFFSET 0)
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
            WHERE j.id = ANY (ARRAY(SELECT c.id FROM c WHERE c.group_key IS NULL))
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
                                  WHERE a.group_key = c.group_key AND a.status IN ('active', 'aborting') OFFSET 0)
            )
            UPDATE pgjobs.jobs j
            SET status = 'active', attempts = j.attempts + 1, worker_id = dequeue.worker_id,
                started_at = now(), touched_at = now(), completed_at = NULL
            WHERE j.id = ANY (ARRAY(SELECT free.id FROM free))
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
