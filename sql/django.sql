-- Queries of the Django tasks backend (pgjobs.contrib.django). Each follows a `-- name: <name>` line
-- and a one-line comment. They run on Django's own connection (psycopg 3 or psycopg2) as well as on
-- pgjobs' pool, so parameters are plain values and JSON travels as text both ways.

-- name: django_job_enqueue
-- Enqueue one Django task's job (NULL options take pgjobs' defaults) and return what its TaskResult shows.
SELECT j.id, j.task, j.args::text AS args, j.queue, j.status::text AS status, j.priority, j.attempts,
       j.worker_id, j.result::text AS result, j.error, j.enqueued_at, j.scheduled_at, j.started_at,
       j.completed_at
FROM pgjobs.enqueue_job(
    task => %(task)s::text,
    args => %(args)s::jsonb,
    queue => %(queue)s::text,
    priority => %(priority)s::integer,
    scheduled_at => %(scheduled_at)s::timestamptz,
    max_attempts => %(max_attempts)s::integer,
    timeout => %(timeout)s::double precision,
    heartbeat => %(heartbeat)s::double precision,
    retry_delay => %(retry_delay)s::double precision,
    retry_backoff => %(retry_backoff)s::double precision,
    ttl => %(ttl)s::integer
) AS j;

-- name: django_job_get
-- One job by id, with the columns a Django TaskResult shows.
SELECT j.id, j.task, j.args::text AS args, j.queue, j.status::text AS status, j.priority, j.attempts,
       j.worker_id, j.result::text AS result, j.error, j.enqueued_at, j.scheduled_at, j.started_at,
       j.completed_at
FROM pgjobs.jobs AS j
WHERE j.id = %(id)s::bigint;
