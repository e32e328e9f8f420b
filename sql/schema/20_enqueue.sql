-- Enqueue: checking a job and inserting it, alone or many at once.

-- The first thing wrong with one job's options, defaults applied, as {field, message}; NULL when
-- nothing is. One set of rules for enqueue_job (through _job_row) and enqueue_many, which applies
-- it to all its jobs in one statement. cap: pgjobs.max_payload(), read once by the caller.
CREATE OR REPLACE FUNCTION pgjobs._job_problem(
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

-- Validate one job's options and fill in defaults (its rules in _job_problem).
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

-- Insert one checked job (a row of _job_row) that waits for depends_on (job ids, NULL or empty:
-- none), or return the caller's unfinished job with its key. label prefixes the field named in errors.
CREATE OR REPLACE FUNCTION pgjobs._enqueue(label text, r pgjobs.jobs, depends_on bigint[]) RETURNS pgjobs.jobs
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    j pgjobs.jobs;
    parents bigint[];
    seen integer;
    ended record;
    complete boolean;
BEGIN
    IF cardinality(depends_on) > 0 THEN
        parents := ARRAY(SELECT DISTINCT p FROM unnest(depends_on) AS p);
        IF array_position(parents, NULL) IS NOT NULL OR cardinality(parents) > 1000 THEN
            PERFORM pgjobs._refuse(label || 'depends_on', 'must hold at most 1000 job ids, none NULL');
        END IF;
        -- Lock the parents still in play and mark them: the one finishing last, even as we commit,
        -- then finds this job (see _dependants_trigger).
        UPDATE pgjobs.jobs_live p SET has_dependants = true
        WHERE p.id = ANY (parents) AND pgjobs._may_act(p.enqueued_by);
        -- A new statement: it sees the parents as they stand now that they are locked.
        SELECT count(*), bool_and(p.status = 'complete')
        INTO seen, complete
        FROM pgjobs.jobs p WHERE p.id = ANY (parents) AND pgjobs._may_act(p.enqueued_by);
        IF seen < cardinality(parents) THEN
            PERFORM pgjobs._refuse(label || 'depends_on', format('names jobs that do not exist: %s',
                (SELECT string_agg(u.id::text, ', ') FROM unnest(parents) AS u(id)
                 WHERE NOT EXISTS (SELECT FROM pgjobs.jobs p WHERE p.id = u.id AND pgjobs._may_act(p.enqueued_by)))));
        END IF;
        SELECT p.id, p.status INTO ended FROM pgjobs.jobs p
        WHERE p.id = ANY (parents) AND p.status IN ('failed', 'aborted') ORDER BY p.id LIMIT 1;
        IF FOUND THEN
            r.status := 'aborted';
            r.completed_at := now();
            r.error := format('parent job %s ended %s', ended.id, ended.status);
        ELSIF NOT complete THEN
            r.status := 'waiting';
        END IF;
        r.depends_on := parents;
    END IF;
    LOOP
        -- Straight into the hot partition: routing through pgjobs.jobs costs a third of the call.
        INSERT INTO pgjobs.jobs_live AS t (id, queue, task, args, status, priority, group_key, key, max_attempts,
                                           scheduled_at, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta,
                                           depends_on, completed_at, error)
        -- PostgreSQL 17 and later give the partition the identity of pgjobs.jobs: the id is its sequence's all the same.
        OVERRIDING SYSTEM VALUE
        VALUES (nextval('pgjobs.jobs_id_seq'::regclass), r.queue, r.task, r.args, r.status, r.priority, r.group_key,
                r.key, r.max_attempts, r.scheduled_at, r.timeout, r.heartbeat, r.retry_delay, r.retry_backoff, r.ttl,
                r.meta, r.depends_on, r.completed_at, r.error)
        -- The one unique index a new job can meet: jobs_live_enqueued_by_key_idx.
        ON CONFLICT DO NOTHING
        RETURNING t.* INTO j;
        IF FOUND THEN
            IF j.status = 'queued' THEN
                -- Delivered at commit only, and folded into one per channel per transaction.
                PERFORM pg_notify(pgjobs._channel(j.queue), '');
            END IF;
            PERFORM pgjobs._announce_events(ARRAY[j.id], j.status);
            RETURN j;
        END IF;
        -- A new statement sees the job that won the conflict, even one committed a moment ago.
        SELECT * INTO j FROM pgjobs.jobs_live t
        WHERE t.enqueued_by = session_user AND t.key = r.key AND t.status IN ('waiting', 'queued', 'active', 'aborting')
          AND t.expires_at IS NULL;
        IF FOUND THEN
            RETURN j;
        END IF;
        -- It finished in between: try the insert again.
    END LOOP;
END;
$$;

-- Enqueue one job (the key is looked up among the caller's own jobs). With depends_on, it waits
-- (status waiting) until those jobs have all completed, and is aborted if one fails or is aborted.
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
    meta jsonb DEFAULT '{}',
    depends_on bigint[] DEFAULT NULL
) RETURNS pgjobs.jobs
LANGUAGE plpgsql AS $$
BEGIN
    RETURN pgjobs._enqueue('', pgjobs._job_row('', task, args, queue, priority, scheduled_at, group_key, key,
                               max_attempts, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta), depends_on);
END;
$$;

-- Enqueue one job and return its id (see enqueue_job).
CREATE OR REPLACE FUNCTION pgjobs.enqueue(
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
    meta jsonb DEFAULT '{}',
    depends_on bigint[] DEFAULT NULL
) RETURNS bigint
LANGUAGE sql AS $$
    SELECT (pgjobs.enqueue_job(task, args, queue, priority, scheduled_at, group_key, key, max_attempts,
                               timeout, heartbeat, retry_delay, retry_backoff, ttl, meta, depends_on)).id
$$;

-- Enqueue many jobs (keys are looked up among the caller's own jobs).
CREATE OR REPLACE FUNCTION pgjobs.enqueue_many(jobs jsonb)
RETURNS TABLE (item integer, id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    cap bigint := pgjobs.max_payload();
    known text[] := ARRAY['task', 'args', 'queue', 'priority', 'scheduled_at', 'group_key', 'key', 'max_attempts',
                          'timeout', 'heartbeat', 'retry_delay', 'retry_backoff', 'ttl', 'meta', 'delay',
                          'depends_on', 'depends_on_items'];
    problem text[];
    items integer[];
    ids bigint[];
    keys text[];
    queues text[];
BEGIN
    IF jsonb_typeof(jobs) IS DISTINCT FROM 'array' THEN
        PERFORM pgjobs._refuse('jobs', 'must be a JSON array of job objects');
    END IF;
    IF jobs @? '$[*] ? (exists(@.depends_on) || exists(@.depends_on_items))' THEN
        -- Dependencies: one job after the other, each able to name those before it.
        RETURN QUERY SELECT d.item, d.id FROM pgjobs._enqueue_dag(jobs, known) AS d;
        RETURN;
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
        INSERT INTO pgjobs.jobs_live AS t (id, queue, task, args, priority, group_key, key, max_attempts,
                                           scheduled_at, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta)
        OVERRIDING SYSTEM VALUE  -- see _enqueue
        SELECT i.new_id, i.queue, i.task, i.args, i.priority, i.group_key, i.key, i.max_attempts,
               i.scheduled_at, i.timeout, i.heartbeat, i.retry_delay, i.retry_backoff, i.ttl, i.meta
        FROM input i
        WHERE NOT EXISTS (SELECT FROM refused)
        ORDER BY i.i
        -- The one unique index a new job can meet: jobs_live_enqueued_by_key_idx.
        ON CONFLICT DO NOTHING
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
    PERFORM pgjobs._announce_events(array_remove(ids, NULL), 'queued');

    -- A new statement sees the jobs that hold the conflicting keys, this call's own included.
    RETURN QUERY
    SELECT u.i, coalesce(u.id, (SELECT t.id FROM pgjobs.jobs_live t
                                WHERE t.enqueued_by = session_user AND t.key = u.key
                                  AND t.status IN ('waiting', 'queued', 'active', 'aborting')
                                  AND t.expires_at IS NULL))
    FROM unnest(items, ids, keys) AS u(i, id, key)
    ORDER BY u.i;
END;
$$;

-- enqueue_many for jobs with dependencies: in array order, so that depends_on_items (positions of
-- earlier jobs of the array) can name the jobs just made. The whole call fails on the first error.
CREATE OR REPLACE FUNCTION pgjobs._enqueue_dag(jobs jsonb, known text[])
RETURNS TABLE (item integer, id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    e record;
    d record;
    label text;
    made bigint[] := '{}';
    parents bigint[];
    j pgjobs.jobs;
    queues text[] := '{}';
BEGIN
    FOR e IN SELECT x.doc, x.n - 1 AS i FROM jsonb_array_elements(jobs) WITH ORDINALITY AS x(doc, n) LOOP
        label := format('jobs[%s].', e.i);
        IF jsonb_typeof(e.doc) <> 'object' THEN
            PERFORM pgjobs._refuse(format('jobs[%s]', e.i), format('must be a JSON object, got %s', jsonb_typeof(e.doc)));
        END IF;
        IF e.doc - known <> '{}' THEN
            PERFORM pgjobs._refuse(label || (SELECT k FROM jsonb_object_keys(e.doc - known) AS k LIMIT 1),
                                   'is not an enqueue parameter');
        END IF;
        FOR d IN SELECT * FROM jsonb_to_record(e.doc) AS r(
                     task text, args jsonb, queue text, priority integer, scheduled_at timestamptz, group_key text,
                     key text, max_attempts integer, timeout double precision, heartbeat double precision,
                     retry_delay double precision, retry_backoff double precision, ttl integer, meta jsonb,
                     delay double precision) LOOP
            IF jsonb_typeof(coalesce(e.doc->'depends_on', '[]')) <> 'array'
               OR EXISTS (SELECT FROM jsonb_array_elements(coalesce(e.doc->'depends_on', '[]')) AS p(v)
                          WHERE p.v::text !~ '^\d{1,18}$') THEN
                PERFORM pgjobs._refuse(label || 'depends_on', 'must be an array of job ids');
            END IF;
            IF jsonb_typeof(coalesce(e.doc->'depends_on_items', '[]')) <> 'array'
               OR EXISTS (SELECT FROM jsonb_array_elements(coalesce(e.doc->'depends_on_items', '[]')) AS p(v)
                          WHERE p.v::text !~ '^\d{1,9}$' OR p.v::text::integer >= e.i) THEN
                PERFORM pgjobs._refuse(label || 'depends_on_items',
                                       format('must name positions of earlier jobs of the array (0 to %s)', e.i - 1));
            END IF;
            parents := ARRAY(SELECT p.v::text::bigint FROM jsonb_array_elements(coalesce(e.doc->'depends_on', '[]')) AS p(v))
                       || ARRAY(SELECT made[p.v::text::integer + 1]
                                FROM jsonb_array_elements(coalesce(e.doc->'depends_on_items', '[]')) AS p(v));
            j := pgjobs._enqueue(label, pgjobs._job_row(label, d.task, d.args, d.queue, d.priority,
                                     coalesce(d.scheduled_at, now() + make_interval(secs => coalesce(d.delay, 0))),
                                     d.group_key, d.key, d.max_attempts, d.timeout, d.heartbeat, d.retry_delay,
                                     d.retry_backoff, d.ttl, d.meta), parents);
            made := made || j.id;
            item := e.i;
            id := j.id;
            RETURN NEXT;
        END LOOP;
    END LOOP;
END;
$$;

-- Whether the caller has a job with this key that is not finished (waiting, queued or running).
CREATE OR REPLACE FUNCTION pgjobs.has_job(key text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT FROM pgjobs.jobs_live t
                   WHERE t.enqueued_by = session_user AND t.key = has_job.key
                     AND t.status IN ('waiting', 'queued', 'active', 'aborting'))
$$;
