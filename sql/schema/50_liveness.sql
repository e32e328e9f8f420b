-- Liveness: workers, heartbeats, leases and the reaper.

-- Register a worker process (refusing a NULL heart_rate with 22023).
CREATE OR REPLACE FUNCTION pgjobs.worker_register(
    worker_id text, hostname text, pid integer, os_user text, queues text[], concurrency integer,
    heart_rate double precision
) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF worker_id IS NULL OR worker_id = '' OR length(worker_id) > 200 THEN
        PERFORM pgjobs._refuse('worker_id', 'must be 1 to 200 characters');
    END IF;
    IF hostname IS NULL OR os_user IS NULL OR pid IS NULL THEN
        PERFORM pgjobs._refuse(CASE WHEN hostname IS NULL THEN 'hostname' WHEN os_user IS NULL THEN 'os_user'
                                    ELSE 'pid' END, 'must not be NULL');
    END IF;
    IF queues IS NULL OR cardinality(queues) = 0 OR array_position(queues, NULL) IS NOT NULL THEN
        PERFORM pgjobs._refuse('queues', 'must be a non-empty array of queue names');
    END IF;
    IF concurrency IS NULL OR concurrency < 1 THEN
        PERFORM pgjobs._refuse('concurrency', format('must be at least 1, got %s', concurrency));
    END IF;
    IF heart_rate IS NULL OR NOT (heart_rate > 0 AND heart_rate < 'Infinity') THEN
        PERFORM pgjobs._refuse('heart_rate', format('must be a positive number of seconds, got %s', heart_rate));
    END IF;
    IF EXISTS (SELECT FROM pgjobs.workers w WHERE w.id = worker_register.worker_id) THEN
        PERFORM pgjobs._refuse('worker_id', format('%L is registered already: use a fresh id per process', worker_id));
    END IF;
    INSERT INTO pgjobs.workers (id, hostname, pid, os_user, queues, concurrency, heart_rate)
    VALUES (worker_id, hostname, pid, os_user, queues, concurrency, heart_rate);
END;
$$;

-- One heartbeat of a worker: refreshes its row and the touched time of the runs it holds (job
-- ids with the attempt each one claimed), all in one statement each. Returns the worker's status
-- (stopping: it was asked to stop), the runs it must stop because they are aborting, the runs
-- that are no longer its own (reset by the reaper, maybe running elsewhere), and the runs it
-- lost track of, which this beat settled.
-- A lost run: active or aborting under this worker, not among the runs it holds, and claimed
-- before its previous heartbeat, so that a claim whose answer is still on its way is never one.
-- It ends in this statement as a failed attempt fenced by that attempt: queued again while
-- attempts remain, else failed. A worker sends claiming = true while a claim of its own is in
-- flight (its answer may have arrived after job_ids was read): that beat settles nothing.
-- A worker marked dead that beats again is running again; its old runs are lost. stats, when
-- given, replaces what the worker counts of itself (a JSON object, shown by the dashboard).
CREATE OR REPLACE FUNCTION pgjobs.worker_heartbeat(worker_id text, job_ids bigint[] DEFAULT '{}', attempts integer[] DEFAULT '{}',
                                                    stats jsonb DEFAULT NULL, claiming boolean DEFAULT false)
RETURNS TABLE (status pgjobs.worker_status, abort bigint[], lost bigint[], settled bigint[])
LANGUAGE plpgsql
-- Rows by id through the primary key, whatever statistics the plan was made with (see dequeue).
-- A beat waits for no lock longer than a second (a row another session holds): it fails, and the
-- worker beats again at once; the fence decides when silence lasts too long.
SET enable_seqscan = off SET lock_timeout = '1s' AS $$
#variable_conflict use_column
DECLARE
    s pgjobs.worker_status;
    previous timestamptz;
    unheld bigint[];
    unheld_attempts integer[];
    ended bigint[];
