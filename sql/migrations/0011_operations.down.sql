-- 0011 operations, undone: the chart's index goes; the role stays (other databases may use it).
DROP INDEX pgjobs.jobs_done_completed_at_idx;
