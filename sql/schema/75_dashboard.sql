-- Dashboard: the lists the browser dashboard reads, callable from any language.

-- Jobs newest first that match a filter (see _job_matches), one page: those with an id below
-- before_id (NULL: from the newest), at most max_jobs (1 to 1000, default 50). The next page
-- starts before the last id of this one. Hot and finished jobs alike, through their id indexes.
CREATE OR REPLACE FUNCTION pgjobs.job_list(
    queue text DEFAULT NULL,
    status pgjobs.job_status DEFAULT NULL,
    task text DEFAULT NULL,
    group_key text DEFAULT NULL,
    key text DEFAULT NULL,
    error text DEFAULT NULL,
    before_id bigint DEFAULT NULL,
    max_jobs integer DEFAULT 50
) RETURNS SETOF pgjobs.jobs
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_variable
BEGIN
    IF max_jobs IS NOT NULL AND max_jobs NOT BETWEEN 1 AND 1000 THEN
        PERFORM pgjobs._refuse('max_jobs', format('must be between 1 and 1000, got %s', max_jobs));
    END IF;
    RETURN QUERY
    SELECT j.* FROM pgjobs.jobs j
    WHERE (before_id IS NULL OR j.id < before_id)
      AND pgjobs._job_matches(j, queue, status, task, group_key, key, error)
    ORDER BY j.id DESC
    LIMIT coalesce(max_jobs, 50);
END;
$$;

-- Jobs that finished per minute over the last `minutes` minutes (1 to 1440, default 60), by queue:
-- how many completed and how many failed for good. One row per queue and minute that had any,
-- oldest first. Recent finishes are in jobs_live (its completed_at index); older ones moved to
-- history, whose days that ended before the window are pruned (a job expires after it finished).
CREATE OR REPLACE FUNCTION pgjobs.finished_per_minute(minutes integer DEFAULT 60)
RETURNS TABLE (queue text, minute timestamptz, complete bigint, failed bigint)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
DECLARE
    since timestamptz;
BEGIN
    IF minutes IS NOT NULL AND minutes NOT BETWEEN 1 AND 1440 THEN
        PERFORM pgjobs._refuse('minutes', format('must be between 1 and 1440, got %s', minutes));
    END IF;
    since := date_trunc('minute', now()) - make_interval(mins => coalesce(minutes, 60) - 1);
    RETURN QUERY
    SELECT f.queue, date_trunc('minute', f.completed_at),
           count(*) FILTER (WHERE f.status = 'complete'), count(*) FILTER (WHERE f.status = 'failed')
    FROM (SELECT l.queue, l.status, l.completed_at FROM pgjobs.jobs_live l
          WHERE l.status IN ('complete', 'failed', 'aborted') AND l.completed_at >= since
          UNION ALL
          SELECT d.queue, d.status, d.completed_at FROM pgjobs.jobs_done d
          WHERE d.expires_at >= since AND d.completed_at >= since) f
    WHERE f.status IN ('complete', 'failed')
    GROUP BY 1, 2
    ORDER BY 1, 2;
END;
$$;