BEGIN
    IF jsonb_typeof(worker_heartbeat.stats) <> 'object' OR pg_column_size(worker_heartbeat.stats) > 8192 THEN
        PERFORM pgjobs._refuse('stats', 'must be a JSON object of at most 8192 bytes');
    END IF;
    IF cardinality(worker_heartbeat.job_ids) IS DISTINCT FROM cardinality(worker_heartbeat.attempts) THEN
        PERFORM pgjobs._refuse('attempts', 'must hold one attempt per job id');
    END IF;
    UPDATE pgjobs.workers w
    SET heartbeat_at = now(),
        status = CASE WHEN w.status = 'dead' THEN 'running'::pgjobs.worker_status ELSE w.status END,
        stats = coalesce(worker_heartbeat.stats, w.stats)
    FROM (SELECT o.heartbeat_at FROM pgjobs.workers o WHERE o.id = worker_heartbeat.worker_id) AS before
    WHERE w.id = worker_heartbeat.worker_id
    RETURNING w.status, before.heartbeat_at INTO s, previous;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgjobs: worker_id: no worker %', worker_heartbeat.worker_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT coalesce(worker_heartbeat.claiming, false) THEN
        SELECT array_agg(j.id), array_agg(j.attempts) INTO unheld, unheld_attempts
        FROM pgjobs.jobs_live j
        WHERE j.worker_id = worker_heartbeat.worker_id AND j.status IN ('active', 'aborting')
          AND j.started_at < previous
          AND NOT EXISTS (SELECT FROM unnest(worker_heartbeat.job_ids, worker_heartbeat.attempts) AS h(id, attempt)
                          WHERE h.id = j.id AND h.attempt = j.attempts);
        IF unheld IS NOT NULL THEN
            ended := ARRAY(SELECT pgjobs._end_runs(unheld, unheld_attempts,
                                                   'lost by worker %s: it no longer held this run'));
        END IF;
    END IF;
    RETURN QUERY
    WITH held AS (
        SELECT u.id, u.attempt FROM unnest(worker_heartbeat.job_ids, worker_heartbeat.attempts) AS u(id, attempt)
    ), touched AS (
        UPDATE pgjobs.jobs j SET touched_at = now()
        FROM held h
        WHERE j.id = h.id AND j.attempts = h.attempt AND j.worker_id = worker_heartbeat.worker_id
          AND j.status IN ('active', 'aborting') AND j.expires_at IS NULL
        RETURNING j.id, j.status
    )
    SELECT s,
           coalesce((SELECT array_agg(t.id) FROM touched t WHERE t.status = 'aborting'), '{}'),
           coalesce((SELECT array_agg(h.id) FROM held h WHERE h.id NOT IN (SELECT t.id FROM touched t)), '{}'),
           coalesce(ended, '{}');
END;
$$;

-- End runs whose worker no longer holds them (it died, or lost track of them): each a failed
-- attempt, fenced by the attempt named, queued again after its retry delay while attempts
-- remain, else failed; a run a user cancelled ends aborted, one the reaper killed keeps its
-- reason as the error. why is a format with one %s, the run's worker. Rows another session holds
-- locked are skipped: the next pass or beat comes back to them. Returns the ids of the runs ended.
CREATE OR REPLACE FUNCTION pgjobs._end_runs(job_ids bigint[], attempts integer[], why text)
RETURNS SETOF bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    ended bigint[];
    finished bigint[];
    woken text[];
