-- Queues: their settings (enforced by dequeue, in 30_claim) and what they hold.

-- Every queue that has jobs in the hot table or settings: its settings (defaults where it has
-- none), jobs due, scheduled for later and running, and how long the oldest due job has waited.
CREATE OR REPLACE VIEW pgjobs.queues AS
SELECT q.queue,
       coalesce(s.paused, false) AS paused,
       coalesce(s.rate_limit, 0) AS rate_limit,
       coalesce(s.rate_period, 0) AS rate_period,
       coalesce(s.max_active, 0) AS max_active,
       coalesce(s.group_rate_limit, 0) AS group_rate_limit,
       coalesce(s.group_rate_period, 0) AS group_rate_period,
       coalesce(s.group_max_active, 1) AS group_max_active,
       coalesce(c.queued, 0) AS queued,
       coalesce(c.scheduled, 0) AS scheduled,
       coalesce(c.waiting, 0) AS waiting,
       coalesce(c.active, 0) AS active,
       extract(epoch FROM now() - c.oldest_due)::double precision AS oldest_queued_seconds,
       s.updated_at,
       coalesce(s.fair, false) AS fair,
       coalesce(s.max_queued, 0) AS max_queued
FROM (SELECT s.queue FROM pgjobs.queue_settings s
      UNION
      SELECT DISTINCT j.queue FROM pgjobs.jobs_live j WHERE j.status IN ('waiting', 'queued', 'active', 'aborting')) q
LEFT JOIN pgjobs.queue_settings s ON s.queue = q.queue
LEFT JOIN (
    SELECT j.queue,
           count(*) FILTER (WHERE j.status = 'queued' AND j.scheduled_at <= now()) AS queued,
           count(*) FILTER (WHERE j.status = 'queued' AND j.scheduled_at > now()) AS scheduled,
           count(*) FILTER (WHERE j.status = 'waiting') AS waiting,
           count(*) FILTER (WHERE j.status IN ('active', 'aborting')) AS active,
           min(j.scheduled_at) FILTER (WHERE j.status = 'queued' AND j.scheduled_at <= now()) AS oldest_due
    FROM pgjobs.jobs_live j
    WHERE j.status IN ('waiting', 'queued', 'active', 'aborting')
    GROUP BY j.queue
) c ON c.queue = q.queue;

-- Refuse a queue name that enqueue would refuse (22023): the settings of a queue no job can be in
-- would be a mistake kept for ever.
CREATE OR REPLACE FUNCTION pgjobs._check_queue_name(queue text) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF queue IS NULL OR length(queue) NOT BETWEEN 1 AND 48 OR queue ~ '[^A-Za-z0-9_.:-]' THEN
        PERFORM pgjobs._refuse('queue', format('must be 1 to 48 characters from A-Z a-z 0-9 _ . : -, got %L',
                                               left(queue, 300)));
    END IF;
END;
$$;

-- Change a queue's settings; NULL leaves one as it is. 0 lifts a limit (group_max_active 0: a
-- group's jobs run at once without limit; 1, the default, runs them one at a time). A rate needs
-- its period in seconds. fair: claims are shared between the tenants with due jobs in proportion
-- to their weights (set_tenant). max_queued: queued jobs at most, checked as jobs are enqueued
-- (_admit). Workers of the queue are woken: a resumed or loosened queue is claimed at once.
CREATE OR REPLACE FUNCTION pgjobs.set_queue(
    queue text,
    paused boolean DEFAULT NULL,
    rate_limit integer DEFAULT NULL,
    rate_period double precision DEFAULT NULL,
    max_active integer DEFAULT NULL,
    group_rate_limit integer DEFAULT NULL,
    group_rate_period double precision DEFAULT NULL,
    group_max_active integer DEFAULT NULL,
    fair boolean DEFAULT NULL,
    max_queued integer DEFAULT NULL
) RETURNS pgjobs.queues
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    s pgjobs.queue_settings;
    r pgjobs.queues;
