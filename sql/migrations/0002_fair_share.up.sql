-- 0002 fair share: a job's tenant, and the share of a fair queue's claims between its tenants by
-- weight (see dequeue in sql/schema/30_claim.sql).

-- Whose work a job is (a customer, an account): on a fair queue, tenants with due jobs share the
-- claims in proportion to their weights. NULL: the queue's unnamed tenant.
ALTER TABLE pgjobs.jobs ADD COLUMN tenant text;

ALTER TABLE pgjobs.queue_settings
    ADD COLUMN fair boolean NOT NULL DEFAULT false,
    -- A fair queue's virtual time: the start tag of the last job it claimed. A tenant that had no
    -- due job starts from it again, so time spent idle earns no credit.
    ADD COLUMN fair_clock double precision NOT NULL DEFAULT 0;

-- The tenants of fair queues: the weight an operator gave each (1 unless set), and its pass, the
-- virtual time its next job starts at (each claimed job moves it on by 1 / weight). A row whose
-- pass is behind its queue's clock and whose weight is 1 says nothing the clock does not: the
-- reaper deletes it, so that the table holds the tenants in play and those given a weight.
CREATE TABLE pgjobs.queue_tenants (
    queue  text NOT NULL,
    tenant text NOT NULL,  -- '' stands for the unnamed tenant (jobs whose tenant is NULL)
    weight double precision NOT NULL DEFAULT 1,
    pass   double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (queue, tenant),
    CONSTRAINT queue_tenants_weight_check CHECK (weight >= 0.001 AND weight <= 1000000)
);

-- dequeue on a fair queue: the tenants that have queued jobs (a skip scan over tenant), and each
-- one's due jobs in claim order. Jobs without a tenant stay out of it: they cost nothing more.
CREATE INDEX jobs_live_queue_tenant_priority_scheduled_at_id_idx
    ON pgjobs.jobs_live (queue, tenant, priority, scheduled_at, id) WHERE status = 'queued' AND tenant IS NOT NULL;

-- complete_and_dequeue returns each claimed job's tenant too: a new return type (sql/schema makes
-- the function again).
DROP FUNCTION IF EXISTS pgjobs.complete_and_dequeue(text, text[], integer, bigint[], jsonb[], integer[]);