BEGIN
    WITH run AS (
        SELECT j.*, pgjobs._after_run(j, true) AS next
        FROM pgjobs.jobs j
        JOIN unnest(_end_runs.job_ids, _end_runs.attempts) AS u(id, attempt) ON j.id = u.id AND j.attempts = u.attempt
        WHERE j.status IN ('active', 'aborting') AND j.expires_at IS NULL
        FOR UPDATE OF j SKIP LOCKED
    ), changed AS (
        UPDATE pgjobs.jobs j
        SET status = run.next,
            error = coalesce(run.abort_reason,
                             CASE WHEN run.next = 'aborted' THEN j.error ELSE format(_end_runs.why, run.worker_id) END),
            abort_reason = NULL,
            scheduled_at = CASE WHEN run.next = 'queued'
                THEN now() + make_interval(secs => pgjobs.retry_delay_for(run.attempts, run.retry_delay, run.retry_backoff))
                ELSE j.scheduled_at END,
            worker_id = CASE WHEN run.next = 'queued' THEN NULL ELSE j.worker_id END,
            completed_at = CASE WHEN run.next = 'queued' THEN NULL ELSE now() END
        FROM run WHERE j.id = run.id AND j.expires_at IS NULL
        RETURNING j.id, j.queue, j.status
    )
    SELECT array_agg(c.id), array_agg(c.id) FILTER (WHERE c.status <> 'queued'), array_agg(DISTINCT c.queue)
    INTO ended, finished, woken
    FROM changed c;
    PERFORM pgjobs._announce_done(finished);
    -- A retry, or the next job of a group, may be due: wake the workers of those queues.
    PERFORM pgjobs._notify(pgjobs.queue_channel(q), '') FROM unnest(woken) AS q;
    RETURN QUERY SELECT unnest(ended);
END;
$$;

-- Ask a worker to stop gracefully, from anywhere: it is told on channel pgjobs.worker (payload:
-- its id) and sees the status at its next heartbeat. Returns its status, NULL for an unknown id.
CREATE OR REPLACE FUNCTION pgjobs.worker_stop(worker_id text)
RETURNS pgjobs.worker_status
LANGUAGE plpgsql AS $$
DECLARE
    s pgjobs.worker_status;
BEGIN
    UPDATE pgjobs.workers w SET status = 'stopping'
    WHERE w.id = worker_stop.worker_id AND w.status = 'running'
    RETURNING w.status INTO s;
    IF FOUND THEN
        PERFORM pgjobs._notify('pgjobs.worker', worker_stop.worker_id);
        RETURN s;
    END IF;
    SELECT w.status INTO s FROM pgjobs.workers w WHERE w.id = worker_stop.worker_id;
    RETURN s;
END;
$$;

-- Record that a worker exited cleanly.
CREATE OR REPLACE FUNCTION pgjobs.worker_stopped(worker_id text) RETURNS void
LANGUAGE sql AS $$
    UPDATE pgjobs.workers w SET status = 'stopped', stopped_at = now(), heartbeat_at = now()
    WHERE w.id = worker_id
$$;

-- Whether a worker is running and beat within grace_multiplier heart rates (database clock).
CREATE OR REPLACE FUNCTION pgjobs.worker_is_alive(worker_id text, grace_multiplier double precision DEFAULT 2.1)
RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce((
        SELECT w.status IN ('running', 'stopping')
               AND w.heartbeat_at >= now() - make_interval(secs => w.heart_rate * grace_multiplier)
        FROM pgjobs.workers w WHERE w.id = worker_id), false)
$$;

