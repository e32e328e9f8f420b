-- 0013 group scope, undone: a group_key is one group across clients again. Fails while two
-- clients' runs of one group_key hold the same slot.
DROP INDEX pgjobs.queue_claims_queue_group_key_enqueued_by_claimed_at_idx;
ALTER TABLE pgjobs.queue_claims DROP COLUMN enqueued_by;
CREATE INDEX queue_claims_queue_group_key_claimed_at_idx ON pgjobs.queue_claims (queue, group_key, claimed_at);
DROP INDEX pgjobs.jobs_live_enqueued_by_group_key_group_slot_idx;
CREATE UNIQUE INDEX jobs_live_group_key_group_slot_idx
    ON pgjobs.jobs_live (group_key, group_slot) WHERE status IN ('active', 'aborting') AND group_key IS NOT NULL;