BEGIN
    PERFORM pgjobs._check_queue_name(queue);
    IF rate_limit < 0 THEN
        PERFORM pgjobs._refuse('rate_limit', format('must be >= 0 (0: no limit), got %s', rate_limit));
    END IF;
    IF NOT (rate_period >= 0 AND rate_period < 'Infinity') THEN
        PERFORM pgjobs._refuse('rate_period', format('must be a finite number of seconds >= 0, got %s', rate_period));
    END IF;
    IF max_active < 0 THEN
        PERFORM pgjobs._refuse('max_active', format('must be >= 0 (0: no limit), got %s', max_active));
    END IF;
    IF group_rate_limit < 0 THEN
        PERFORM pgjobs._refuse('group_rate_limit', format('must be >= 0 (0: no limit), got %s', group_rate_limit));
    END IF;
    IF NOT (group_rate_period >= 0 AND group_rate_period < 'Infinity') THEN
        PERFORM pgjobs._refuse('group_rate_period',
                               format('must be a finite number of seconds >= 0, got %s', group_rate_period));
    END IF;
    IF max_queued < 0 THEN
        PERFORM pgjobs._refuse('max_queued', format('must be >= 0 (0: no limit), got %s', max_queued));
    END IF;
    IF group_max_active < 0 OR group_max_active > 10000 THEN
        PERFORM pgjobs._refuse('group_max_active',
                               format('must be between 0 (no limit) and 10000, got %s', group_max_active));
    END IF;
    INSERT INTO pgjobs.queue_settings AS t (queue) VALUES (queue) ON CONFLICT DO NOTHING;
    UPDATE pgjobs.queue_settings AS t
    SET paused = coalesce(set_queue.paused, t.paused),
        rate_limit = coalesce(set_queue.rate_limit, t.rate_limit),
        rate_period = coalesce(set_queue.rate_period, t.rate_period),
        max_active = coalesce(set_queue.max_active, t.max_active),
        group_rate_limit = coalesce(set_queue.group_rate_limit, t.group_rate_limit),
        group_rate_period = coalesce(set_queue.group_rate_period, t.group_rate_period),
        group_max_active = coalesce(set_queue.group_max_active, t.group_max_active),
        fair = coalesce(set_queue.fair, t.fair),
        max_queued = coalesce(set_queue.max_queued, t.max_queued),
        updated_at = now()
    WHERE t.queue = set_queue.queue
    RETURNING t.* INTO s;
    IF s.rate_limit > 0 AND s.rate_period = 0 THEN
        PERFORM pgjobs._refuse('rate_period', format('must be > 0 seconds with a rate_limit of %s', s.rate_limit));
    END IF;
    IF s.group_rate_limit > 0 AND s.group_rate_period = 0 THEN
        PERFORM pgjobs._refuse('group_rate_period',
                               format('must be > 0 seconds with a group_rate_limit of %s', s.group_rate_limit));
    END IF;
    -- A queue back to the defaults has no row: its claims skip the settings entirely.
    IF NOT s.paused AND s.rate_limit = 0 AND s.max_active = 0 AND s.group_rate_limit = 0 AND s.group_max_active = 1
       AND NOT s.fair AND s.max_queued = 0 THEN
        DELETE FROM pgjobs.queue_settings t WHERE t.queue = set_queue.queue;
        DELETE FROM pgjobs.queue_claims w WHERE w.queue = set_queue.queue;
    END IF;
    PERFORM pgjobs._notify(pgjobs._channel(queue), '');
    SELECT * INTO r FROM pgjobs.queues q WHERE q.queue = set_queue.queue;
    IF NOT FOUND THEN
        r.queue := queue;
        r.paused := false;
        r.rate_limit := 0; r.rate_period := 0; r.max_active := 0;
        r.group_rate_limit := 0; r.group_rate_period := 0; r.group_max_active := 1; r.fair := false; r.max_queued := 0;
        r.queued := 0; r.scheduled := 0; r.waiting := 0; r.active := 0;
    END IF;
    RETURN r;
