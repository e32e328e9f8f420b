-- 0010 flow control: queue settings (pause, rate limits, global concurrency per queue and per
-- group) that dequeue enforces for every client, and dependencies between jobs.

-- One row per queue with settings; a queue without a row has none (its groups exclusive).
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

-- The sliding windows of rate-limited queues ('' as group_key) and groups: one row per claim,
-- deleted once older than its window.
CREATE TABLE pgjobs.queue_claims (
    queue      text NOT NULL,
    group_key  text NOT NULL,
    claimed_at timestamptz NOT NULL
);
-- dequeue: claims of a queue or group within its window, and those past it to delete.
CREATE INDEX queue_claims_queue_group_key_claimed_at_idx ON pgjobs.queue_claims (queue, group_key, claimed_at);

-- Which of a group's active slots a run holds (0 to group_max_active - 1); NULL when the group
-- has no limit. The database itself forbids two runs in one slot, as it forbade two active jobs of
-- one group.
ALTER TABLE pgjobs.jobs ADD COLUMN group_slot smallint;
UPDATE pgjobs.jobs_live SET group_slot = 0 WHERE status IN ('active', 'aborting') AND group_key IS NOT NULL;
DROP INDEX pgjobs.jobs_live_group_key_idx;
-- dequeue: the active runs of a group, by slot.
CREATE UNIQUE INDEX jobs_live_group_key_group_slot_idx
    ON pgjobs.jobs_live (group_key, group_slot) WHERE status IN ('active', 'aborting') AND group_key IS NOT NULL;

-- Dependencies: a job waits (status 'waiting') until every job of depends_on has completed.
ALTER TABLE pgjobs.jobs ADD COLUMN depends_on bigint[];
-- Set on a job once another depends on it: only then does finishing it look for dependants.
ALTER TABLE pgjobs.jobs ADD COLUMN has_dependants boolean NOT NULL DEFAULT false;
-- a parent finishing: its waiting dependants.
CREATE INDEX jobs_live_depends_on_idx ON pgjobs.jobs_live USING gin (depends_on) WHERE status = 'waiting';
-- enqueue: a waiting job holds its key as a queued one does.
DROP INDEX pgjobs.jobs_live_enqueued_by_key_idx;
CREATE UNIQUE INDEX jobs_live_enqueued_by_key_idx
    ON pgjobs.jobs_live (enqueued_by, key) WHERE status IN ('waiting', 'queued', 'active', 'aborting') AND key IS NOT NULL;
