-- 0001 baseline, rolled back: version 0, the schema pgjobs holding only the record of migrations
-- (sql/bootstrap.sql). Everything the up migration created goes, and first what sql/schema made
-- on top of it (every view and function, their triggers with them; the policy goes with its
-- table), then the grants harden() gave on what stays. The roles stay: they are the whole
-- server's, and other databases may use them.
DO $$
DECLARE
    o record;
BEGIN
    FOR o IN SELECT c.oid::regclass AS name FROM pg_class c
             WHERE c.relnamespace = 'pgjobs'::regnamespace AND c.relkind = 'v' LOOP
        EXECUTE format('DROP VIEW %s CASCADE', o.name);
    END LOOP;
    FOR o IN SELECT p.oid::regprocedure AS name FROM pg_proc p WHERE p.pronamespace = 'pgjobs'::regnamespace LOOP
        EXECUTE format('DROP FUNCTION %s CASCADE', o.name);
    END LOOP;
    FOR o IN SELECT r.rolname AS name FROM pg_roles r
             WHERE r.rolname IN ('pgjobs_client', 'pgjobs_worker', 'pgjobs_admin') LOOP
        EXECUTE format('REVOKE ALL ON pgjobs.migrations FROM %I', o.name);
        EXECUTE format('REVOKE ALL ON SCHEMA pgjobs FROM %I', o.name);
    END LOOP;
END;
$$;

DROP TABLE pgjobs.schema_files;
DROP TABLE pgjobs.schedule_runs;
DROP TABLE pgjobs.schedules;
DROP TABLE pgjobs.queue_claims;
DROP TABLE pgjobs.queue_settings;
DROP TABLE pgjobs.lock_keys;
DROP TABLE pgjobs.listeners;
DROP TABLE pgjobs.leases;
DROP TABLE pgjobs.workers;
DROP TABLE pgjobs.jobs;  -- its partitions, the days of history among them, and its identity's sequence

DROP TYPE pgjobs.missed_policy;
DROP TYPE pgjobs.worker_status;
DROP TYPE pgjobs.job_status;
-- The roles pgjobs_client, pgjobs_worker and pgjobs_admin are kept.
