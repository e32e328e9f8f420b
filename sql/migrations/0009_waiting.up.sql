-- 0009 waiting: the status of a job whose parents (depends_on) have not all completed.
--
-- Alone in its migration: a new enum value can be used only once the transaction that added it
-- has committed, and 0010 and sql/schema use it. It cannot be rolled back (there is no down file):
-- PostgreSQL does not drop an enum value.
ALTER TYPE pgjobs.job_status ADD VALUE IF NOT EXISTS 'waiting' BEFORE 'queued';
