-- Dashboard: the lists and the bulk actions of the browser dashboard, callable from any language.

-- Whether job j matches a filter (NULL: any): queue, status, task, group_key and key exactly, and
-- error holding the text `error` (case-insensitive, no wildcards). Only jobs the session may act on
-- (a client's own, see _may_act) ever match.
CREATE OR REPLACE FUNCTION pgjobs._job_matches(
    j pgjobs.jobs, queue text, status pgjobs.job_status, task text, group_key text, key text, error text
) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT (queue IS NULL OR j.queue = queue)
       AND (status IS NULL OR j.status = status)
       AND (task IS NULL OR j.task = task)
       AND (group_key IS NULL OR j.group_key = group_key)
       AND (key IS NULL OR j.key = key)
       AND (error IS NULL OR strpos(lower(j.error), lower(error)) > 0)
       AND pgjobs._may_act(j.enqueued_by)
$$;

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

-- Put every failed or aborted job that matches a filter back in its queue (see _requeue), or with
-- dry_run only count them; returns how many. A status other than failed or aborted matches none.
-- Jobs whose key an unfinished job holds are left as they are; of several with one key, the
-- newest is retried.
CREATE OR REPLACE FUNCTION pgjobs.retry_matching(
    queue text DEFAULT NULL,
    status pgjobs.job_status DEFAULT NULL,
    task text DEFAULT NULL,
    group_key text DEFAULT NULL,
    key text DEFAULT NULL,
    error text DEFAULT NULL,
    dry_run boolean DEFAULT false
) RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    ids bigint[];
BEGIN
    ids := ARRAY(
        SELECT DISTINCT ON (j.enqueued_by, j.key, CASE WHEN j.key IS NULL THEN j.id END) j.id
        FROM pgjobs.jobs j
        WHERE j.status IN ('failed', 'aborted')
          AND pgjobs._job_matches(j, queue, status, task, group_key, key, error)
          AND (j.key IS NULL OR NOT EXISTS (SELECT FROM pgjobs.jobs_live u
                                            WHERE u.enqueued_by = j.enqueued_by AND u.key = j.key
                                              AND u.status IN ('waiting', 'queued', 'active', 'aborting')))
        ORDER BY j.enqueued_by, j.key, CASE WHEN j.key IS NULL THEN j.id END, j.id DESC);
    IF coalesce(dry_run, false) THEN
        RETURN cardinality(ids);
    END IF;
    RETURN pgjobs._requeue(ids);
END;
$$;

-- Cancel every waiting, queued or active job that matches a filter (each as pgjobs.cancel does:
-- waiting and queued ones end aborted, active ones are told to stop), or with dry_run only count
-- them; returns how many. Jobs being cancelled already (aborting) are not counted again.
CREATE OR REPLACE FUNCTION pgjobs.cancel_matching(
    queue text DEFAULT NULL,
    status pgjobs.job_status DEFAULT NULL,
    task text DEFAULT NULL,
    group_key text DEFAULT NULL,
    key text DEFAULT NULL,
    error text DEFAULT NULL,
    dry_run boolean DEFAULT false
) RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    ids bigint[];
    job_id bigint;
    n integer := 0;
BEGIN
    ids := ARRAY(
        SELECT j.id FROM pgjobs.jobs j
        WHERE j.status IN ('waiting', 'queued', 'active') AND j.expires_at IS NULL
          AND pgjobs._job_matches(j, queue, status, task, group_key, key, error)
        ORDER BY j.id);
    IF coalesce(dry_run, false) THEN
        RETURN cardinality(ids);
    END IF;
    FOREACH job_id IN ARRAY ids LOOP
        IF pgjobs.cancel(job_id) IN ('aborted', 'aborting') THEN
            n := n + 1;
        END IF;
    END LOOP;
    RETURN n;
END;
$$;

-- Run a schedule now, once, besides its ticks: one job, as a tick at now() would enqueue; its
-- next run stays as it was. Returns the job's id; raises P0002 (no_data_found) for an unknown
-- schedule. Paused schedules run too: pausing stops the ticks, not an operator.
CREATE OR REPLACE FUNCTION pgjobs.schedule_run_now(name text) RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s pgjobs.schedules;
    new_id bigint;
BEGIN
    SELECT * INTO s FROM pgjobs.schedules x WHERE x.name = schedule_run_now.name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgjobs: schedule: no schedule %', quote_literal(schedule_run_now.name)
            USING ERRCODE = 'no_data_found';
    END IF;
    INSERT INTO pgjobs.schedule_runs (schedule, tick, job_id) VALUES (s.name, now(), 0) ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN  -- run now once already in this transaction
        SELECT r.job_id INTO new_id FROM pgjobs.schedule_runs r WHERE r.schedule = s.name AND r.tick = now();
        RETURN new_id;
    END IF;
    new_id := pgjobs._schedule_job(s, now());
    UPDATE pgjobs.schedule_runs r SET job_id = new_id WHERE r.schedule = s.name AND r.tick = now();
    UPDATE pgjobs.schedules x
    SET last_run_at = greatest(x.last_run_at, now()), trigger_count = x.trigger_count + 1
    WHERE x.name = s.name;
    RETURN new_id;
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
