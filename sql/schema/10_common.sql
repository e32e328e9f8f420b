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

-- The least payload cap, 8 kB: a smaller pgjobs.max_payload counts as this. A payload no bigger
-- (most jobs') is under any cap, so enqueue, touch and complete do not read the setting for it:
-- reading it is a catalog query, which costs a one-job transaction tens of microseconds.
CREATE OR REPLACE FUNCTION pgjobs._cap_floor() RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT 8192
$$;

-- The payload cap, in bytes, on a job's args and meta, a result and the meta touch merges in: the
-- operator's pgjobs.max_payload of this database (ALTER DATABASE … SET), else of every database
-- (ALTER ROLE ALL SET), else 1 MiB; at least _cap_floor(). Read from pg_db_role_setting, which
-- only a database's owner or a superuser writes, not with current_setting(): that is the session's
-- value, which the client itself can SET (or pass in its startup options) to lift the cap for its
-- own jobs. pg_database is read only when a setting is found.
CREATE OR REPLACE FUNCTION pgjobs.max_payload() RETURNS bigint
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN greatest(coalesce((SELECT pg_size_bytes(nullif(substr(c.setting, 20), ''))
                              FROM pg_db_role_setting s, unnest(s.setconfig) AS c(setting)
                              WHERE s.setrole = 0 AND c.setting LIKE 'pgjobs.max\_payload=%'
                                AND (s.setdatabase = 0
                                     OR EXISTS (SELECT FROM pg_database d
                                                WHERE d.oid = s.setdatabase AND d.datname = current_database()))
                              ORDER BY s.setdatabase DESC LIMIT 1), 1048576),
                    pgjobs._cap_floor());
END;
$$;

-- A compressed document's size once decompressed: concatenating an empty document of the same kind
-- returns the other one decompressed.
CREATE OR REPLACE FUNCTION pgjobs._decompressed_size(doc jsonb) RETURNS integer
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN CASE WHEN jsonb_typeof(doc) = 'object' THEN pg_column_size('{}'::jsonb || doc)
                ELSE pg_column_size('[]'::jsonb || doc) END;
END;
$$;

-- The size of a JSON document, in bytes, as a cap measures it: uncompressed. pg_column_size alone
-- gives a compressed value's stored size, so a client enqueueing from a table of its own could
-- pass 20 MB of repetitive text as a few hundred kB. Small, as it is inlined into enqueue's checks.
CREATE OR REPLACE FUNCTION pgjobs._size(doc jsonb) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN pg_column_compression(doc) IS NULL THEN pg_column_size(doc) ELSE pgjobs._decompressed_size(doc) END
$$;

-- The problem of a document over the cap, as {field, message}.
CREATE OR REPLACE FUNCTION pgjobs._over_cap(field text, doc jsonb, cap bigint) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN ARRAY[field, format('is %s bytes, over the cap of %s (pgjobs.max_payload)', pgjobs._size(doc), cap)];
END;
$$;

-- What in a JSON document a mainstream decoder would refuse, as {field, message}; NULL when nothing
-- is. The limits (README, Limits) are what every mainstream decoder reads with its defaults:
-- - nesting: at most 64 arrays and objects deep. .NET's System.Text.Json stops past 64 by
--   default, Rust's serde_json past 127, orjson's dumps past 254, Python's json near 1000 (its
--   recursion limit: RecursionError), Jackson past 1000.
-- - a number: at most 308 characters as PostgreSQL keeps it, which writes out every digit (1e5000
--   is 5001 digits; 1e-5 is 0.00001). That keeps its value below 1e308, within a double's range,
--   past which orjson, Go and serde_json refuse it; far from Python's 4300-digit limit on integers
--   (ValueError) and Jackson's 1000-character limit on numbers. Every int64 fits, and every double
--   from about 1e-290 up with all its digits.
-- doc_text is doc::text. Called by _json_problem for a document that might break a limit. The
-- walk for nesting looks at level 64 only. The text is searched for a run of 20 digits (a longer
-- number has one, an int64 or a double's usual text does not; 154 would cost half as much again)
-- before the numbers are read one by one.
CREATE OR REPLACE FUNCTION pgjobs._json_limits(field text, doc jsonb, doc_text text) RETURNS text[]
LANGUAGE plpgsql STABLE AS $$
BEGIN
    IF pgjobs._size(doc) >= 520 AND doc @? 'strict $.**{64} ? (@.type() == "array" || @.type() == "object")' THEN
        RETURN ARRAY[field, 'nests arrays and objects more than 64 deep, past what JSON decoders read'];
    END IF;
    -- Two IFs: the first is a simple expression, cheap to evaluate; the second runs a query.
    IF octet_length(doc_text) > 308 AND doc_text ~ '[0-9]{20}' THEN
        IF EXISTS (SELECT FROM jsonb_path_query(doc, 'strict $.** ? (@.type() == "number")') AS n(v)
                   WHERE octet_length(n.v::text) > 308) THEN
            RETURN ARRAY[field, 'holds a number of more than 308 characters as stored (1e400 is 401 digits), past '
                                'what JSON decoders read: send it as a string'];
        END IF;
    END IF;
    RETURN NULL;
END;
$$;

-- The way in to _json_limits, for every document enqueue, touch and complete take. Inlined into
-- enqueue's checks, whose expression PL/pgSQL sets up again in every transaction: kept small, the
-- exact checks in a function of their own. doc_text: doc::text, computed once by the caller (an inlined argument is
-- computed at each of its uses). The usual job ends at its first test: text of at most 308
-- characters cannot hold a longer number, and text shorter than 130 characters or a document under
-- 520 bytes (each array takes 8) cannot nest 65 deep.
CREATE OR REPLACE FUNCTION pgjobs._json_problem(field text, doc jsonb, doc_text text) RETURNS text[]
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN doc_text IS NULL OR octet_length(doc_text) <= 308
             AND (octet_length(doc_text) < 130 OR pg_column_size(doc) < 520 AND pg_column_compression(doc) IS NULL)
            THEN NULL
        ELSE pgjobs._json_limits(field, doc, doc_text)
    END
$$;

-- The cap on an error text kept with a job: longer ones keep their head and tail.
CREATE OR REPLACE FUNCTION pgjobs._fit_error(error text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN length(error) <= 65536 THEN error
                ELSE left(error, 32000) || format(E'\n… [%s characters cut by pgjobs] …\n', length(error) - 64000)
                     || right(error, 32000) END
$$;

-- A result over the cap (pgjobs.max_payload(), read only for a result over its floor), or one a
-- JSON decoder would refuse (_json_problem), is replaced by a note that says so, with the start of
-- its text: the job still completes. Refusing it would fail the worker's whole batch of
-- completions, again at every try.
CREATE OR REPLACE FUNCTION pgjobs._fit_result(result jsonb) RETURNS jsonb
LANGUAGE sql STABLE AS $$
    SELECT CASE
        WHEN result IS NULL THEN NULL
        WHEN pgjobs._size(result) > pgjobs._cap_floor() AND pgjobs._size(result) > pgjobs.max_payload()
            THEN jsonb_build_object('pgjobs_truncated', true, 'bytes', pgjobs._size(result),
                                    'start', left(result::text, 1000))
        WHEN pgjobs._json_problem('result', result, result::text) IS NULL THEN result
        ELSE jsonb_build_object('pgjobs_truncated', true, 'bytes', pgjobs._size(result), 'start', left(result::text, 1000),
                                'reason', (pgjobs._json_problem('result', result, result::text))[2])
    END
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

-- NOTIFY, unless the server's NOTIFY queue is nine tenths full: a listener sitting in an open
-- transaction holds the queue back, and once it is full pg_notify fails the statement that
-- calls it (an enqueue, a completion). Every pgjobs notification is a hint (workers poll, waiters
-- read again), so one not sent delays something, never loses it. An expression, inlined.
CREATE OR REPLACE FUNCTION pgjobs._notify(channel text, payload text) RETURNS void
LANGUAGE sql AS $$
    SELECT CASE WHEN pg_notification_queue_usage() < 0.9 THEN pg_notify(channel, payload) END
$$;

-- Send ids, comma-separated, on a channel: at most 500 a notification, far below the
-- 8000-byte payload limit.
CREATE OR REPLACE FUNCTION pgjobs._notify_ids(channel text, ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pgjobs._notify(channel, string_agg(u.id::text, ','))
    FROM unnest(ids) WITH ORDINALITY AS u(id, n)
    GROUP BY (u.n - 1) / 500;
END;
$$;

-- Announce finished jobs on pgjobs.done (sent only while someone listens).
CREATE OR REPLACE FUNCTION pgjobs._announce_done(job_ids bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF job_ids IS NOT NULL AND pgjobs._heard('pgjobs.done') THEN
        PERFORM pgjobs._notify('pgjobs.done', string_agg(u.id::text, ','))
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
        PERFORM pgjobs._notify('pgjobs.events', string_agg(c.item, ','))
        FROM (SELECT n.id || ':' || n.status AS item, (row_number() OVER () - 1) / 300 AS batch
              FROM new_rows n) c
        GROUP BY c.batch;
    ELSE
        PERFORM pgjobs._notify('pgjobs.events', string_agg(c.item, ','))
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
    PERFORM pgjobs._notify('pgjobs.events', string_agg(u.id || ':' || status, ','))
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
