-- Schedules: cron checks, firing ticks, backfill.

-- Check one cron field: '*' or '?', or a list of items each N, N-M, */S, N/S or N-M/S, where N and
-- M are numbers in lo..hi or names (names[i] stands for lo + i - 1). Raises 22023 naming the field.
CREATE OR REPLACE FUNCTION pgjobs._cron_field(field text, what text, lo integer, hi integer, names text[] DEFAULT '{}')
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    item text;
    m text[];
    a integer;
    b integer;
    value text;
BEGIN
    FOREACH item IN ARRAY string_to_array(lower(field), ',') LOOP
        m := regexp_match(item, '^(\*|\?|[a-z0-9]+(?:-[a-z0-9]+)?)(?:/([0-9]+))?$');
        IF m IS NULL THEN
            PERFORM pgjobs._refuse('cron', format('%s field %L is not valid', what, field));
        END IF;
        IF m[2] IS NOT NULL AND m[2]::integer = 0 THEN
            PERFORM pgjobs._refuse('cron', format('%s field %L has a step of 0', what, field));
        END IF;
        IF m[1] IN ('*', '?') THEN
            CONTINUE;
        END IF;
        FOREACH value IN ARRAY string_to_array(m[1], '-') LOOP
            IF value ~ '^[0-9]+$' THEN
                b := value::integer;
            ELSE
                b := array_position(names, value) + lo - 1;
            END IF;
            IF b IS NULL OR b < lo OR b > hi THEN
                PERFORM pgjobs._refuse('cron', format('%s field %L: %s is not in %s-%s', what, field, value, lo, hi));
            END IF;
            IF a IS NOT NULL AND b < a THEN
                PERFORM pgjobs._refuse('cron', format('%s field %L: range %s goes backwards', what, field, m[1]));
            END IF;
            a := b;
        END LOOP;
        a := NULL;
    END LOOP;
END;
$$;

-- The values of a checked cron field, as croniter reads them: * and ? are lo-hi, N/S runs from N
-- to hi by S.
CREATE OR REPLACE FUNCTION pgjobs._cron_values(field text, lo integer, hi integer, names text[] DEFAULT '{}')
RETURNS SETOF integer
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    item text;
    m text[];
    a integer;
    b integer;
BEGIN
    FOREACH item IN ARRAY string_to_array(lower(field), ',') LOOP
        m := regexp_match(item, '^(\*|\?|[a-z0-9]+)(?:-([a-z0-9]+))?(?:/([0-9]+))?$');
        IF m[1] IN ('*', '?') THEN
            a := lo;
            b := hi;
        ELSE
            a := CASE WHEN m[1] ~ '^[0-9]+$' THEN m[1]::integer ELSE array_position(names, m[1]) + lo - 1 END;
            b := CASE WHEN m[2] IS NULL THEN CASE WHEN m[3] IS NULL THEN a ELSE hi END
                      WHEN m[2] ~ '^[0-9]+$' THEN m[2]::integer
                      ELSE array_position(names, m[2]) + lo - 1 END;
        END IF;
        RETURN QUERY SELECT generate_series(a, b, coalesce(m[3]::integer, 1));
    END LOOP;
END;
$$;

