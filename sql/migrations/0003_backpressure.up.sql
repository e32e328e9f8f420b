-- 0003 backpressure: a queue's maximum depth, checked as jobs are enqueued (see pgjobs._admit in
-- sql/schema/20_enqueue.sql).
ALTER TABLE pgjobs.queue_settings
    ADD COLUMN max_queued integer NOT NULL DEFAULT 0,  -- queued jobs (due or later) at most; 0 = no limit
    ADD CONSTRAINT queue_settings_max_queued_check CHECK (max_queued >= 0);
