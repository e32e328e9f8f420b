-- 0009 flow control, undone: settings and windows go; groups are exclusive again.
DROP TABLE pgjobs.queue_claims;
DROP TABLE pgjobs.queue_settings CASCADE;  -- and the view pgjobs.queues (sql/schema)
DROP INDEX pgjobs.jobs_live_group_key_group_slot_idx;
ALTER TABLE pgjobs.jobs DROP COLUMN group_slot;
CREATE UNIQUE INDEX jobs_live_group_key_idx
    ON pgjobs.jobs_live (group_key) WHERE status IN ('active', 'aborting') AND group_key IS NOT NULL;
