-- Shared helpers: errors, payload caps, channels, LISTEN bookkeeping, job events, expiry.
--
-- sql/schema holds the current text of every function, trigger and policy, by concern; `pgjobs
-- migrate` applies its files in name order after the numbered migrations, which keep tables,
-- types, indexes and data moves. A function whose text is not here any more is dropped.

-- Refuse a bad value with SQLSTATE 22023 and a message that names the field.
CREATE OR REPLACE FUNCTION pgjobs._refuse(field text, message text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'pgjobs: %: %', field, message USING ERRCODE = 'invalid_parameter_value';
END;
$$;

-- _refuse as an expression that is true or raises, for a condition of a statement.
CREATE OR REPLACE FUNCTION pgjobs._refused(field text, message text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgjobs._refuse(field, message);
    RETURN true;
END;
$$;

-- The payload cap, in PL/pgSQL, whose plans last the session: every complete_many reads it.
CREATE OR REPLACE FUNCTION pgjobs.max_payload() RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN coalesce(pg_size_bytes(nullif(current_setting('pgjobs.max_payload', true), '')), 1048576);
END;
$$;

-- The cap on an error text kept with a job: longer ones keep their head and tail.
CREATE OR REPLACE FUNCTION pgjobs._fit_error(error text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN length(error) <= 65536 THEN error
                ELSE left(error, 32000) || format(E'\n… [%s characters cut by pgjobs] …\n', length(error) - 64000)
                     || right(error, 32000) END
$$;

-- A result over the cap is replaced by a note that says so, with the start of its text.
CREATE OR REPLACE FUNCTION pgjobs._fit_result(result jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN result IS NULL OR pg_column_size(result) <= pgjobs.max_payload() THEN result
                ELSE jsonb_build_object('pgjobs_truncated', true, 'bytes', pg_column_size(result),
                                        'start', left(result::text, 1000)) END
$$;

-- Error texts are kept whatever their size: a huge traceback keeps its head and tail.
CREATE OR REPLACE FUNCTION pgjobs._fit_error_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.error := pgjobs._fit_error(NEW.error);
    RETURN NEW;
END;
$$;

-- The NOTIFY channel of a queue, for our own functions: inlined where queue_channel (which runs
-- with its owner's rights) would be a function call planned in every transaction.
CREATE OR REPLACE FUNCTION pgjobs._channel(queue text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'pgjobs.queue.' || queue
$$;

-- The NOTIFY channel that wakes the workers of one queue.
CREATE OR REPLACE FUNCTION pgjobs.queue_channel(queue text) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT 'pgjobs.queue.' || queue
$$;

-- Whether a live session listens on an announcement channel. PL/pgSQL keeps its plans for the
-- session; a SQL function here would be planned again in every transaction.
CREATE OR REPLACE FUNCTION pgjobs._heard(channel text) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
BEGIN
    -- Most of the time nobody listens: one probe of an empty index.
    IF NOT EXISTS (SELECT FROM pgjobs.listeners l WHERE l.channel = _heard.channel) THEN
        RETURN false;
    END IF;
    RETURN EXISTS (SELECT FROM pgjobs.listeners l, pg_stat_get_activity(l.pid) a WHERE l.channel = _heard.channel);
END;
$$;

-- LISTEN on pgjobs.done or pgjobs.events, and have them sent: they are sent only while a session
-- has called this (and has not ended or called unlisten).
CREATE OR REPLACE FUNCTION pgjobs.listen(channel text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF channel IS NULL OR channel NOT IN ('pgjobs.done', 'pgjobs.events') THEN
        PERFORM pgjobs._refuse('channel', format('must be pgjobs.done or pgjobs.events, got %L', channel));
    END IF;
    DELETE FROM pgjobs.listeners l WHERE NOT EXISTS (SELECT FROM pg_stat_get_activity(l.pid));
    INSERT INTO pgjobs.listeners (channel, pid) VALUES (listen.channel, pg_backend_pid())
    ON CONFLICT DO NOTHING;
    EXECUTE format('LISTEN %I', channel);
END;
$$;

-- Stop listening on pgjobs.done or pgjobs.events.
CREATE OR REPLACE FUNCTION pgjobs.unlisten(channel text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF channel IS NULL OR channel NOT IN ('pgjobs.done', 'pgjobs.events') THEN
        PERFORM pgjobs._refuse('channel', format('must be pgjobs.done or pgjobs.events, got %L', channel));
    END IF;
    DELETE FROM pgjobs.listeners l WHERE l.channel = unlisten.channel AND l.pid = pg_backend_pid();
    EXECUTE format('UNLISTEN %I', channel);
END;
$$;

-- Send ids, comma-separated, on a channel: at most 500 a notification, far below the
-- 8000-byte payload limit.
CREATE OR REPLACE FUNCTION pgjobs._notify_ids(channel text, ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify(channel, string_agg(u.id::text, ','))
    FROM unnest(ids) WITH ORDINALITY AS u(id, n)
    GROUP BY (u.n - 1) / 500;
END;
$$;

-- Announce finished jobs on pgjobs.done (sent only while someone listens).
CREATE OR REPLACE FUNCTION pgjobs._announce_done(job_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF job_ids IS NOT NULL AND pgjobs._heard('pgjobs.done') THEN
        PERFORM pg_notify('pgjobs.done', string_agg(u.id::text, ','))
        FROM unnest(job_ids) WITH ORDINALITY AS u(id, n)
        GROUP BY (u.n - 1) / 500;
    END IF;
END;
$$;

-- Job events on pgjobs.events: id:status of each new job and status change (sent only while
-- someone listens; pgjobs.events = off turns them off for a session).
CREATE OR REPLACE FUNCTION pgjobs._events_trigger() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('pgjobs.events', true), '') = 'off' OR NOT pgjobs._heard('pgjobs.events') THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('pgjobs.events', string_agg(c.item, ','))
        FROM (SELECT n.id || ':' || n.status AS item, (row_number() OVER () - 1) / 300 AS batch
              FROM new_rows n) c
        GROUP BY c.batch;
    ELSE
        PERFORM pg_notify('pgjobs.events', string_agg(c.item, ','))
        FROM (SELECT n.id || ':' || n.status AS item, (row_number() OVER () - 1) / 300 AS batch
              FROM new_rows n JOIN old_rows o ON o.id = n.id
              WHERE n.status IS DISTINCT FROM o.status) c
        GROUP BY c.batch;
    END IF;
    RETURN NULL;
END;
$$;

-- Announce jobs that took one status on pgjobs.events as the statement triggers of pgjobs.jobs do:
-- enqueue, dequeue and complete_many write to jobs_live, whose statements do not fire those triggers.
CREATE OR REPLACE FUNCTION pgjobs._announce_events(ids bigint[], status pgjobs.job_status)
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('pgjobs.events', true), '') = 'off' OR NOT pgjobs._heard('pgjobs.events') THEN
        RETURN;
    END IF;
    PERFORM pg_notify('pgjobs.events', string_agg(u.id || ':' || status, ','))
    FROM unnest(ids) WITH ORDINALITY AS u(id, n)
    GROUP BY (u.n - 1) / 300;
END;
$$;

-- Whether the session's role may act on a job that owner enqueued: its own, or it is a worker, an
-- admin or not a client at all. session_user, not current_user: public functions run as their owner.
CREATE OR REPLACE FUNCTION pgjobs._may_act(owner text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT owner = session_user
        OR NOT EXISTS (SELECT FROM pg_roles r
                       WHERE r.rolname = 'pgjobs_client' AND pg_has_role(session_user, r.oid, 'MEMBER'))
        OR EXISTS (SELECT FROM pg_roles r
                   WHERE r.rolname IN ('pgjobs_worker', 'pgjobs_admin') AND pg_has_role(session_user, r.oid, 'MEMBER'))
$$;

-- Seconds to wait before the next attempt, as SAQ defines it: a fixed delay, or with a backoff
-- the delay doubled per attempt, capped by retry_backoff, and drawn uniformly below that (jitter).
CREATE OR REPLACE FUNCTION pgjobs.retry_delay_for(attempts integer, retry_delay double precision, retry_backoff double precision)
RETURNS double precision
LANGUAGE sql VOLATILE AS $$
    SELECT CASE
        WHEN retry_backoff <= 0 THEN retry_delay
        ELSE random() * least(retry_delay * power(2, least(greatest(attempts - 1, 0), 60)), retry_backoff)
    END
$$;


CREATE OR REPLACE TRIGGER jobs_events_insert AFTER INSERT ON pgjobs.jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgjobs._events_trigger();

-- Rows that move to history in an UPDATE are in its transition tables too.
CREATE OR REPLACE TRIGGER jobs_events_update AFTER UPDATE ON pgjobs.jobs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pgjobs._events_trigger();

CREATE OR REPLACE TRIGGER jobs_fit_error BEFORE INSERT OR UPDATE OF error ON pgjobs.jobs
    FOR EACH ROW WHEN (length(NEW.error) > 65536) EXECUTE FUNCTION pgjobs._fit_error_trigger();
