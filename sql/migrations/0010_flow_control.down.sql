-- 0010 flow control, undone: settings, windows and dependencies go; groups are exclusive again.
DROP TRIGGER IF EXISTS jobs_dependants ON pgjobs.jobs;  -- sql/schema's, on a column that goes
DROP INDEX pgjobs.jobs_live_enqueued_by_key_idx;
CREATE UNIQUE INDEX jobs_live_enqueued_by_key_idx
    ON pgjobs.jobs_live (enqueued_by, key) WHERE status IN ('queued', 'active', 'aborting') AND key IS NOT NULL;
DROP INDEX pgjobs.jobs_live_depends_on_idx;
ALTER TABLE pgjobs.jobs DROP COLUMN has_dependants;
ALTER TABLE pgjobs.jobs DROP COLUMN depends_on;
DROP TABLE pgjobs.queue_claims;
DROP TABLE pgjobs.queue_settings CASCADE;  -- and the view pgjobs.queues (sql/schema)
DROP INDEX pgjobs.jobs_live_group_key_group_slot_idx;
ALTER TABLE pgjobs.jobs DROP COLUMN group_slot;
CREATE UNIQUE INDEX jobs_live_group_key_idx
    ON pgjobs.jobs_live (group_key) WHERE status IN ('active', 'aborting') AND group_key IS NOT NULL;
