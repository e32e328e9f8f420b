-- Enqueue: checking a job and inserting it, alone or many at once.

-- The first thing wrong with a job's arguments or meta, as {field, message}; NULL when nothing is:
-- their kind, their size (uncompressed, see _size) and what a JSON decoder would refuse in them
-- (_json_problem). args_text: args::text, computed once by the caller. Most jobs' meta is {},
-- which skips that.
CREATE OR REPLACE FUNCTION pgjobs._payload_problem(args jsonb, meta jsonb, cap bigint, args_text text) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT coalesce(CASE
        WHEN jsonb_typeof(coalesce(args, '{}')) NOT IN ('object', 'array') THEN ARRAY['args',
            format('must be a JSON object (keyword arguments) or array (positional), got %s', jsonb_typeof(args))]
        WHEN pgjobs._size(args) > cap THEN pgjobs._over_cap('args', args, cap)
        WHEN jsonb_typeof(coalesce(meta, '{}')) <> 'object' THEN ARRAY['meta', 'must be a JSON object']
        WHEN pgjobs._size(meta) > cap THEN pgjobs._over_cap('meta', meta, cap)
    END, pgjobs._json_problem('args', args, args_text),
        CASE WHEN meta <> '{}' THEN pgjobs._json_problem('meta', meta, meta::text) END)
$$;

-- The first thing wrong with one job's options, defaults applied, as {field, message}; NULL when
-- nothing is. One set of rules for enqueue_job (through _job_row) and enqueue_many, which applies
-- it to all its jobs in one statement. cap: pgjobs.max_payload(), read once by the caller (NULL
-- when no payload is over its floor); args_text: args::text, computed once by the caller.
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
    cap bigint,
    args_text text,
    tenant text
) RETURNS text[]
LANGUAGE sql STABLE AS $$
    -- coalesce stops at the first problem: task and queue, then the payload, then the rest.
    SELECT coalesce(CASE
        -- No bounded repetition in these patterns: '^[...]{1,200}$' costs 13 us a job to match.
        WHEN task IS NULL OR length(task) NOT BETWEEN 1 AND 200 OR task ~ '[[:space:][:cntrl:]]' THEN ARRAY['task',
            format('must be 1 to 200 characters without spaces or control characters, got %L', left(task, 300))]
        WHEN length(coalesce(queue, 'default')) NOT BETWEEN 1 AND 48 OR queue ~ '[^A-Za-z0-9_.:-]' THEN ARRAY['queue',
            format('must be 1 to 48 characters from A-Z a-z 0-9 _ . : -, got %L', left(queue, 300))]
    END, pgjobs._payload_problem(args, meta, cap, args_text), CASE
        WHEN coalesce(priority, 0) NOT BETWEEN -1000000 AND 1000000 THEN ARRAY['priority',
            format('must be between -1000000 and 1000000, got %s', priority)]
        WHEN scheduled_at IN ('-infinity', 'infinity') THEN ARRAY['scheduled_at', 'must be a finite time']
        WHEN key = '' THEN ARRAY['key', 'must be NULL or non-empty']
        WHEN group_key = '' THEN ARRAY['group_key', 'must be NULL or non-empty']
        WHEN octet_length(key) > 1000 THEN ARRAY['key', 'must be at most 1000 bytes']  -- both are indexed
        WHEN octet_length(group_key) > 1000 THEN ARRAY['group_key', 'must be at most 1000 bytes']
        WHEN tenant = '' THEN ARRAY['tenant', 'must be NULL or non-empty']
        WHEN octet_length(tenant) > 1000 THEN ARRAY['tenant', 'must be at most 1000 bytes']
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
    END)
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
    meta jsonb,
    tenant text
) RETURNS pgjobs.jobs
LANGUAGE plpgsql AS $$
DECLARE
    -- A variable, not a call in the arguments: a costly argument used twice stops the inlining.
    -- Read only for a payload over the cap's floor (NULL: nothing to compare).
    cap bigint := CASE WHEN greatest(pgjobs._size(args), pgjobs._size(meta)) > pgjobs._cap_floor()
                       THEN pgjobs.max_payload() END;
    args_text text := args::text;
    problem text[] := pgjobs._job_problem(task, args, queue, priority, coalesce(scheduled_at, now()), group_key,
        key, max_attempts, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta, cap, args_text, tenant);
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
    r.tenant := tenant;
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

