-- 0007 client scope, rolled back: keys shared by every role, cancel acts on any job.
DROP INDEX pgjobs.jobs_enqueued_by_key_idx;
CREATE UNIQUE INDEX jobs_key_idx
    ON pgjobs.jobs (key) WHERE status IN ('queued', 'active', 'aborting') AND key IS NOT NULL;

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

CREATE OR REPLACE FUNCTION pgjobs.cancel(job_id bigint)
RETURNS pgjobs.job_status
LANGUAGE plpgsql AS $$
DECLARE
    s pgjobs.job_status;
BEGIN
    UPDATE pgjobs.jobs j
    SET status = CASE WHEN j.status = 'queued' THEN 'aborted' ELSE 'aborting' END::pgjobs.job_status,
        abort_reason = NULL,
        completed_at = CASE WHEN j.status = 'queued' THEN now() END
    WHERE j.id = job_id AND j.status IN ('queued', 'active', 'aborting')
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

DROP FUNCTION pgjobs._may_act(text);
SELECT pgjobs.harden();
