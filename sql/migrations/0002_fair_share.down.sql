-- 0002 fair share, rolled back. What sql/schema made on the columns and table that go is dropped
-- with them, to be made again by the release rolled back to: complete_and_dequeue (its return type
-- is this release's), set_tenant (it returns a row of queue_tenants), and the view queues (it reads
-- fair) with the functions that return its rows.
DROP FUNCTION IF EXISTS pgjobs.complete_and_dequeue(text, text[], integer, bigint[], jsonb[], integer[]);
DROP FUNCTION IF EXISTS pgjobs.set_tenant(text, text, double precision);
DROP VIEW IF EXISTS pgjobs.queues CASCADE;
DROP INDEX pgjobs.jobs_live_queue_tenant_priority_scheduled_at_id_idx;
DROP TABLE pgjobs.queue_tenants;
ALTER TABLE pgjobs.queue_settings DROP COLUMN fair_clock, DROP COLUMN fair;
ALTER TABLE pgjobs.jobs DROP COLUMN tenant;