-- Check a cron expression: 5 fields (minute hour day-of-month month day-of-week), or 6 with
-- seconds last, or one of @yearly @annually @monthly @weekly @daily @midnight @hourly.
CREATE OR REPLACE FUNCTION pgjobs.cron_check(cron text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    f text[];
    first_day integer;
    longest integer;
BEGIN
    IF cron IS NULL THEN
        PERFORM pgjobs._refuse('cron', 'is NULL');
    END IF;
    IF lower(trim(cron)) IN ('@yearly', '@annually', '@monthly', '@weekly', '@daily', '@midnight', '@hourly') THEN
        RETURN;
    END IF;
    f := regexp_split_to_array(trim(cron), '\s+');
    IF cardinality(f) NOT IN (5, 6) THEN
        PERFORM pgjobs._refuse('cron', format('%L has %s fields; 5 are needed (6 with seconds last)', cron, cardinality(f)));
    END IF;
    PERFORM pgjobs._cron_field(f[1], 'minute', 0, 59);
    PERFORM pgjobs._cron_field(f[2], 'hour', 0, 23);
    PERFORM pgjobs._cron_field(f[3], 'day-of-month', 1, 31);
    PERFORM pgjobs._cron_field(f[4], 'month', 1, 12,
        '{jan,feb,mar,apr,may,jun,jul,aug,sep,oct,nov,dec}');
    PERFORM pgjobs._cron_field(f[5], 'day-of-week', 0, 7, '{sun,mon,tue,wed,thu,fri,sat}');
    IF cardinality(f) = 6 THEN
        PERFORM pgjobs._cron_field(f[6], 'second', 0, 59);
    END IF;
    -- A day that none of the months has (February 30, April 31) never comes, and the workers would
    -- find no next run. With a day of the week besides (not * or ?) it fires on those days.
    IF string_to_array(lower(f[5]), ',') && ARRAY['*', '?'] THEN
        SELECT min(d) INTO first_day FROM pgjobs._cron_values(f[3], 1, 31) d;
        SELECT max(CASE WHEN m = 2 THEN 29 WHEN m IN (4, 6, 9, 11) THEN 30 ELSE 31 END) INTO longest
        FROM pgjobs._cron_values(f[4], 1, 12, '{jan,feb,mar,apr,may,jun,jul,aug,sep,oct,nov,dec}') m;
        IF first_day > longest THEN
            PERFORM pgjobs._refuse('cron', format('%L never fires: none of its months has a day %s', cron, first_day));
        END IF;
    END IF;
END;
$$;

-- Enqueue the job of one tick of a schedule; its meta carries the schedule's name and the tick.
CREATE OR REPLACE FUNCTION pgjobs._schedule_job(s pgjobs.schedules, tick timestamptz) RETURNS bigint
LANGUAGE sql AS $$
    SELECT pgjobs.enqueue(s.task, s.args, s.queue, s.priority, now(), s.group_key, NULL,
        (s.job_options->>'max_attempts')::integer, (s.job_options->>'timeout')::double precision,
        (s.job_options->>'heartbeat')::double precision, (s.job_options->>'retry_delay')::double precision,
        (s.job_options->>'retry_backoff')::double precision, (s.job_options->>'ttl')::integer,
        coalesce(s.job_options->'meta', '{}')
            || jsonb_build_object('schedule', s.name, 'tick', to_jsonb(tick)),
        tenant => s.job_options->>'tenant')
$$;

-- Create or replace a schedule. Exactly one of cron and every (an interval in seconds). Job options (max_attempts,
-- timeout, heartbeat, retry_delay, retry_backoff, ttl, meta, tenant) go in job_options. A changed cron,
-- interval or time zone recomputes the next run; other changes keep it.
CREATE OR REPLACE FUNCTION pgjobs.schedule(
    name text,
    task text,
    args jsonb DEFAULT '{}',
    cron text DEFAULT NULL,
    every double precision DEFAULT NULL,
    timezone text DEFAULT 'UTC',
    queue text DEFAULT 'default',
    priority integer DEFAULT 0,
    group_key text DEFAULT NULL,
    job_options jsonb DEFAULT '{}',
    trigger_on_start boolean DEFAULT false,
    missed pgjobs.missed_policy DEFAULT 'skip',
    misfire_grace double precision DEFAULT 60,
    max_catchup integer DEFAULT 100,
    enabled boolean DEFAULT true
) RETURNS pgjobs.schedules
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    bad text;
    r pgjobs.schedules;
BEGIN
    IF schedule.name IS NULL OR schedule.name !~ '^[^[:cntrl:]]{1,200}$' THEN
        PERFORM pgjobs._refuse('name', 'must be 1 to 200 characters without control characters');
    END IF;
    IF (schedule.cron IS NULL) = (schedule.every IS NULL) THEN
        PERFORM pgjobs._refuse('cron', 'give exactly one of cron and every (an interval in seconds)');
    END IF;
    IF schedule.cron IS NOT NULL THEN
        PERFORM pgjobs.cron_check(schedule.cron);
    END IF;
    IF schedule.every IS NOT NULL AND NOT (schedule.every >= 0 AND schedule.every < 'Infinity') THEN
        PERFORM pgjobs._refuse('every', format('must be a number of seconds >= 0, got %s', schedule.every));
    END IF;
    IF schedule.timezone IS NULL OR NOT EXISTS (SELECT FROM pg_timezone_names t WHERE t.name = schedule.timezone) THEN
        PERFORM pgjobs._refuse('timezone', format('%L is not a known time zone', schedule.timezone));
    END IF;
    IF jsonb_typeof(coalesce(schedule.job_options, '{}')) <> 'object' THEN
        PERFORM pgjobs._refuse('job_options', 'must be a JSON object');
    END IF;
    SELECT k INTO bad FROM jsonb_object_keys(coalesce(schedule.job_options, '{}')) AS k
    WHERE k <> ALL (ARRAY['max_attempts', 'timeout', 'heartbeat', 'retry_delay', 'retry_backoff', 'ttl', 'meta',
                          'tenant'])
    LIMIT 1;
    IF bad IS NOT NULL THEN
        PERFORM pgjobs._refuse('job_options.' || bad, 'is not a job option');
    END IF;
    IF NOT (coalesce(schedule.misfire_grace, 60) >= 0) OR coalesce(schedule.max_catchup, 100) < 1 THEN
        PERFORM pgjobs._refuse('misfire_grace', 'misfire_grace must be >= 0 and max_catchup >= 1');
    END IF;
    -- The job a tick would enqueue must be valid too: check it now, before anything is stored.
    PERFORM pgjobs._job_row('', schedule.task, schedule.args, schedule.queue, schedule.priority, NULL,
        schedule.group_key, NULL, (schedule.job_options->>'max_attempts')::integer,
        (schedule.job_options->>'timeout')::double precision, (schedule.job_options->>'heartbeat')::double precision,
        (schedule.job_options->>'retry_delay')::double precision,
        (schedule.job_options->>'retry_backoff')::double precision, (schedule.job_options->>'ttl')::integer,
        schedule.job_options->'meta', schedule.job_options->>'tenant');

    INSERT INTO pgjobs.schedules AS s (name, task, args, cron, every, timezone, queue, priority, group_key,
        job_options, trigger_on_start, missed, misfire_grace, max_catchup, enabled)
    VALUES (schedule.name, schedule.task, coalesce(schedule.args, '{}'), schedule.cron, schedule.every,
        schedule.timezone, coalesce(schedule.queue, 'default'), coalesce(schedule.priority, 0), schedule.group_key,
        coalesce(schedule.job_options, '{}'), coalesce(schedule.trigger_on_start, false),
        coalesce(schedule.missed, 'skip'), coalesce(schedule.misfire_grace, 60), coalesce(schedule.max_catchup, 100),
        coalesce(schedule.enabled, true))
    ON CONFLICT (name) DO UPDATE SET
        task = EXCLUDED.task, args = EXCLUDED.args, cron = EXCLUDED.cron, every = EXCLUDED.every,
        timezone = EXCLUDED.timezone, queue = EXCLUDED.queue, priority = EXCLUDED.priority,
        group_key = EXCLUDED.group_key, job_options = EXCLUDED.job_options,
        trigger_on_start = EXCLUDED.trigger_on_start, missed = EXCLUDED.missed,
        misfire_grace = EXCLUDED.misfire_grace, max_catchup = EXCLUDED.max_catchup, enabled = EXCLUDED.enabled,
        next_run_at = CASE WHEN (s.cron, s.every, s.timezone)
                                IS NOT DISTINCT FROM (EXCLUDED.cron, EXCLUDED.every, EXCLUDED.timezone)
                           THEN s.next_run_at END,
        updated_at = now()
    RETURNING s.* INTO r;
    RETURN r;
END;
$$;

-- Remove a schedule (its tick records go with it; its jobs stay). True when it existed.
CREATE OR REPLACE FUNCTION pgjobs.unschedule(name text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM pgjobs.schedules s WHERE s.name = unschedule.name;
    RETURN FOUND;
END;
$$;

-- Pause (false) or resume (true) a schedule (refusing NULL).
CREATE OR REPLACE FUNCTION pgjobs.schedule_enable(name text, enabled boolean) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF schedule_enable.enabled IS NULL THEN
        PERFORM pgjobs._refuse('enabled', 'must be true or false');
    END IF;
    UPDATE pgjobs.schedules s
    SET enabled = schedule_enable.enabled, updated_at = now(),
        next_run_at = CASE WHEN schedule_enable.enabled AND NOT s.enabled THEN NULL ELSE s.next_run_at END
    WHERE s.name = schedule_enable.name;
    RETURN FOUND;
END;
$$;

-- Whether the latest run of a schedule is still queued or active (interval schedules wait for it).
CREATE OR REPLACE FUNCTION pgjobs.schedule_busy(name text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT coalesce((
        SELECT j.status IN ('waiting', 'queued', 'active', 'aborting')
        FROM pgjobs.schedule_runs r JOIN pgjobs.jobs j ON j.id = r.job_id
        WHERE r.schedule = schedule_busy.name
        ORDER BY r.tick DESC LIMIT 1), false)
$$;

-- A scheduler's pass: enabled schedules that are due or not planned yet (next_run_at NULL), at
-- most batch_size, locked until the caller's transaction ends (rows another pass holds are
-- skipped): pgjobs_worker may read the table, not lock it. Each comes with a digest of its
-- definition (every column but next_run_at, last_run_at, trigger_count and updated_at), whether
-- its last run is unfinished, and the database clock. parked maps names to the digests of rows
-- the scheduler could not plan (a cron that never fires, stored by hand): they are left out until
-- they change, and due rows come before unplanned ones, so that rows no one can plan never take
-- the places of the others.
CREATE OR REPLACE FUNCTION pgjobs.schedule_due(batch_size integer, parked jsonb DEFAULT '{}')
RETURNS TABLE (schedule pgjobs.schedules, definition text, busy boolean, now timestamptz)
LANGUAGE plpgsql AS $$
BEGIN
    IF schedule_due.batch_size IS NULL OR schedule_due.batch_size < 1 THEN
        PERFORM pgjobs._refuse('batch_size', format('must be at least 1, got %s', schedule_due.batch_size));
    END IF;
    IF jsonb_typeof(coalesce(schedule_due.parked, '{}')) <> 'object' THEN
        PERFORM pgjobs._refuse('parked', 'must be a JSON object of names and digests');
    END IF;
    RETURN QUERY
    SELECT s, d.digest, pgjobs.schedule_busy(s.name), now()
    FROM pgjobs.schedules s
    CROSS JOIN LATERAL (
        SELECT md5((to_jsonb(s) - '{next_run_at,last_run_at,trigger_count,updated_at}'::text[])::text) AS digest
    ) d
    WHERE s.enabled AND (s.next_run_at IS NULL OR s.next_run_at <= now())
      AND (schedule_due.parked->>s.name) IS DISTINCT FROM d.digest
    ORDER BY s.next_run_at NULLS LAST, s.name
    LIMIT schedule_due.batch_size
    FOR UPDATE OF s SKIP LOCKED;
END;
$$;

-- Fire ticks of a schedule (the scheduler calls this with the ticks croniter computed): each tick
-- not fired before gets one job; then next_run_at is stored. Returns the number of jobs enqueued.
CREATE OR REPLACE FUNCTION pgjobs.schedule_fire(name text, ticks timestamptz[], next_run_at timestamptz)
RETURNS integer
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s pgjobs.schedules;
    t timestamptz;
    n integer := 0;
BEGIN
    SELECT * INTO s FROM pgjobs.schedules x WHERE x.name = schedule_fire.name FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 0;
    END IF;
    FOREACH t IN ARRAY coalesce(schedule_fire.ticks, '{}') LOOP
        INSERT INTO pgjobs.schedule_runs (schedule, tick, job_id)
        VALUES (s.name, t, 0)
        ON CONFLICT DO NOTHING;
        IF FOUND THEN
            UPDATE pgjobs.schedule_runs r SET job_id = pgjobs._schedule_job(s, t)
            WHERE r.schedule = s.name AND r.tick = t;
            n := n + 1;
        END IF;
    END LOOP;
    UPDATE pgjobs.schedules x
    SET next_run_at = schedule_fire.next_run_at,
        last_run_at = CASE WHEN n > 0 THEN greatest(x.last_run_at, (SELECT max(u) FROM unnest(schedule_fire.ticks) u))
                           ELSE x.last_run_at END,
        trigger_count = x.trigger_count + n
    WHERE x.name = s.name;
    RETURN n;
END;
$$;

-- Backfill (refusing a NULL tick with 22023).
CREATE OR REPLACE FUNCTION pgjobs.backfill(name text, ticks timestamptz[], rerun_failed boolean DEFAULT false,
                                dry_run boolean DEFAULT false)
RETURNS TABLE (tick timestamptz, job_id bigint, action text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    s pgjobs.schedules;
    t timestamptz;
    existing bigint;
    existing_status pgjobs.job_status;
BEGIN
    SELECT * INTO s FROM pgjobs.schedules x WHERE x.name = backfill.name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'pgjobs: schedule: no schedule %', quote_literal(backfill.name) USING ERRCODE = 'no_data_found';
    END IF;
    IF array_position(backfill.ticks, NULL) IS NOT NULL THEN
        PERFORM pgjobs._refuse('ticks', 'must not hold NULL');
    END IF;
    FOREACH t IN ARRAY coalesce(backfill.ticks, '{}') LOOP
        SELECT r.job_id, j.status INTO existing, existing_status
        FROM pgjobs.schedule_runs r LEFT JOIN pgjobs.jobs j ON j.id = r.job_id
        WHERE r.schedule = s.name AND r.tick = t;
        IF existing IS NULL THEN
            IF dry_run THEN
                RETURN QUERY SELECT t, NULL::bigint, 'enqueued'::text;
                CONTINUE;
            END IF;
            INSERT INTO pgjobs.schedule_runs (schedule, tick, job_id) VALUES (s.name, t, 0) ON CONFLICT DO NOTHING;
            IF FOUND THEN
                existing := pgjobs._schedule_job(s, t);
                UPDATE pgjobs.schedule_runs r SET job_id = existing WHERE r.schedule = s.name AND r.tick = t;
                RETURN QUERY SELECT t, existing, 'enqueued'::text;
            ELSE  -- the scheduler fired it a moment ago
                RETURN QUERY SELECT t, (SELECT r.job_id FROM pgjobs.schedule_runs r
                                        WHERE r.schedule = s.name AND r.tick = t), 'skipped'::text;
            END IF;
        ELSIF rerun_failed AND existing_status = 'failed' THEN
            IF NOT dry_run THEN
                existing := pgjobs._schedule_job(s, t);
                UPDATE pgjobs.schedule_runs r SET job_id = existing, enqueued_at = now()
                WHERE r.schedule = s.name AND r.tick = t;
            END IF;
            RETURN QUERY SELECT t, existing, 'rerun'::text;
        ELSE
            RETURN QUERY SELECT t, existing, 'skipped'::text;
        END IF;
    END LOOP;
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
