-- Finish and follow a run: complete, fail, touch, cancel, release.

-- Where a job goes when a run ends without a result: aborted when a user cancelled it, queued
-- again while attempts remain (and retry), else failed.
CREATE OR REPLACE FUNCTION pgjobs._after_run(j pgjobs.jobs, retry boolean) RETURNS pgjobs.job_status
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN j.status = 'aborting' AND j.abort_reason IS NULL THEN 'aborted'
        WHEN retry AND j.attempts < j.max_attempts THEN 'queued'
        ELSE 'failed'
    END::pgjobs.job_status
$$;

-- Record the results of many jobs; returns the ids that were active and are now complete.
CREATE OR REPLACE FUNCTION pgjobs.complete_many(job_ids bigint[], results jsonb[] DEFAULT NULL, attempts integer[] DEFAULT NULL)
RETURNS SETOF bigint
LANGUAGE plpgsql
-- One plan for every call, walking the primary key, as dequeue explains. No bitmap scans: the plan
-- would AND the ids' probes with the whole partial index of active jobs, whose entries of runs
-- finished since the last vacuum it reads at every call (a fifth of a drain's server time).
SET plan_cache_mode = force_generic_plan SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off AS $$
#variable_conflict use_column
DECLARE
    done bigint[];
    unblocked text[];
BEGIN
    IF complete_many.job_ids IS NULL THEN
        PERFORM pgjobs._refuse('job_ids', 'must be an array of job ids');
    END IF;
    IF cardinality(complete_many.results) IS DISTINCT FROM cardinality(complete_many.job_ids)
       AND complete_many.results IS NOT NULL THEN
        PERFORM pgjobs._refuse('results', 'must be NULL or hold one result per job id');
    END IF;
    IF cardinality(complete_many.attempts) IS DISTINCT FROM cardinality(complete_many.job_ids)
       AND complete_many.attempts IS NOT NULL THEN
        PERFORM pgjobs._refuse('attempts', 'must be NULL or hold one attempt per job id');
    END IF;
    WITH changed AS (
        -- The hot partition itself: through pgjobs.jobs, the statement trigger's transition tables
        -- would copy every row (events are announced below instead).
        UPDATE pgjobs.jobs_live j
        SET status = 'complete',
            -- Over the cap, or past what a JSON decoder reads: a note instead, the job still completes.
            result = pgjobs._fit_result(u.result),
            progress = 1, completed_at = now(), touched_at = now()
        FROM unnest(complete_many.job_ids, coalesce(complete_many.results, '{}'),
                    coalesce(complete_many.attempts, '{}')) AS u(id, result, attempt)
        -- The id array again, as a primary-key probe the one plan keeps whatever it guesses.
        WHERE j.id = ANY (complete_many.job_ids) AND j.id = u.id AND j.status IN ('active', 'aborting')
          AND j.expires_at IS NULL
          AND (u.attempt IS NULL OR j.attempts = u.attempt)
        RETURNING j.id, j.queue, j.group_key
    )
    SELECT array_agg(c.id), array_agg(DISTINCT c.queue) FILTER (WHERE c.group_key IS NOT NULL)
    INTO done, unblocked
    FROM changed c;
    PERFORM pgjobs._announce_done(done);
    PERFORM pgjobs._announce_events(done, 'complete');
    -- The next job of each group may run now: wake the workers of its queue.
    PERFORM pgjobs._notify(pgjobs.queue_channel(q), '') FROM unnest(unblocked) AS q;
    RETURN QUERY SELECT unnest(done);
END;
$$;

-- Record the result of one job; true when it was active and is now complete.
CREATE OR REPLACE FUNCTION pgjobs.complete(job_id bigint, result jsonb DEFAULT NULL, attempt integer DEFAULT NULL)
RETURNS boolean
LANGUAGE sql AS $$
    SELECT EXISTS (SELECT FROM pgjobs.complete_many(ARRAY[job_id], ARRAY[result], ARRAY[attempt]))
$$;

-- Record a failed attempt. With attempts left (and retry true) the job is queued again after
-- its retry delay; otherwise it is failed. A job a user cancelled becomes aborted; one the
-- reaper stopped is retried or failed with the reaper's reason as its error. Returns the new
-- status, or NULL when the job was not active (or the attempt fence did not match).
CREATE OR REPLACE FUNCTION pgjobs.fail(job_id bigint, error text, attempt integer DEFAULT NULL, retry boolean DEFAULT true)
RETURNS pgjobs.job_status
LANGUAGE plpgsql
-- Rows by id through the primary key, whatever statistics the plan was made with (see dequeue).
SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    old pgjobs.jobs;
    s pgjobs.job_status;
BEGIN
    SELECT * INTO old FROM pgjobs.jobs j
    WHERE j.id = fail.job_id AND j.status IN ('active', 'aborting') AND j.expires_at IS NULL
      AND (fail.attempt IS NULL OR j.attempts = fail.attempt)
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    s := pgjobs._after_run(old, coalesce(fail.retry, true));
    UPDATE pgjobs.jobs j
    SET status = s,
        error = coalesce(old.abort_reason, fail.error),
        abort_reason = NULL,
        scheduled_at = CASE WHEN s = 'queued'
            THEN now() + make_interval(secs => pgjobs.retry_delay_for(old.attempts, old.retry_delay, old.retry_backoff))
            ELSE j.scheduled_at END,
        worker_id = CASE WHEN s = 'queued' THEN NULL ELSE j.worker_id END,
        completed_at = CASE WHEN s = 'queued' THEN NULL ELSE now() END,
        touched_at = now()
    WHERE j.id = old.id AND j.expires_at IS NULL;
    IF s <> 'queued' THEN
        PERFORM pgjobs._announce_done(ARRAY[old.id]);
    END IF;
    IF s = 'queued' OR old.group_key IS NOT NULL THEN
        -- A retry, or the next job of the group, may be due: wake the workers of the queue.
        PERFORM pgjobs._notify(pgjobs.queue_channel(old.queue), '');
    END IF;
    RETURN s;
END;
$$;

-- Refresh a running job's touched time, and optionally its progress (0 to 1) and meta (merged
-- into the stored object, which stays within the cap and what JSON decoders read, as at enqueue).
-- Fenced by the attempt: false when the run is no longer current.
CREATE OR REPLACE FUNCTION pgjobs.touch(job_id bigint, attempt integer, progress double precision DEFAULT NULL, meta jsonb DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql
-- Rows by id through the primary key, whatever statistics the plan was made with (see dequeue).
SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    cap bigint;
    meta_text text;  -- computed once: _json_problem would compute doc::text at each use
    problem text[];
    merged integer;
BEGIN
    IF touch.progress IS NOT NULL AND NOT (touch.progress >= 0 AND touch.progress <= 1) THEN
        PERFORM pgjobs._refuse('progress', format('must be between 0 and 1, got %s', touch.progress));
    END IF;
    IF touch.meta IS NOT NULL THEN
        IF jsonb_typeof(touch.meta) <> 'object' THEN
            PERFORM pgjobs._refuse('meta', 'must be a JSON object');
        END IF;
        IF pgjobs._size(touch.meta) > pgjobs._cap_floor() THEN
            cap := pgjobs.max_payload();
            IF pgjobs._size(touch.meta) > cap THEN
                problem := pgjobs._over_cap('meta', touch.meta, cap);
                PERFORM pgjobs._refuse(problem[1], problem[2]);
            END IF;
        END IF;
        meta_text := touch.meta::text;
        problem := pgjobs._json_problem('meta', touch.meta, meta_text);
        IF problem IS NOT NULL THEN
            PERFORM pgjobs._refuse(problem[1], problem[2]);
        END IF;
    END IF;
    UPDATE pgjobs.jobs j
    SET touched_at = now(),
        progress = coalesce(touch.progress, j.progress),
        meta = CASE WHEN touch.meta IS NULL THEN j.meta ELSE j.meta || touch.meta END
    WHERE j.id = touch.job_id AND j.attempts = touch.attempt AND j.status IN ('active', 'aborting')
      AND j.expires_at IS NULL
    RETURNING CASE WHEN touch.meta IS NOT NULL THEN pgjobs._size(j.meta) END INTO merged;
    IF merged > pgjobs._cap_floor() THEN
        cap := coalesce(cap, pgjobs.max_payload());
        IF merged > cap THEN
            -- The error undoes the update: what was stored stays.
            PERFORM pgjobs._refuse('meta', format('merged into the job''s meta makes it %s bytes, over the cap of %s '
                                                  '(pgjobs.max_payload)', merged, cap));
        END IF;
    END IF;
    RETURN FOUND;
END;
$$;

-- Cancel a job: a queued one is aborted at once, a running one is asked to stop (aborting).
-- Returns its status after the call; NULL for a job the caller may not act on (another client's)
-- or that does not exist.
CREATE OR REPLACE FUNCTION pgjobs.cancel(job_id bigint)
RETURNS pgjobs.job_status
LANGUAGE plpgsql AS $$
DECLARE
    s pgjobs.job_status;
BEGIN
    UPDATE pgjobs.jobs j
    SET status = CASE WHEN j.status IN ('waiting', 'queued') THEN 'aborted' ELSE 'aborting' END::pgjobs.job_status,
        abort_reason = NULL,
        completed_at = CASE WHEN j.status IN ('waiting', 'queued') THEN now() END
    WHERE j.id = job_id AND j.status IN ('waiting', 'queued', 'active', 'aborting') AND j.expires_at IS NULL
      AND pgjobs._may_act(j.enqueued_by)
    RETURNING j.status INTO s;
    IF FOUND THEN
        IF s = 'aborted' THEN
            PERFORM pgjobs._announce_done(ARRAY[job_id]);
        ELSE
            PERFORM pgjobs._notify('pgjobs.cancel', job_id::text);
        END IF;
        RETURN s;
    END IF;
    SELECT j.status INTO s FROM pgjobs.jobs j WHERE j.id = job_id AND pgjobs._may_act(j.enqueued_by);
    RETURN s;
END;
$$;

-- Give running jobs back to the queue without counting the attempt (a worker shutting down).
-- Only jobs held by worker_id are touched. A job a user cancelled becomes aborted; one the reaper
-- stopped ends like a failure. Returns the count.
CREATE OR REPLACE FUNCTION pgjobs.release(worker_id text, job_ids bigint[])
RETURNS integer
LANGUAGE plpgsql
-- Rows by id through the primary key, whatever statistics the plan was made with (see dequeue).
SET enable_seqscan = off AS $$
#variable_conflict use_column
DECLARE
    woken text[];
    finished bigint[];
    n integer;
BEGIN
    WITH old AS (
        SELECT j.*, CASE WHEN j.status = 'active' THEN 'queued'::pgjobs.job_status
                         ELSE pgjobs._after_run(j, true) END AS next
        FROM pgjobs.jobs j
        WHERE j.id = ANY (release.job_ids) AND j.worker_id = release.worker_id
          AND j.status IN ('active', 'aborting') AND j.expires_at IS NULL
        FOR UPDATE
    ), changed AS (
        UPDATE pgjobs.jobs j
        SET status = old.next,
            attempts = CASE WHEN old.status = 'active' THEN greatest(j.attempts - 1, 0) ELSE j.attempts END,
            error = coalesce(old.abort_reason, j.error),
            abort_reason = NULL,
            worker_id = CASE WHEN old.next = 'queued' THEN NULL ELSE j.worker_id END,
            started_at = CASE WHEN old.next = 'queued' THEN NULL ELSE j.started_at END,
            completed_at = CASE WHEN old.next = 'queued' THEN NULL ELSE now() END
        FROM old
        WHERE j.id = old.id AND j.expires_at IS NULL
        RETURNING j.id, j.queue, j.status, j.group_key
    )
    SELECT count(*),
           array_agg(DISTINCT c.queue) FILTER (WHERE c.status = 'queued' OR c.group_key IS NOT NULL),
           array_agg(c.id) FILTER (WHERE c.status <> 'queued')
    INTO n, woken, finished
    FROM changed c;
    PERFORM pgjobs._notify(pgjobs.queue_channel(q), '') FROM unnest(woken) AS q;
    PERFORM pgjobs._announce_done(finished);
    RETURN n;
END;
$$;

-- A job others depend on has finished: when it completed, its dependants whose parents have all
-- completed are queued (and their queues woken); when it failed or was aborted, its waiting
-- dependants are aborted, naming it, and theirs in turn (this trigger again).
CREATE OR REPLACE FUNCTION pgjobs._dependants_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kids bigint[];
    woken text[];
    aborted bigint[];
BEGIN
    -- Lock them first: two parents finishing at once take turns, and the second one's next
    -- statement sees the first one's commit (a single snapshot could leave a job waiting forever).
    kids := ARRAY(SELECT c.id FROM pgjobs.jobs_live c
                  WHERE c.status = 'waiting' AND c.depends_on @> ARRAY[NEW.id] ORDER BY c.id FOR UPDATE);
    IF kids = '{}' THEN
        RETURN NULL;
    END IF;
    IF NEW.status = 'complete' THEN
        WITH ready AS (
            UPDATE pgjobs.jobs c SET status = 'queued'
            WHERE c.id = ANY (kids) AND c.status = 'waiting' AND c.expires_at IS NULL
              AND NOT EXISTS (SELECT FROM pgjobs.jobs p WHERE p.id = ANY (c.depends_on) AND p.status <> 'complete')
            RETURNING c.queue
        )
        SELECT array_agg(DISTINCT ready.queue) INTO woken FROM ready;
        PERFORM pgjobs._notify(pgjobs._channel(q), '') FROM unnest(woken) AS q;
    ELSE
        WITH gone AS (
            UPDATE pgjobs.jobs c
            SET status = 'aborted', completed_at = now(), error = format('parent job %s ended %s', NEW.id, NEW.status)
            WHERE c.id = ANY (kids) AND c.status = 'waiting' AND c.expires_at IS NULL
            RETURNING c.id
        )
        SELECT array_agg(gone.id) INTO aborted FROM gone;
        PERFORM pgjobs._announce_done(aborted);
    END IF;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE TRIGGER jobs_dependants AFTER UPDATE OF status ON pgjobs.jobs
    FOR EACH ROW WHEN (NEW.has_dependants AND OLD.status IS DISTINCT FROM NEW.status
                       AND NEW.status IN ('complete', 'failed', 'aborted'))
    EXECUTE FUNCTION pgjobs._dependants_trigger();