-- What an enqueue does when a queue is full: 'error' (SQLSTATE PJ001) or 'reject' (NULL ids).
CREATE OR REPLACE FUNCTION pgjobs._check_on_full(on_full text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF on_full IS NULL OR on_full NOT IN ('error', 'reject') THEN
        PERFORM pgjobs._refuse('on_full', format('must be ''error'' or ''reject'', got %L', left(on_full, 100)));
    END IF;
END;
$$;

-- Admission to a queue with a maximum depth (queue_settings.max_queued): of n new queued jobs,
-- how many it takes. Enqueues into such a queue take turns on a salted advisory lock (held until
-- their transaction ends, waited for 5 s at most), so that each counts what those before it
-- committed: the depth (queued jobs, due or later) never passes the limit by an admission. A queue
-- without a limit costs one probe of queue_settings. on_full: 'error' raises SQLSTATE PJ001 when
-- the n do not all fit (a caller in its own transaction can catch it); 'reject' admits as many as
-- fit and returns their number.
CREATE OR REPLACE FUNCTION pgjobs._admit(queue text, n integer, on_full text) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    cap integer := (SELECT s.max_queued FROM pgjobs.queue_settings s WHERE s.queue = _admit.queue);
    waited text;
    depth bigint;
BEGIN
    IF coalesce(cap, 0) = 0 OR n = 0 THEN
        RETURN n;
    END IF;
    waited := current_setting('lock_timeout');
    PERFORM set_config('lock_timeout', '5s', true);
    PERFORM pg_advisory_xact_lock(1885957987, hashtext(coalesce((SELECT k.salt FROM pgjobs.lock_keys k LIMIT 1), '')
                                                        || '/queue/' || queue));
    PERFORM set_config('lock_timeout', waited, true);
    -- A new statement: it sees what the lock's holders before us committed.
    SELECT count(*) INTO depth FROM (SELECT FROM pgjobs.jobs_live j
                                     WHERE j.queue = _admit.queue AND j.status = 'queued' LIMIT cap) d;
    IF depth + n <= cap THEN
        RETURN n;
    ELSIF on_full = 'reject' THEN
        RETURN greatest(cap - depth, 0)::integer;
    END IF;
    RAISE EXCEPTION 'pgjobs: queue % is full: % queued of max_queued %, % more refused', queue, depth, cap, n
        USING ERRCODE = 'PJ001', HINT = 'retry later, or enqueue with on_full => ''reject''';
END;
$$;

-- Insert one checked job (a row of _job_row) that waits for depends_on (job ids, NULL or empty:
-- none), or return the caller's unfinished job with its key. label prefixes the field named in errors.
-- A queued job needs admission to a queue with a maximum depth (_admit): refused, NULL with
-- on_full 'reject'.
CREATE OR REPLACE FUNCTION pgjobs._enqueue(label text, r pgjobs.jobs, depends_on bigint[], on_full text DEFAULT 'error')
RETURNS pgjobs.jobs
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
    IF r.status = 'queued' AND EXISTS (SELECT FROM pgjobs.queue_settings s WHERE s.queue = r.queue AND s.max_queued > 0) THEN
        -- A job already there under its key is returned, full queue or not.
        SELECT * INTO j FROM pgjobs.jobs_live t
        WHERE r.key IS NOT NULL AND t.enqueued_by = session_user AND t.key = r.key
          AND t.status IN ('waiting', 'queued', 'active', 'aborting') AND t.expires_at IS NULL;
        IF FOUND THEN
            RETURN j;
        END IF;
        IF pgjobs._admit(r.queue, 1, on_full) = 0 THEN
            RETURN NULL;
        END IF;
    END IF;
    LOOP
        -- Straight into the hot partition: routing through pgjobs.jobs costs a third of the call.
        INSERT INTO pgjobs.jobs_live AS t (id, queue, task, args, status, priority, group_key, key, max_attempts,
                                           scheduled_at, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta,
                                           depends_on, completed_at, error, tenant)
        -- PostgreSQL 17 and later give the partition the identity of pgjobs.jobs: the id is its sequence's all the same.
        OVERRIDING SYSTEM VALUE
        VALUES (nextval('pgjobs.jobs_id_seq'::regclass), r.queue, r.task, r.args, r.status, r.priority, r.group_key,
                r.key, r.max_attempts, r.scheduled_at, r.timeout, r.heartbeat, r.retry_delay, r.retry_backoff, r.ttl,
                r.meta, r.depends_on, r.completed_at, r.error, r.tenant)
        -- The one unique index a new job can meet. Named, so that no other is probed a row (a tenth
        -- of a batch's server time went to probing the primary key).
        ON CONFLICT (enqueued_by, key) WHERE status IN ('waiting', 'queued', 'active', 'aborting') AND key IS NOT NULL
        DO NOTHING
        RETURNING t.* INTO j;
        IF FOUND THEN
            IF j.status = 'queued' THEN
                -- Delivered at commit only, and folded into one per channel per transaction.
                PERFORM pgjobs._notify(pgjobs._channel(j.queue), '');
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
-- Into a full queue (max_queued): SQLSTATE PJ001, or NULL with on_full 'reject'.
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
    depends_on bigint[] DEFAULT NULL,
    tenant text DEFAULT NULL,
    on_full text DEFAULT 'error'
) RETURNS pgjobs.jobs
LANGUAGE plpgsql AS $$
BEGIN
    IF on_full IS DISTINCT FROM 'error' THEN
        PERFORM pgjobs._check_on_full(on_full);
    END IF;
    RETURN pgjobs._enqueue('', pgjobs._job_row('', task, args, queue, priority, scheduled_at, group_key, key,
                               max_attempts, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta, tenant),
                           depends_on, on_full);
END;
$$;

-- Enqueue one job and return its id (see enqueue_job; NULL: refused with on_full 'reject').
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
    depends_on bigint[] DEFAULT NULL,
    tenant text DEFAULT NULL,
    on_full text DEFAULT 'error'
) RETURNS bigint
LANGUAGE sql AS $$
    SELECT (pgjobs.enqueue_job(task, args, queue, priority, scheduled_at, group_key, key, max_attempts,
                               timeout, heartbeat, retry_delay, retry_backoff, ttl, meta, depends_on, tenant,
                               on_full)).id
