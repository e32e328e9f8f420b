-- 0011 operations, undone: the chart's index and the workers' stats go; the role stays (other
-- databases may use it).
DROP INDEX pgjobs.jobs_done_completed_at_idx;
ALTER TABLE pgjobs.workers DROP COLUMN stats;