-- Take or renew a lease for ttl seconds (database clock). True when holder holds it afterwards:
-- it was free, expired, or already holder's. The row stays locked until the caller's transaction
-- ends, so work done in that transaction is done by the holder alone; a contender that finds the
-- row locked gets false at once instead of waiting.
-- ttl is at most 600 s: the reaper's lease is 3 reap intervals (15 s by default), and a holder
-- that stops renewing (frozen, cut off, or a stolen credential taking the lease once) leaves the
-- fleet without a reaper for the rest of its ttl; 600 s allows reap intervals of 200 s.
CREATE OR REPLACE FUNCTION pgjobs.lease_take(name text, holder text, ttl double precision)
RETURNS boolean
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    l pgjobs.leases;
BEGIN
    IF lease_take.name IS NULL OR lease_take.name = '' OR length(lease_take.name) > 200 THEN
        PERFORM pgjobs._refuse('name', 'must be 1 to 200 characters');
    END IF;
    IF lease_take.holder IS NULL OR lease_take.holder = '' OR length(lease_take.holder) > 200 THEN
        PERFORM pgjobs._refuse('holder', 'must be 1 to 200 characters');
    END IF;
    IF lease_take.ttl IS NULL OR NOT (lease_take.ttl > 0 AND lease_take.ttl <= 600) THEN
        PERFORM pgjobs._refuse('ttl', format('must be more than 0 and at most 600 seconds, got %s', lease_take.ttl));
    END IF;
    SELECT * INTO l FROM pgjobs.leases x WHERE x.name = lease_take.name FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        IF EXISTS (SELECT FROM pgjobs.leases x WHERE x.name = lease_take.name) THEN
            RETURN false;  -- a contender's pass holds the row
        END IF;
        -- A new name gets its row once (the reaper's comes with the schema); no waiting after that.
        INSERT INTO pgjobs.leases (name) VALUES (lease_take.name) ON CONFLICT DO NOTHING;
        SELECT * INTO l FROM pgjobs.leases x WHERE x.name = lease_take.name FOR UPDATE SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
    END IF;
    IF l.holder IS DISTINCT FROM lease_take.holder AND l.expires_at > now() THEN
        RETURN false;
    END IF;
    UPDATE pgjobs.leases x
    SET holder = lease_take.holder,
        acquired_at = CASE WHEN x.holder = lease_take.holder AND x.expires_at > now() THEN x.acquired_at ELSE now() END,
        expires_at = now() + make_interval(secs => lease_take.ttl)
    WHERE x.name = lease_take.name;
    RETURN true;
END;
$$;

-- Hand a lease back (a leader that stops gracefully), so that the next contender takes it at once.
-- True when holder held it.
CREATE OR REPLACE FUNCTION pgjobs.lease_release(name text, holder text)
RETURNS boolean
LANGUAGE sql AS $$
    UPDATE pgjobs.leases x SET holder = NULL, acquired_at = NULL, expires_at = '-infinity'
    WHERE x.name = lease_release.name AND x.holder = lease_release.holder
    RETURNING true
$$;

-- Refuse a grace_multiplier (heart rates of silence after which a worker is dead) under 1.5: a
-- worker beats once a heart rate, so with less a beat a moment late would have a live worker
-- declared dead and its runs handed out again while it still runs them.
CREATE OR REPLACE FUNCTION pgjobs._check_grace(grace_multiplier double precision) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF grace_multiplier IS NULL OR NOT (grace_multiplier >= 1.5 AND grace_multiplier < 'Infinity') THEN
        PERFORM pgjobs._refuse('grace_multiplier', format('must be at least 1.5 heart rates, got %s', grace_multiplier));
    END IF;
END;
$$;

-- One pass of the reaper, each step in batches of at most batch_size rows:
-- 1. kill: active jobs past their timeout or heartbeat become aborting with a reason (their worker
--    stops them, and they are retried or failed); jobs held by an id that is not a live registered
--    worker are settled at once;
-- 2. orphans: workers that missed their heartbeats are marked dead and their jobs are reset
--    (queued again, the attempt counted, or failed when out of attempts; user cancels end aborted);
-- 3. retention: finished jobs past their ttl are deleted; so are workers stopped or dead for a week.
-- Safe to run from several sessions at once. Returns one row of counts.
CREATE OR REPLACE FUNCTION pgjobs.reap(batch_size integer DEFAULT 1000, grace_multiplier double precision DEFAULT 2.1)
RETURNS TABLE (killed integer, dead_workers integer, reset integer, deleted_jobs integer, deleted_workers integer)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    n_killed integer;
    n_dead integer;
    n_reset integer;
    n_deleted integer;
    n_workers integer;
    ended bigint[];
BEGIN
    IF batch_size IS NULL OR batch_size < 1 THEN
        PERFORM pgjobs._refuse('batch_size', format('must be at least 1, got %s', batch_size));
    END IF;
    PERFORM pgjobs._check_grace(grace_multiplier);

    -- 1. Kill runs past their timeout or heartbeat.
    WITH over AS (
        SELECT j.id,
               CASE WHEN j.timeout > 0 AND j.started_at + make_interval(secs => j.timeout) < now()
                    THEN format('timeout: ran longer than %s s', j.timeout)
                    ELSE format('heartbeat: not touched for more than %s s', j.heartbeat) END AS reason
        FROM pgjobs.jobs j
        WHERE j.status = 'active' AND j.expires_at IS NULL
          AND ((j.timeout > 0 AND j.started_at + make_interval(secs => j.timeout) < now())
            OR (j.heartbeat > 0 AND j.touched_at + make_interval(secs => j.heartbeat) < now()))
        LIMIT batch_size
        FOR UPDATE SKIP LOCKED
    ), changed AS (
        UPDATE pgjobs.jobs j SET status = 'aborting', abort_reason = over.reason
        FROM over WHERE j.id = over.id AND j.expires_at IS NULL
        RETURNING j.id
    )
    SELECT count(*), array_agg(c.id) INTO n_killed, ended FROM changed c;
    PERFORM pgjobs._notify_ids('pgjobs.cancel', ended);

    -- 2. Workers that missed their heartbeats are dead.
    WITH gone AS (
        UPDATE pgjobs.workers w SET status = 'dead'
        WHERE w.id IN (
            SELECT w2.id FROM pgjobs.workers w2
            WHERE w2.status IN ('running', 'stopping')
              AND w2.heartbeat_at < now() - make_interval(secs => w2.heart_rate * grace_multiplier)
            LIMIT batch_size
            FOR UPDATE SKIP LOCKED)
        RETURNING w.id
    )
    SELECT count(*) INTO n_dead FROM gone;

    -- Reset the runs of dead or stopped workers, and killed runs that no live registered worker
    -- will stop (their holder is not a worker row, e.g. a client of the SQL API).
    SELECT count(*) INTO n_reset
    FROM (SELECT coalesce(array_agg(o.id), '{}') AS ids, coalesce(array_agg(o.attempts), '{}') AS attempts
          FROM (SELECT j.id, j.attempts
                FROM pgjobs.jobs j
                LEFT JOIN pgjobs.workers w ON w.id = j.worker_id
                WHERE j.status IN ('active', 'aborting') AND j.expires_at IS NULL
                  AND (w.status IN ('dead', 'stopped') OR (j.status = 'aborting' AND w.id IS NULL))
                LIMIT batch_size) o) AS orphans,
         pgjobs._end_runs(orphans.ids, orphans.attempts, 'worker %s died while running this job');

    -- 3. Retention: history partitions kept up, workers gone for a week forgotten.
    n_deleted := pgjobs._history_upkeep(batch_size);
    WITH gone AS (
        DELETE FROM pgjobs.workers w
        WHERE w.id IN (SELECT w2.id FROM pgjobs.workers w2
                       WHERE w2.status IN ('stopped', 'dead') AND w2.heartbeat_at < now() - interval '7 days'
                       LIMIT batch_size)
        RETURNING w.id
    )
    SELECT count(*) INTO n_workers FROM gone;
    -- Tenants of fair queues that hold nothing the clock does not: weight 1 and a pass behind
    -- their queue's clock (or a queue no longer fair). Never waits for a claim moving one on.
    DELETE FROM pgjobs.queue_tenants t
    WHERE (t.queue, t.tenant) IN (
        SELECT t2.queue, t2.tenant FROM pgjobs.queue_tenants t2
        LEFT JOIN pgjobs.queue_settings s ON s.queue = t2.queue
        WHERE t2.weight = 1 AND (s.fair IS NOT TRUE OR t2.pass <= s.fair_clock)
        LIMIT batch_size
        FOR UPDATE OF t2 SKIP LOCKED);

    RETURN QUERY SELECT n_killed, n_dead, n_reset, n_deleted, n_workers;
END;
$$;

-- History upkeep, part of each reaper pass.
-- 1. Finished jobs leave the hot table: moved to pgjobs.jobs_done by the time their ttl runs out
--    (or deleted, ttl -1), batch_size * 5 at a time until none is left or two seconds pass. A
--    DELETE and an INSERT, so a claim or an update racing with the move sees the row gone, never
--    "moved to another partition".
-- 2. Day partitions of jobs_done (UTC) for today and the next `ahead` days are made; a day that
--    has passed is dropped whole, so retention never deletes row by row in bulk.
-- 3. Expired jobs in jobs_done_other (a ttl beyond the days made so far, until their day is made;
--    rows moved there by hand) are deleted, batch_size a pass.
-- Returns the number of jobs removed (a dropped day counts its rows as last analysed, or counted
-- when never). `at` stands for now() in tests.
CREATE OR REPLACE FUNCTION pgjobs._history_upkeep(batch_size integer, ahead integer DEFAULT 7, at timestamptz DEFAULT now())
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    today timestamptz := date_trunc('day', at, 'UTC');
    day timestamptz;
    part text;
    n integer := 0;
    moved integer;
    gone integer;
    rows bigint;
    waited text := current_setting('lock_timeout');
BEGIN
    LOOP
        WITH finished AS (
            DELETE FROM pgjobs.jobs_live l
            WHERE l.ctid = ANY (ARRAY(SELECT x.ctid FROM pgjobs.jobs_live x
                                      WHERE x.status IN ('complete', 'failed', 'aborted')
                                      ORDER BY x.completed_at LIMIT batch_size * 5))
              AND l.status IN ('complete', 'failed', 'aborted')
            RETURNING l.*
        ), kept AS (
            -- Named columns: what a finished job keeps (no group slot, no dependencies to follow).
            INSERT INTO pgjobs.jobs_done (id, queue, task, args, status, priority, group_key, key, attempts,
                                          max_attempts, scheduled_at, timeout, heartbeat, retry_delay,
                                          retry_backoff, ttl, progress, meta, result, error, worker_id, enqueued_at,
                                          started_at, touched_at, completed_at, abort_reason, enqueued_by, tenant,
                                          expires_at)
            OVERRIDING SYSTEM VALUE
            SELECT f.id, f.queue, f.task, f.args, f.status, f.priority, f.group_key, f.key, f.attempts,
                   f.max_attempts, f.scheduled_at, f.timeout, f.heartbeat, f.retry_delay, f.retry_backoff,
                   f.ttl, f.progress, f.meta, f.result, f.error, f.worker_id, f.enqueued_at, f.started_at,
                   f.touched_at, f.completed_at, f.abort_reason, f.enqueued_by, f.tenant,
                   CASE WHEN f.ttl = 0 THEN '9999-12-31 00:00:00+00'::timestamptz
                        ELSE coalesce(f.completed_at, now()) + make_interval(secs => f.ttl) END
            FROM finished f WHERE f.ttl <> -1
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM finished), (SELECT count(*) FROM finished) - (SELECT count(*) FROM kept)
        INTO moved, gone;
        n := n + gone;
        EXIT WHEN moved < batch_size * 5 OR clock_timestamp() > now() + interval '2 seconds';
    END LOOP;

    -- Past days: dropping one locks jobs_done for a moment, so never wait long for the lock
    -- (reads of history queue behind a waiting DROP); the next pass tries again.
    FOR part, rows IN
        SELECT c.relname, CASE WHEN c.reltuples >= 0 THEN c.reltuples::bigint END
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'pgjobs.jobs_done'::regclass AND c.relname ~ '^jobs_done_[0-9]{8}$'
          AND to_timestamp(substr(c.relname, 11), 'YYYYMMDD')::date + 1 <= (today AT TIME ZONE 'UTC')::date
        ORDER BY c.relname
    LOOP
        IF rows IS NULL THEN
            EXECUTE format('SELECT count(*) FROM pgjobs.%I', part) INTO rows;
        END IF;
        BEGIN
            PERFORM set_config('lock_timeout', '50ms', true);
            EXECUTE format('DROP TABLE pgjobs.%I', part);
            n := n + rows;
        EXCEPTION WHEN lock_not_available THEN
            NULL;
        END;
        PERFORM set_config('lock_timeout', waited, true);
    END LOOP;

    -- Days ahead: made as plain tables, filled with the rows of that day waiting in
    -- jobs_done_other, then attached. The attach holds jobs_done exclusively, for the moment it
    -- takes: under ATTACH's own lock a statement could plan beside it, blind to the new day, and
    -- keep that plan while the day fills (a prepared count of history stayed at 0). Never wait long
    -- for that lock; the next pass tries the day again. Two passes at once (reap() beside a
    -- leader's reap_as) may both find a day missing: the second waits for the first to commit,
    -- and its CREATE fails or finds the day made; that day is left to the first.
    FOR i IN 0 .. ahead LOOP
        day := today + make_interval(days => i);
        part := 'jobs_done_' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD');
        CONTINUE WHEN to_regclass('pgjobs.' || part) IS NOT NULL;
        BEGIN
            EXECUTE format('CREATE TABLE pgjobs.%I (LIKE pgjobs.jobs_done INCLUDING DEFAULTS INCLUDING CONSTRAINTS)',
                           part);
            PERFORM set_config('lock_timeout', '50ms', true);
            LOCK TABLE pgjobs.jobs_done IN ACCESS EXCLUSIVE MODE;
            PERFORM set_config('lock_timeout', waited, true);
            EXECUTE format('WITH moved AS (DELETE FROM pgjobs.jobs_done_other o WHERE o.expires_at >= %L '
                           'AND o.expires_at < %L RETURNING o.*) INSERT INTO pgjobs.%I SELECT * FROM moved',
                           day, day + interval '1 day', part);
            -- A matching constraint spares the attach a scan of the new table.
            EXECUTE format('ALTER TABLE pgjobs.%I ADD CONSTRAINT %I CHECK (expires_at IS NOT NULL '
                           'AND expires_at >= %L AND expires_at < %L)',
                           part, part || '_range_check', day, day + interval '1 day');
            EXECUTE format('ALTER TABLE pgjobs.jobs_done ATTACH PARTITION pgjobs.%I FOR VALUES FROM (%L) TO (%L)',
                           part, day, day + interval '1 day');
        EXCEPTION WHEN duplicate_table OR unique_violation OR lock_not_available THEN
            NULL;  -- undone with the rest, lock_timeout too: nothing half made is left
        END;
    END LOOP;

    WITH expired AS (
        DELETE FROM pgjobs.jobs_done_other o
        WHERE o.ctid = ANY (ARRAY(SELECT x.ctid FROM pgjobs.jobs_done_other x
                                  WHERE x.expires_at < now() LIMIT batch_size))
        RETURNING 1
    )
    SELECT n + count(*) INTO n FROM expired;
    RETURN n;
END;
$$;

-- One reaper pass by whoever holds the 'reaper' lease: take or renew it for lease_ttl seconds,
-- and do the pass in the same transaction only when holder holds it. A deposed leader that
-- wakes up gets leader = false and changes nothing. Returns one row: leader, then reap()'s counts
-- (all 0 when not the leader).
CREATE OR REPLACE FUNCTION pgjobs.reap_as(holder text, lease_ttl double precision, batch_size integer DEFAULT 1000,
                               grace_multiplier double precision DEFAULT 2.1)
RETURNS TABLE (leader boolean, killed integer, dead_workers integer, reset integer, deleted_jobs integer,
               deleted_workers integer)
LANGUAGE plpgsql AS $$
BEGIN
    -- Refused whether or not holder leads: a bad pass must not wait for the lease to show.
    PERFORM pgjobs._check_grace(reap_as.grace_multiplier);
    IF NOT pgjobs.lease_take('reaper', reap_as.holder, reap_as.lease_ttl) THEN
        RETURN QUERY SELECT false, 0, 0, 0, 0, 0;
        RETURN;
    END IF;
    RETURN QUERY SELECT true, r.* FROM pgjobs.reap(reap_as.batch_size, reap_as.grace_multiplier) r;
END;
$$;