$$;

-- enqueue_many's jobs as rows to insert into jobs_live, defaults applied and each checked as it
-- is read: the first wrong one (unnest yields them in array order) raises. Each array holds one
-- element a job, or none (the default); uniform: every option was one for all, so only the first
-- job's options are checked. args_text: each args::text, computed once by the caller (here it
-- would be computed at each of its uses; a subquery kept from being pulled up costs more).
CREATE OR REPLACE FUNCTION pgjobs._many_rows(
    ids bigint[],
    task text[],
    args jsonb[],
    queue text[],
    priority integer[],
    scheduled_at timestamptz[],
    delay double precision[],
    group_key text[],
    key text[],
    max_attempts integer[],
    timeout double precision[],
    heartbeat double precision[],
    retry_delay double precision[],
    retry_backoff double precision[],
    ttl integer[],
    meta jsonb[],
    args_text text[],
    uniform boolean,
    cap bigint,
    tenant text[]
) RETURNS TABLE (id bigint, queue text, task text, args jsonb, priority integer, group_key text, key text,
                 max_attempts integer, scheduled_at timestamptz, timeout double precision,
                 heartbeat double precision, retry_delay double precision, retry_backoff double precision,
                 ttl integer, meta jsonb, tenant text)
-- STABLE and one SELECT: inlined into the caller's INSERT, read as it inserts.
LANGUAGE sql STABLE AS $$
    SELECT r.id, r.queue, r.task, r.args, r.priority, r.group_key, r.key, r.max_attempts, r.scheduled_at,
           r.timeout, r.heartbeat, r.retry_delay, r.retry_backoff, r.ttl, r.meta, r.tenant
    FROM (
        SELECT q.*, CASE WHEN uniform AND q.i > 0 THEN pgjobs._payload_problem(q.args, q.meta, cap, q.args_text)
                    ELSE pgjobs._job_problem(q.task, q.args, q.queue, q.priority, q.scheduled_at, q.group_key,
                        q.key, q.max_attempts, q.timeout, q.heartbeat, q.retry_delay, q.retry_backoff, q.ttl,
                        q.meta, cap, q.args_text, q.tenant)
                    END AS fault
        FROM (
            SELECT u.n - 1 AS i, u.id, u.task, coalesce(u.args, '{}') AS args, coalesce(u.queue, 'default') AS queue,
                   coalesce(u.priority, 0) AS priority,
                   coalesce(u.scheduled_at, now() + make_interval(secs => coalesce(u.delay, 0))) AS scheduled_at,
                   u.group_key, u.key, coalesce(u.max_attempts, 3) AS max_attempts,
                   coalesce(u.timeout, 0) AS timeout, coalesce(u.heartbeat, 0) AS heartbeat,
                   coalesce(u.retry_delay, 1) AS retry_delay, coalesce(u.retry_backoff, 3600) AS retry_backoff,
                   coalesce(u.ttl, 86400) AS ttl, coalesce(u.meta, '{}') AS meta,
                   coalesce(u.args_text, '{}') AS args_text, u.tenant
            FROM unnest(ids, task, args, queue, priority, scheduled_at, delay, group_key, key, max_attempts,
                        timeout, heartbeat, retry_delay, retry_backoff, ttl, meta, args_text, tenant) WITH ORDINALITY
                 AS u(id, task, args, queue, priority, scheduled_at, delay, group_key, key, max_attempts, timeout,
                      heartbeat, retry_delay, retry_backoff, ttl, meta, args_text, tenant, n)
        ) q
    ) r
    WHERE r.id IS NOT NULL  -- not refused by a full queue (see enqueue_many)
      AND (r.fault IS NULL OR pgjobs._refused(format('jobs[%s].', r.i) || r.fault[1], r.fault[2]))
