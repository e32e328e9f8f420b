-- 0013 group scope: a group is a client's own, as a dedupe key is (0007). Exclusivity, a group's
-- active runs at most and its rate windows count the jobs one enqueuing role put in a group, so
-- that another client's jobs under the same group_key never hold them up. A group still spans
-- that client's queues.
DROP INDEX pgjobs.jobs_live_group_key_group_slot_idx;
-- dequeue: the active runs of a client's group, by slot. The database itself forbids two runs in one slot.
CREATE UNIQUE INDEX jobs_live_enqueued_by_group_key_group_slot_idx
    ON pgjobs.jobs_live (enqueued_by, group_key, group_slot)
    WHERE status IN ('active', 'aborting') AND group_key IS NOT NULL;

-- A group's claims in its rate window are its client's ('' for a queue's own window).
ALTER TABLE pgjobs.queue_claims ADD COLUMN enqueued_by text NOT NULL DEFAULT '';
DROP INDEX pgjobs.queue_claims_queue_group_key_claimed_at_idx;
-- dequeue: claims of a queue or of a client's group within its window, and those past it to delete.
CREATE INDEX queue_claims_queue_group_key_enqueued_by_claimed_at_idx
    ON pgjobs.queue_claims (queue, group_key, enqueued_by, claimed_at);
