-- 0011 operations: a role for operators (pgjobs_admin), workers' own counts, and the index the
-- dashboard's chart reads.

-- pgjobs_admin: everything pgjobs_worker may do, and the verbs that change jobs and queues on an
-- operator's word (retry, delete, bulk retry and cancel, queue settings, run a schedule now), which
-- workers no longer get (see harden() in sql/schema/90_security.sql). Kept when this is rolled back.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_admin') THEN
        CREATE ROLE pgjobs_admin NOLOGIN;
    END IF;
EXCEPTION WHEN insufficient_privilege THEN
    RAISE WARNING 'pgjobs: cannot create role pgjobs_admin (no CREATEROLE): '
                  'create it and run pgjobs.harden() to grant it its rights';
END;
$$;

-- What a worker counts of itself, sent with its heartbeats (see worker_heartbeat): e.g. runs it
-- killed and child processes it replaced, for the dashboard.
ALTER TABLE pgjobs.workers ADD COLUMN stats jsonb NOT NULL DEFAULT '{}'
    CHECK (jsonb_typeof(stats) = 'object' AND pg_column_size(stats) <= 8192);

-- The dashboard and pgjobs.finished_per_minute: jobs finished in the last minutes, in history
-- too. One more index entry a job the reaper moves.
CREATE INDEX jobs_done_completed_at_idx ON pgjobs.jobs_done (completed_at);