$$;

-- Enqueue many jobs given as arrays, element i of each for job i; an array of one element applies
-- to every job; NULL, an empty array or a NULL element means the default. Checked all at once: the first wrong job,
-- in array order, is reported and none is inserted. Keys are looked up among the caller's own jobs.
-- Into a full queue (max_queued): SQLSTATE PJ001 and none is inserted, or with on_full 'reject'
-- the jobs that do not fit get a NULL id.
-- Arrays rather than one JSON document: nothing to parse but the arguments themselves.
CREATE OR REPLACE FUNCTION pgjobs.enqueue_many(
    task text[],
    args jsonb[],
    queue text[] DEFAULT NULL,
    priority integer[] DEFAULT NULL,
    scheduled_at timestamptz[] DEFAULT NULL,
    delay double precision[] DEFAULT NULL,
    group_key text[] DEFAULT NULL,
    key text[] DEFAULT NULL,
    max_attempts integer[] DEFAULT NULL,
    timeout double precision[] DEFAULT NULL,
    heartbeat double precision[] DEFAULT NULL,
    retry_delay double precision[] DEFAULT NULL,
    retry_backoff double precision[] DEFAULT NULL,
    ttl integer[] DEFAULT NULL,
    meta jsonb[] DEFAULT NULL,
    tenant text[] DEFAULT NULL,
    on_full text DEFAULT 'error'
) RETURNS TABLE (item integer, id bigint)
-- No JIT: the key lookup's estimate for a thousand jobs crosses jit_above_cost, and compiling
-- took a third to a half of the call for a plan that runs in a few milliseconds.
LANGUAGE plpgsql SET jit = off AS $$
#variable_conflict use_column
DECLARE
    cap bigint := pgjobs.max_payload();
    n integer := greatest(cardinality(task), cardinality(args), cardinality(queue), cardinality(priority),
                          cardinality(scheduled_at), cardinality(delay), cardinality(group_key), cardinality(key),
                          cardinality(max_attempts), cardinality(timeout), cardinality(heartbeat),
                          cardinality(retry_delay), cardinality(retry_backoff), cardinality(ttl), cardinality(meta),
                          cardinality(tenant));
    lengths integer[] := ARRAY[cardinality(task), cardinality(args), cardinality(queue), cardinality(priority),
                               cardinality(scheduled_at), cardinality(delay), cardinality(group_key),
                               cardinality(key), cardinality(max_attempts), cardinality(timeout),
                               cardinality(heartbeat), cardinality(retry_delay), cardinality(retry_backoff),
                               cardinality(ttl), cardinality(meta), cardinality(tenant)];
    names text[] := ARRAY['task', 'args', 'queue', 'priority', 'scheduled_at', 'delay', 'group_key', 'key',
                          'max_attempts', 'timeout', 'heartbeat', 'retry_delay', 'retry_backoff', 'ttl', 'meta',
                          'tenant'];
    ids bigint[];
    queues text[];
    keyed boolean;
    args_text text[];
    -- Every option one element for all jobs (as Python's enqueue_many sends a usual batch): they are
    -- checked on the first job only, the other jobs' arguments and meta on their own.
    uniform boolean := (SELECT max(u.length) FROM unnest(lengths, names) AS u(length, name)
                        WHERE u.name NOT IN ('args', 'meta')) IS NOT DISTINCT FROM 1;
BEGIN
    IF n IS NULL OR n = 0 THEN
        RETURN;
    END IF;
    FOR i IN 1 .. cardinality(lengths) LOOP
        IF lengths[i] NOT IN (0, 1, n) THEN
            PERFORM pgjobs._refuse(names[i], format('must hold one element a job (%s) or one for all, got %s',
                                                    n, lengths[i]));
        END IF;
    END LOOP;
    -- From the arrays as given, before they are spread.
    queues := CASE WHEN cardinality(queue) > 0 THEN ARRAY(SELECT DISTINCT coalesce(q, 'default') FROM unnest(queue) AS q)
                   ELSE ARRAY['default'] END;
    keyed := coalesce(cardinality(array_remove(key, NULL)), 0) > 0;
    -- The arguments' text, which _json_problem reads (see _many_rows): once for one element for all.
    args_text := args::text[];
    -- One element for all: spread it, so that one unnest lines the jobs up.
    IF n > 1 THEN
        task := CASE WHEN cardinality(task) = 1 THEN array_fill(task[1], ARRAY[n]) ELSE task END;
        args := CASE WHEN cardinality(args) = 1 THEN array_fill(args[1], ARRAY[n]) ELSE args END;
        args_text := CASE WHEN cardinality(args_text) = 1 THEN array_fill(args_text[1], ARRAY[n]) ELSE args_text END;
        queue := CASE WHEN cardinality(queue) = 1 THEN array_fill(queue[1], ARRAY[n]) ELSE queue END;
        priority := CASE WHEN cardinality(priority) = 1 THEN array_fill(priority[1], ARRAY[n]) ELSE priority END;
        scheduled_at := CASE WHEN cardinality(scheduled_at) = 1 THEN array_fill(scheduled_at[1], ARRAY[n])
                             ELSE scheduled_at END;
        delay := CASE WHEN cardinality(delay) = 1 THEN array_fill(delay[1], ARRAY[n]) ELSE delay END;
        group_key := CASE WHEN cardinality(group_key) = 1 THEN array_fill(group_key[1], ARRAY[n]) ELSE group_key END;
        key := CASE WHEN cardinality(key) = 1 THEN array_fill(key[1], ARRAY[n]) ELSE key END;
        max_attempts := CASE WHEN cardinality(max_attempts) = 1 THEN array_fill(max_attempts[1], ARRAY[n])
                             ELSE max_attempts END;
        timeout := CASE WHEN cardinality(timeout) = 1 THEN array_fill(timeout[1], ARRAY[n]) ELSE timeout END;
        heartbeat := CASE WHEN cardinality(heartbeat) = 1 THEN array_fill(heartbeat[1], ARRAY[n]) ELSE heartbeat END;
        retry_delay := CASE WHEN cardinality(retry_delay) = 1 THEN array_fill(retry_delay[1], ARRAY[n])
                            ELSE retry_delay END;
        retry_backoff := CASE WHEN cardinality(retry_backoff) = 1 THEN array_fill(retry_backoff[1], ARRAY[n])
                              ELSE retry_backoff END;
        ttl := CASE WHEN cardinality(ttl) = 1 THEN array_fill(ttl[1], ARRAY[n]) ELSE ttl END;
        meta := CASE WHEN cardinality(meta) = 1 THEN array_fill(meta[1], ARRAY[n]) ELSE meta END;
        tenant := CASE WHEN cardinality(tenant) = 1 THEN array_fill(tenant[1], ARRAY[n]) ELSE tenant END;
    END IF;
    -- Ids first, in array order: job i gets ids[i] whatever order the insert takes.
    ids := ARRAY(SELECT nextval('pgjobs.jobs_id_seq'::regclass) FROM generate_series(1, n));
    -- Queues with a maximum depth admit what fits (_admit); with on_full 'reject', the jobs of a
    -- queue past the first it admits, in array order, get no id and are not inserted.
    IF on_full IS DISTINCT FROM 'error' THEN
        PERFORM pgjobs._check_on_full(on_full);
    END IF;
    IF EXISTS (SELECT FROM pgjobs.queue_settings s WHERE s.queue = ANY (queues) AND s.max_queued > 0) THEN
        WITH q AS (
            SELECT v.id, v.n, coalesce(v.queue, 'default') AS queue
            FROM unnest(ids, CASE WHEN cardinality(queue) = n THEN queue ELSE array_fill(NULL::text, ARRAY[n]) END)
                 WITH ORDINALITY AS v(id, queue, n)
        ), a AS (
            SELECT q.queue, pgjobs._admit(q.queue, count(*)::integer, on_full) AS admitted FROM q GROUP BY q.queue
        )
        SELECT array_agg(CASE WHEN u.nth <= a.admitted THEN u.id END ORDER BY u.n) INTO ids
        FROM (SELECT q.*, row_number() OVER (PARTITION BY q.queue ORDER BY q.n) AS nth FROM q) u
        JOIN a ON a.queue = u.queue;
    END IF;
    -- Without a key nothing can conflict: a plain insert, with no speculative insertion (its lock
    -- and its extra WAL record a job cost a twentieth of the call).
    IF keyed THEN
        INSERT INTO pgjobs.jobs_live AS t (id, queue, task, args, priority, group_key, key, max_attempts, scheduled_at,
                                           timeout, heartbeat, retry_delay, retry_backoff, ttl, meta, tenant)
        OVERRIDING SYSTEM VALUE  -- see _enqueue
        SELECT * FROM pgjobs._many_rows(ids, task, args, queue, priority, scheduled_at, delay, group_key, key,
                                        max_attempts, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta,
                                        args_text, uniform, cap, tenant)
        -- The one unique index a new job can meet. Named, so that no other is probed a row (a tenth
        -- of a batch's server time went to probing the primary key).
        ON CONFLICT (enqueued_by, key) WHERE status IN ('waiting', 'queued', 'active', 'aborting') AND key IS NOT NULL
        DO NOTHING;
        -- A key met an unfinished job where an id did not make it in (a new statement sees them).
        ids := ARRAY(SELECT CASE WHEN EXISTS (SELECT FROM pgjobs.jobs_live t WHERE t.id = u.id) THEN u.id END
                     FROM unnest(ids) WITH ORDINALITY AS u(id, n) ORDER BY u.n);
    ELSE
        INSERT INTO pgjobs.jobs_live AS t (id, queue, task, args, priority, group_key, key, max_attempts, scheduled_at,
                                           timeout, heartbeat, retry_delay, retry_backoff, ttl, meta, tenant)
        OVERRIDING SYSTEM VALUE
        SELECT * FROM pgjobs._many_rows(ids, task, args, queue, priority, scheduled_at, delay, group_key, key,
                                        max_attempts, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta,
                                        args_text, uniform, cap, tenant);
    END IF;
    PERFORM pgjobs._notify(pgjobs._channel(q), '') FROM unnest(queues) AS q;
    PERFORM pgjobs._announce_events(array_remove(ids, NULL), 'queued');
    RETURN QUERY
    SELECT (u.n - 1)::integer, coalesce(u.id, (SELECT t.id FROM pgjobs.jobs_live t
                                              WHERE t.enqueued_by = session_user AND t.key = u.key
                                                AND t.status IN ('waiting', 'queued', 'active', 'aborting')
                                                AND t.expires_at IS NULL))
    FROM unnest(ids, key) WITH ORDINALITY AS u(id, key, n);
END;
$$;

-- Enqueue many jobs given as a JSON array of objects with enqueue's parameters (keys are looked up
-- among the caller's own jobs); depends_on_items names earlier elements of the array. on_full as
-- the arrays' enqueue_many; a batch with dependencies is admitted whole or refused (PJ001).
CREATE OR REPLACE FUNCTION pgjobs.enqueue_many(jobs jsonb, on_full text DEFAULT 'error')
RETURNS TABLE (item integer, id bigint)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    known text[] := ARRAY['task', 'args', 'queue', 'priority', 'scheduled_at', 'group_key', 'key', 'max_attempts',
                          'timeout', 'heartbeat', 'retry_delay', 'retry_backoff', 'ttl', 'meta', 'delay',
                          'depends_on', 'depends_on_items', 'tenant'];
    wrong text[];
    a record;
BEGIN
    IF jsonb_typeof(jobs) IS DISTINCT FROM 'array' THEN
        PERFORM pgjobs._refuse('jobs', 'must be a JSON array of job objects');
    END IF;
    IF on_full IS DISTINCT FROM 'error' THEN
        PERFORM pgjobs._check_on_full(on_full);
    END IF;
    IF jobs @? '$[*] ? (exists(@.depends_on) || exists(@.depends_on_items))' THEN
        -- Dependencies: one job after the other, each able to name those before it.
        RETURN QUERY SELECT d.item, d.id FROM pgjobs._enqueue_dag(jobs, known) AS d;
        RETURN;
    END IF;
    SELECT CASE
               WHEN jsonb_typeof(e.doc) <> 'object' THEN
                   ARRAY[format('jobs[%s]', e.n - 1), format('must be a JSON object, got %s', jsonb_typeof(e.doc))]
               ELSE ARRAY[format('jobs[%s].%s', e.n - 1, (SELECT k FROM jsonb_object_keys(e.doc - known) AS k LIMIT 1)),
                          'is not an enqueue parameter']
           END
    INTO wrong
    FROM jsonb_array_elements(jobs) WITH ORDINALITY AS e(doc, n)
    WHERE jsonb_typeof(e.doc) <> 'object' OR e.doc - known <> '{}'
    ORDER BY e.n LIMIT 1;
    IF wrong IS NOT NULL THEN
        PERFORM pgjobs._refuse(wrong[1], wrong[2]);
    END IF;
    SELECT array_agg(d.task ORDER BY e.n) AS task, array_agg(d.args ORDER BY e.n) AS args,
           array_agg(d.queue ORDER BY e.n) AS queue, array_agg(d.priority ORDER BY e.n) AS priority,
           array_agg(d.scheduled_at ORDER BY e.n) AS scheduled_at, array_agg(d.delay ORDER BY e.n) AS delay,
           array_agg(d.group_key ORDER BY e.n) AS group_key, array_agg(d.key ORDER BY e.n) AS key,
           array_agg(d.max_attempts ORDER BY e.n) AS max_attempts, array_agg(d.timeout ORDER BY e.n) AS timeout,
           array_agg(d.heartbeat ORDER BY e.n) AS heartbeat, array_agg(d.retry_delay ORDER BY e.n) AS retry_delay,
           array_agg(d.retry_backoff ORDER BY e.n) AS retry_backoff, array_agg(d.ttl ORDER BY e.n) AS ttl,
           array_agg(d.meta ORDER BY e.n) AS meta, array_agg(d.tenant ORDER BY e.n) AS tenant
    INTO a
    FROM jsonb_array_elements(jobs) WITH ORDINALITY AS e(doc, n),
         jsonb_to_record(e.doc) AS d(
             task text, args jsonb, queue text, priority integer, scheduled_at timestamptz, group_key text,
             key text, max_attempts integer, timeout double precision, heartbeat double precision,
             retry_delay double precision, retry_backoff double precision, ttl integer, meta jsonb,
             delay double precision, tenant text);
    RETURN QUERY SELECT m.item, m.id FROM pgjobs.enqueue_many(
        task => a.task, args => a.args, queue => a.queue, priority => a.priority, scheduled_at => a.scheduled_at,
        delay => a.delay, group_key => a.group_key, key => a.key, max_attempts => a.max_attempts,
        timeout => a.timeout, heartbeat => a.heartbeat, retry_delay => a.retry_delay,
        retry_backoff => a.retry_backoff, ttl => a.ttl, meta => a.meta, tenant => a.tenant,
        on_full => enqueue_many.on_full) AS m;
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
                     delay double precision, tenant text) LOOP
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
                                     d.retry_backoff, d.ttl, d.meta, d.tenant), parents);
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