END;
$$;

-- A tenant's weight on a fair queue (NULL: back to 1, the default): with due jobs, tenants share
-- the queue's claims in proportion to their weights. Takes effect at the next claim; the tenant's
-- pass (the virtual time its next job starts at) is kept. Returns the tenant's row.
CREATE OR REPLACE FUNCTION pgjobs.set_tenant(queue text, tenant text, weight double precision DEFAULT NULL)
RETURNS pgjobs.queue_tenants
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    r pgjobs.queue_tenants;
BEGIN
    PERFORM pgjobs._check_queue_name(queue);
    IF tenant IS NULL OR octet_length(tenant) > 1000 THEN
        PERFORM pgjobs._refuse('tenant', 'must be a tenant name of at most 1000 bytes ('''': the unnamed tenant)');
    END IF;
    IF NOT (coalesce(weight, 1) BETWEEN 0.001 AND 1000000) THEN
        PERFORM pgjobs._refuse('weight', format('must be between 0.001 and 1000000, got %s', weight));
    END IF;
    INSERT INTO pgjobs.queue_tenants AS t (queue, tenant, weight)
    VALUES (queue, tenant, coalesce(weight, 1))
    ON CONFLICT ON CONSTRAINT queue_tenants_pkey DO UPDATE SET weight = EXCLUDED.weight
    RETURNING t.* INTO r;
    RETURN r;
END;
$$;

-- The due time of a queue's oldest due job (NULL: none is due): one probe of the claim index per
-- priority that has queued jobs (a skip scan), where min() would read every queued job.
CREATE OR REPLACE FUNCTION pgjobs._oldest_due(queue text) RETURNS timestamptz
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE heads AS (
        (SELECT j.priority, j.scheduled_at FROM pgjobs.jobs_live j
         WHERE j.queue = _oldest_due.queue AND j.status = 'queued'
         ORDER BY j.priority, j.scheduled_at, j.id LIMIT 1)
        UNION ALL
        SELECT n.priority, n.scheduled_at
        FROM heads h
        CROSS JOIN LATERAL (SELECT j.priority, j.scheduled_at FROM pgjobs.jobs_live j
                            WHERE j.queue = _oldest_due.queue AND j.status = 'queued' AND j.priority > h.priority
                            ORDER BY j.priority, j.scheduled_at, j.id LIMIT 1) n
    )
    SELECT min(h.scheduled_at) FROM heads h WHERE h.scheduled_at <= now()
$$;

-- How hard producers press on queues (NULL: every queue with settings or unfinished jobs), cheap
-- enough to read before each enqueue: queued jobs (due or later; counted up to max_queued, or up to
-- 10,000 for a queue without one), max_queued (0: none), their ratio (NULL without a limit), and
-- how long the oldest due job has waited (NULL: none is due).
CREATE OR REPLACE FUNCTION pgjobs.queue_pressure(queues text[] DEFAULT NULL)
RETURNS TABLE (queue text, queued bigint, max_queued integer, pressure double precision, oldest_due_seconds double precision)
LANGUAGE sql STABLE AS $$
    SELECT q.name, d.n, coalesce(s.max_queued, 0),
           CASE WHEN s.max_queued > 0 THEN d.n::double precision / s.max_queued END,
           extract(epoch FROM now() - pgjobs._oldest_due(q.name))::double precision
    FROM (SELECT DISTINCT u.name FROM unnest(coalesce(queue_pressure.queues,
                                                      ARRAY(SELECT v.queue FROM pgjobs.queues v))) AS u(name)) q
    LEFT JOIN pgjobs.queue_settings s ON s.queue = q.name
    CROSS JOIN LATERAL (SELECT count(*) AS n FROM (SELECT FROM pgjobs.jobs_live j
                                                   WHERE j.queue = q.name AND j.status = 'queued'
                                                   LIMIT coalesce(nullif(s.max_queued, 0), 10000)) c) d
    ORDER BY q.name
$$;
