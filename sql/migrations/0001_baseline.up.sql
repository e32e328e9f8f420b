-- 0001 baseline: the tables, types, indexes, roles and data of pgjobs' first release.
--
-- The migrations of pgjobs' development before its first release were squashed into this one:
-- no released version existed to upgrade from. From here on a change to a table, type, index,
-- role or data is a new numbered migration; once released, this file is never edited.
--
-- What is not here: the schema pgjobs and the table pgjobs.migrations (sql/bootstrap.sql, so that
-- rolling everything back still leaves the record), and every function, trigger, view and policy,
-- whose current text lives in sql/schema/*.sql; `pgjobs migrate` applies those files after the
-- migrations, in the transaction of the last one. Grants are made there too, by pgjobs.harden()
-- (sql/schema/90_security.sql), once the functions they cover exist.

-- ---------------------------------------------------------------------------------------------
-- Roles
-- ---------------------------------------------------------------------------------------------
-- pgjobs_client: enqueue, cancel and read its own jobs. pgjobs_worker: run jobs, manage workers,
-- schedules and the reaper, read every job. pgjobs_admin: everything pgjobs_worker may, and the
-- verbs that change jobs and queues on an operator's word (retry, delete, bulk retry and cancel,
-- queue settings, run a schedule now). None may change the schema or write a table directly.
-- Roles are the whole server's: made once, by the first database migrated, and kept when this is
-- rolled back. A migrating role without CREATEROLE gets a warning instead; the roles can be
-- created by hand and granted their rights with SELECT pgjobs.harden().
DO $$
DECLARE
    role text;
BEGIN
    FOREACH role IN ARRAY ARRAY['pgjobs_client', 'pgjobs_worker', 'pgjobs_admin'] LOOP
        CONTINUE WHEN EXISTS (SELECT FROM pg_roles r WHERE r.rolname = role);
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE WARNING 'pgjobs: cannot create role % (no CREATEROLE): create it and run pgjobs.harden() '
                          'to grant it its rights', role;
        END;
    END LOOP;
END;
$$;

-- ---------------------------------------------------------------------------------------------
-- Types
-- ---------------------------------------------------------------------------------------------
CREATE TYPE pgjobs.job_status AS ENUM (
    'waiting',  -- a parent (depends_on) has not completed -> queued (all completed), aborted (one did not, cancel)
    'queued',   -- to be claimed; a future scheduled_at means scheduled -> active (dequeue), aborted (cancel)
    'active',   -- claimed by a worker -> complete, failed, queued (retry, release), aborting (cancel)
    'complete', -- finished with a result (final)
    'failed',   -- out of attempts or not retryable (final)
    'aborting', -- cancel asked while active, or the reaper stopped the run; its worker stops it
                -- -> aborted (a cancel), queued or failed (the reaper's, as a failure)
    'aborted'   -- cancelled, or a parent did not complete (final)
);

CREATE TYPE pgjobs.worker_status AS ENUM (
    'running',  -- claiming and running jobs -> stopping, stopped, dead
    'stopping', -- asked to stop (worker_stop or a signal); finishing its jobs -> stopped, dead
    'stopped',  -- exited cleanly (final)
    'dead'      -- missed its heartbeats; the reaper reset its jobs -> running if it beats again
);

-- What a schedule does with ticks it missed (its workers were down).
CREATE TYPE pgjobs.missed_policy AS ENUM (
    'skip', -- ticks missed by more than misfire_grace are skipped; the schedule resumes at the next
    'once', -- one run for all the missed ticks (the latest of them)
    'all'   -- a run for every missed tick, at most max_catchup of them (the most recent)
);

-- ---------------------------------------------------------------------------------------------
-- Jobs
-- ---------------------------------------------------------------------------------------------
-- Every job, partitioned by expires_at. Queued and running jobs, and jobs that finished since the
-- reaper's last pass, live in jobs_live (expires_at NULL), which claims scan and the reaper
-- vacuums. Each reaper pass moves finished jobs to jobs_done by the time their ttl lets them go;
-- retention drops a whole day of history at once instead of deleting row by row. Nothing on the
-- hot path moves a row between partitions. SELECT … FROM pgjobs.jobs sees both.
CREATE TABLE pgjobs.jobs (
    id             bigint GENERATED ALWAYS AS IDENTITY,
    queue          text NOT NULL DEFAULT 'default',
    task           text NOT NULL,
    args           jsonb NOT NULL DEFAULT '{}',
    status         pgjobs.job_status NOT NULL DEFAULT 'queued',
    priority       integer NOT NULL DEFAULT 0,            -- lower runs first
    group_key      text,                                  -- a group of its client's jobs run a few at a time
    key            text,                                  -- at most one unfinished job per key and client
    attempts       integer NOT NULL DEFAULT 0,            -- claims so far; the fence of each attempt
    max_attempts   integer NOT NULL DEFAULT 3,
    scheduled_at   timestamptz NOT NULL DEFAULT now(),
    timeout        double precision NOT NULL DEFAULT 0,   -- seconds a run may take; 0 = no limit
    heartbeat      double precision NOT NULL DEFAULT 0,   -- seconds a run may go untouched; 0 = off
    retry_delay    double precision NOT NULL DEFAULT 1,   -- seconds before a retry
    retry_backoff  double precision NOT NULL DEFAULT 3600, -- 0 = fixed delay; else cap of doubling
    ttl            integer NOT NULL DEFAULT 86400,        -- seconds a finished job is kept; 0 = forever, -1 = not kept
    progress       double precision NOT NULL DEFAULT 0,
    meta           jsonb NOT NULL DEFAULT '{}',
    result         jsonb,
    error          text,
    worker_id      text,
    enqueued_at    timestamptz NOT NULL DEFAULT now(),
    started_at     timestamptz,
    touched_at     timestamptz,                           -- last heartbeat of the running attempt
    completed_at   timestamptz,
    abort_reason   text,                                  -- why the reaper stopped the run (timeout,
                                                          -- heartbeat), until it ends; NULL while
                                                          -- aborting: a user cancelled it
    enqueued_by    text NOT NULL DEFAULT session_user,    -- the role that enqueued it (row security, keys, groups)
    expires_at     timestamptz,                           -- set when the job moves to history: completed_at + ttl,
                                                          -- 9999-12-31 when kept forever; NULL before
    group_slot     smallint,                              -- which of its group's active slots a run holds
                                                          -- (0 to group_max_active - 1); NULL: no limit
    depends_on     bigint[],                              -- parents that must complete before it is queued
    has_dependants boolean NOT NULL DEFAULT false,        -- another job depends on it: finishing it looks for them
    CONSTRAINT jobs_args_check CHECK (jsonb_typeof(args) IN ('object', 'array')),
    CONSTRAINT jobs_meta_check CHECK (jsonb_typeof(meta) = 'object'),
    CONSTRAINT jobs_attempts_check CHECK (attempts >= 0 AND max_attempts >= 1),
    CONSTRAINT jobs_durations_check CHECK (
        timeout >= 0 AND heartbeat >= 0 AND retry_delay >= 0 AND retry_backoff >= 0 AND ttl >= -1
    )
) PARTITION BY LIST (expires_at);

-- The hot table: small, and vacuumed as a queue (each job leaves dead row versions at its claim
-- and its completion, and dead entries at the head of the claim index slow every claim until a
-- vacuum removes them): after 1% of it changed, not the default 20%.
CREATE TABLE pgjobs.jobs_live PARTITION OF pgjobs.jobs
    FOR VALUES IN (NULL)
    WITH (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000);

-- History, by the time each job may go. Day partitions (jobs_done_YYYYMMDD, UTC) are made ahead
-- and dropped once past by the reaper (_history_upkeep); what no day partition holds waits in
-- jobs_done_other. A finite time stands for "never", which every client library reads (unlike
-- infinity).
CREATE TABLE pgjobs.jobs_done PARTITION OF pgjobs.jobs DEFAULT
    PARTITION BY RANGE (expires_at);
CREATE TABLE pgjobs.jobs_done_kept PARTITION OF pgjobs.jobs_done     -- ttl 0: kept forever
    FOR VALUES FROM ('9999-12-31 00:00:00+00') TO (MAXVALUE);
CREATE TABLE pgjobs.jobs_done_other PARTITION OF pgjobs.jobs_done DEFAULT;

-- Clients read only the jobs they enqueued: the policy, jobs_read, is in sql/schema/90_security.sql.
ALTER TABLE pgjobs.jobs ENABLE ROW LEVEL SECURITY;

-- ---------------------------------------------------------------------------------------------
-- Workers
-- ---------------------------------------------------------------------------------------------
-- One row per worker process (a fresh id per start), refreshed by its heartbeats.
CREATE TABLE pgjobs.workers (
    id           text PRIMARY KEY,
    hostname     text NOT NULL,
    pid          integer NOT NULL,
    os_user      text NOT NULL,
    queues       text[] NOT NULL,
    concurrency  integer NOT NULL,
    heart_rate   double precision NOT NULL,  -- seconds between heartbeats
    status       pgjobs.worker_status NOT NULL DEFAULT 'running',
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz,
    stats        jsonb NOT NULL DEFAULT '{}',  -- what it counts of itself (runs killed, children
                                               -- replaced…), sent with its heartbeats
    CONSTRAINT workers_heart_rate_check CHECK (heart_rate > 0),
    -- PostgreSQL sorts NaN above Infinity: this refuses NaN and infinity alike.
    CONSTRAINT workers_heart_rate_finite_check CHECK (heart_rate < 'Infinity'),
    CONSTRAINT workers_concurrency_check CHECK (concurrency >= 1),
    CONSTRAINT workers_stats_check CHECK (jsonb_typeof(stats) = 'object' AND pg_column_size(stats) <= 8192)
);

-- One row per leadership (today only 'reaper'): the reaper's leader holds a lease on the database
-- clock, which runs out by itself, unlike a session's advisory lock, which a frozen or cut-off
-- host keeps for as long as the server believes in its session. holder is a worker id, NULL when
-- the lease is free; expires_at is renewed by every pass of the holder, in the transaction that
-- does the pass's work. Rows are never deleted: contenders lock the existing row (SKIP LOCKED)
-- instead of racing to insert one, which would make them wait for each other.
CREATE TABLE pgjobs.leases (
    name        text PRIMARY KEY,
    holder      text,
    acquired_at timestamptz,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity'
);

-- Sessions that asked for pgjobs.done or pgjobs.events through pgjobs.listen(): those are sent
-- only while one listens. A row whose session has ended counts for nothing and is removed by the
-- next listen(). Unlogged: after a crash no session is left.
CREATE UNLOGGED TABLE pgjobs.listeners (
    channel text NOT NULL,
    pid     integer NOT NULL,
    since   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (channel, pid)
);

-- A secret of this database's pgjobs that salts the advisory lock a claim takes for a group.
-- PostgreSQL checks no privilege on advisory locks, and an unsalted key (a hash of the group's
-- name) would let any login squat a group's lock and keep its jobs from ever being claimed. Only
-- the owner reads it (harden() revokes it from pgjobs' roles).
CREATE TABLE pgjobs.lock_keys (
    salt text NOT NULL
);

-- ---------------------------------------------------------------------------------------------
-- Queues
-- ---------------------------------------------------------------------------------------------
-- One row per queue with settings that dequeue enforces for every client; a queue without a row
-- has none (and its groups run one job at a time). The view pgjobs.queues is in sql/schema.
CREATE TABLE pgjobs.queue_settings (
    queue             text PRIMARY KEY,
    paused            boolean NOT NULL DEFAULT false,
    rate_limit        integer NOT NULL DEFAULT 0,           -- claims per rate_period; 0 = no limit
    rate_period       double precision NOT NULL DEFAULT 0,  -- seconds of the sliding window
    max_active        integer NOT NULL DEFAULT 0,           -- active jobs of the queue; 0 = no limit
    group_rate_limit  integer NOT NULL DEFAULT 0,           -- claims per group_rate_period, each group
    group_rate_period double precision NOT NULL DEFAULT 0,
    group_max_active  integer NOT NULL DEFAULT 1,           -- active jobs of each group; 0 = no limit
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT queue_settings_limits_check CHECK (
        rate_limit >= 0 AND rate_period >= 0 AND max_active >= 0
        AND group_rate_limit >= 0 AND group_rate_period >= 0 AND group_max_active >= 0
    )
);

-- The sliding windows of rate-limited queues and groups: one row per claim, deleted once older
-- than its window. A queue's own window has group_key and enqueued_by ''; a group's claims are its
-- client's (enqueued_by), as the group is.
CREATE TABLE pgjobs.queue_claims (
    queue       text NOT NULL,
    group_key   text NOT NULL,
    claimed_at  timestamptz NOT NULL,
    enqueued_by text NOT NULL DEFAULT ''
);

-- ---------------------------------------------------------------------------------------------
-- Schedules
-- ---------------------------------------------------------------------------------------------
-- Cron and interval schedules. Cron maths (next ticks, ranges) run in the workers with croniter;
-- the database validates expressions, stores ticks under a unique key and enqueues their jobs.
CREATE TABLE pgjobs.schedules (
    name             text PRIMARY KEY,
    task             text NOT NULL,
    args             jsonb NOT NULL DEFAULT '{}',
    queue            text NOT NULL DEFAULT 'default',
    priority         integer NOT NULL DEFAULT 0,
    group_key        text,
    job_options      jsonb NOT NULL DEFAULT '{}',  -- max_attempts, timeout, heartbeat, retry_delay, retry_backoff, ttl, meta
    cron             text,                          -- 5 fields, or 6 with seconds last (croniter)
    timezone         text NOT NULL DEFAULT 'UTC',
    every            double precision,              -- interval in seconds; 0 = again as soon as the last run finished
    trigger_on_start boolean NOT NULL DEFAULT false, -- one run as soon as the schedule is first seen
    missed           pgjobs.missed_policy NOT NULL DEFAULT 'skip',
    misfire_grace    double precision NOT NULL DEFAULT 60, -- seconds late before a tick counts as missed
    max_catchup      integer NOT NULL DEFAULT 100,
    enabled          boolean NOT NULL DEFAULT true,
    next_run_at      timestamptz,                   -- NULL: not computed yet (a new or changed schedule)
    last_run_at      timestamptz,
    trigger_count    bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT schedules_cron_or_interval_check CHECK ((cron IS NULL) <> (every IS NULL)),
    CONSTRAINT schedules_every_check CHECK (every >= 0),
    CONSTRAINT schedules_catchup_check CHECK (max_catchup >= 1 AND misfire_grace >= 0),
    CONSTRAINT schedules_misfire_grace_finite_check CHECK (misfire_grace < 'Infinity')
);

-- One row per (schedule, tick): the unique key that makes each tick enqueue at most once.
CREATE TABLE pgjobs.schedule_runs (
    schedule    text NOT NULL REFERENCES pgjobs.schedules (name) ON DELETE CASCADE ON UPDATE CASCADE,
    tick        timestamptz NOT NULL,
    job_id      bigint NOT NULL,  -- no foreign key: retention deletes finished jobs
    enqueued_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, tick)
);

-- ---------------------------------------------------------------------------------------------
-- Bookkeeping
-- ---------------------------------------------------------------------------------------------
-- The digest of the sql/schema files last applied: they apply again when it differs (see
-- pgjobs/migrations.py).
CREATE TABLE pgjobs.schema_files (
    digest     text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- ---------------------------------------------------------------------------------------------
-- Indexes: each serves the queries named. Those of jobs are on its partitions, not on pgjobs.jobs:
-- the hot table and history are read differently.
-- ---------------------------------------------------------------------------------------------
-- Every call that names a job: complete, fail, touch, cancel, release, heartbeats.
ALTER TABLE pgjobs.jobs_live ADD CONSTRAINT jobs_live_pkey PRIMARY KEY (id);

-- dequeue: due jobs of a queue in claim order.
CREATE INDEX jobs_live_queue_priority_scheduled_at_id_idx
    ON pgjobs.jobs_live (queue, priority, scheduled_at, id) WHERE status = 'queued';

-- dequeue: the active runs of a client's group, by slot. The database itself forbids two runs in
-- one slot.
CREATE UNIQUE INDEX jobs_live_enqueued_by_group_key_group_slot_idx
    ON pgjobs.jobs_live (enqueued_by, group_key, group_slot)
    WHERE status IN ('active', 'aborting') AND group_key IS NOT NULL;

-- enqueue, enqueue_job, enqueue_many, has_job: deduplication by key among a client's unfinished
-- jobs (a waiting job holds its key as a queued one does).
CREATE UNIQUE INDEX jobs_live_enqueued_by_key_idx
    ON pgjobs.jobs_live (enqueued_by, key)
    WHERE status IN ('waiting', 'queued', 'active', 'aborting') AND key IS NOT NULL;

-- release and the reaper: the running jobs of one worker.
CREATE INDEX jobs_live_worker_id_idx
    ON pgjobs.jobs_live (worker_id) WHERE status IN ('active', 'aborting');

-- the reaper (_history_upkeep): finished jobs to move to history, oldest first.
CREATE INDEX jobs_live_completed_at_idx
    ON pgjobs.jobs_live (completed_at) WHERE status IN ('complete', 'failed', 'aborted');

-- a parent finishing (_dependants_trigger): its waiting dependants.
CREATE INDEX jobs_live_depends_on_idx
    ON pgjobs.jobs_live USING gin (depends_on) WHERE status = 'waiting';

-- History is read by id (job(), refresh(), wait(), SELECT … WHERE id = …); it is cleared by
-- dropping whole days, so no index on expires_at.
CREATE INDEX jobs_done_id_idx ON pgjobs.jobs_done (id);

-- The dashboard and finished_per_minute: jobs finished in the last minutes, in history too. One
-- more index entry a job the reaper moves.
CREATE INDEX jobs_done_completed_at_idx ON pgjobs.jobs_done (completed_at);

-- reap: workers whose heartbeat is overdue.
CREATE INDEX workers_heartbeat_at_idx
    ON pgjobs.workers (heartbeat_at) WHERE status IN ('running', 'stopping');

-- dequeue: claims of a queue or of a client's group within its window, and those past it to delete.
CREATE INDEX queue_claims_queue_group_key_enqueued_by_claimed_at_idx
    ON pgjobs.queue_claims (queue, group_key, enqueued_by, claimed_at);

-- schedule_due (the scheduler): enabled schedules that are due.
CREATE INDEX schedules_next_run_at_idx ON pgjobs.schedules (next_run_at) WHERE enabled;

-- ---------------------------------------------------------------------------------------------
-- Data
-- ---------------------------------------------------------------------------------------------
-- The reaper's lease comes with the schema; lease_take inserts the row of any other name once.
INSERT INTO pgjobs.leases (name) VALUES ('reaper');

-- This database's salt of the groups' advisory locks: 72 random characters.
INSERT INTO pgjobs.lock_keys (salt) VALUES (gen_random_uuid()::text || gen_random_uuid()::text);
