-- 0008 history: finished jobs leave the hot table, and functions move to sql/schema.
--
-- pgjobs.jobs becomes a table partitioned by expires_at. Queued and running jobs, and jobs that
-- finished since the reaper's last pass, live in pgjobs.jobs_live (expires_at NULL), which claims
-- scan and the reaper vacuums. Each reaper pass moves finished jobs to pgjobs.jobs_done, by the
-- time their ttl lets them go; retention then drops a whole day of history at once instead of
-- deleting row by row. Nothing on the hot path moves a row between partitions. Reads and the
-- public contract are unchanged: SELECT … FROM pgjobs.jobs sees both.
--
-- From this version on, functions, triggers and policies are not in migrations: sql/schema/*.sql
-- holds their current text and `pgjobs migrate` applies it after the migrations. This one drops
-- the functions of 0001-0007; sql/schema creates them again.
-- It cannot be rolled back (there is no down file): 0007's functions live only in its history.

DO $$
DECLARE
    f regprocedure;
BEGIN
    FOR f IN SELECT p.oid FROM pg_proc p WHERE p.pronamespace = 'pgjobs'::regnamespace LOOP
        EXECUTE format('DROP FUNCTION %s CASCADE', f);
    END LOOP;
END;
$$;

ALTER TABLE pgjobs.jobs RENAME TO jobs_v7;
ALTER SEQUENCE pgjobs.jobs_id_seq RENAME TO jobs_v7_id_seq;

CREATE TABLE pgjobs.jobs (
    id            bigint GENERATED ALWAYS AS IDENTITY,
    queue         text NOT NULL DEFAULT 'default',
    task          text NOT NULL,
    args          jsonb NOT NULL DEFAULT '{}',
    status        pgjobs.job_status NOT NULL DEFAULT 'queued',
    priority      integer NOT NULL DEFAULT 0,            -- lower runs first
    group_key     text,                                  -- at most one active job per group
    key           text,                                  -- at most one unfinished job per key and client
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
    abort_reason  text,                                  -- why the reaper killed the run, until it ends
    enqueued_by   text NOT NULL DEFAULT session_user,    -- the role that enqueued it (row security)
    expires_at    timestamptz,                           -- set when the job moves to history: completed_at + ttl,
                                                         -- 9999-12-31 when kept forever; NULL before
    CONSTRAINT jobs_args_check CHECK (jsonb_typeof(args) IN ('object', 'array')),
    CONSTRAINT jobs_meta_check CHECK (jsonb_typeof(meta) = 'object'),
    CONSTRAINT jobs_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1),
    CONSTRAINT jobs_durations_check CHECK (
        timeout >= 0 AND heartbeat >= 0 AND retry_delay >= 0 AND retry_backoff >= 0 AND ttl >= -1
    )
) PARTITION BY LIST (expires_at);

-- The hot table: small, vacuumed by the reaper's leader as soon as finished jobs leave dead rows.
CREATE TABLE pgjobs.jobs_live PARTITION OF pgjobs.jobs
    FOR VALUES IN (NULL)
    WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);

-- History, by the time each job may go. Day partitions (jobs_done_YYYYMMDD, UTC) are made ahead
-- and dropped once past by the reaper; what no day partition holds waits in jobs_done_other.
-- A finite time stands for "never", which every client library reads (unlike infinity).
CREATE TABLE pgjobs.jobs_done PARTITION OF pgjobs.jobs DEFAULT
    PARTITION BY RANGE (expires_at);
CREATE TABLE pgjobs.jobs_done_kept PARTITION OF pgjobs.jobs_done     -- ttl 0: kept forever
    FOR VALUES FROM ('9999-12-31 00:00:00+00') TO (MAXVALUE);
CREATE TABLE pgjobs.jobs_done_other PARTITION OF pgjobs.jobs_done DEFAULT;

SELECT setval('pgjobs.jobs_id_seq', s.last_value, s.is_called) FROM pgjobs.jobs_v7_id_seq s;

-- Finished jobs go straight to history; those not kept (ttl -1) wait for the reaper to delete.
INSERT INTO pgjobs.jobs OVERRIDING SYSTEM VALUE
SELECT v.*,
       CASE WHEN v.status NOT IN ('complete', 'failed', 'aborted') OR v.ttl = -1 THEN NULL
            WHEN v.ttl = 0 THEN '9999-12-31 00:00:00+00'
            ELSE coalesce(v.completed_at, now()) + make_interval(secs => v.ttl) END
FROM pgjobs.jobs_v7 v;

DROP TABLE pgjobs.jobs_v7;

-- Indexes of the hot table: each serves the queries named.
-- dequeue: due jobs of a queue in claim order.
CREATE INDEX jobs_live_queue_priority_scheduled_at_id_idx
    ON pgjobs.jobs_live (queue, priority, scheduled_at, id) WHERE status = 'queued';
-- dequeue: a group with a running job is skipped; the database itself forbids a second one.
CREATE UNIQUE INDEX jobs_live_group_key_idx
    ON pgjobs.jobs_live (group_key) WHERE status IN ('active', 'aborting') AND group_key IS NOT NULL;
-- enqueue: deduplication by key among a client's unfinished jobs.
CREATE UNIQUE INDEX jobs_live_enqueued_by_key_idx
    ON pgjobs.jobs_live (enqueued_by, key) WHERE status IN ('queued', 'active', 'aborting') AND key IS NOT NULL;
-- release and the reaper: the running jobs of one worker.
CREATE INDEX jobs_live_worker_id_idx
    ON pgjobs.jobs_live (worker_id) WHERE status IN ('active', 'aborting');
-- the reaper: finished jobs to move to history.
CREATE INDEX jobs_live_completed_at_idx
    ON pgjobs.jobs_live (completed_at) WHERE status IN ('complete', 'failed', 'aborted');
-- every call that names a job: complete, fail, touch, cancel, heartbeats.
ALTER TABLE pgjobs.jobs_live ADD CONSTRAINT jobs_live_pkey PRIMARY KEY (id);

-- History is read by id (job(), refresh(), wait(), SELECT … WHERE id = …); it is cleared by
-- dropping whole days, so no index on expires_at.
CREATE INDEX jobs_done_id_idx ON pgjobs.jobs_done (id);

ALTER TABLE pgjobs.jobs ENABLE ROW LEVEL SECURITY;

-- The version of sql/schema last applied (see pgjobs/migrations.py).
CREATE TABLE pgjobs.schema_files (
    digest     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
