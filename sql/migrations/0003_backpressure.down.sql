-- 0003 backpressure, rolled back. The view queues reads max_queued: it goes, with the functions
-- that return its rows, to be made again by the release rolled back to.
DROP VIEW IF EXISTS pgjobs.queues CASCADE;
ALTER TABLE pgjobs.queue_settings DROP COLUMN max_queued;
