-- Claim: dequeue.

-- A fair queue's shares for one claim of up to wanted jobs (start-time fair queuing, as stride
-- scheduling): each tenant with due jobs has a pass, the virtual time its next job starts at,
-- never behind the queue's clock (an idle tenant earns no credit); its k-th next job starts at
-- pass + k / weight. The wanted jobs of smallest start tags are claimed: a tenant gets them in
-- proportion to its weight among the tenants that have due jobs, and a tenant alone gets all.
-- Only the wanted tenants of smallest pass can hold one of those tags. One row per tenant with a
-- share: its quota, start and weight; the unnamed tenant (jobs without one) is ''. passed: tenants
-- to leave out (their jobs could not be claimed this time).
-- PL/pgSQL, not SQL: its plan is made once a session, where a SQL function's would be made again
-- at every claim (it cost more than the rest of the claim).
CREATE OR REPLACE FUNCTION pgjobs._fair_shares(fair_queue text, wanted integer, passed text[] DEFAULT '{}')
RETURNS TABLE (queue text, tenant text, quota integer, start double precision, weight double precision)
LANGUAGE plpgsql STABLE AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
    WITH RECURSIVE named AS (
        -- The tenants with queued jobs, one probe of the tenant index each (a skip scan).
        (SELECT j.tenant FROM pgjobs.jobs_live j
         WHERE j.queue = _fair_shares.fair_queue AND j.status = 'queued' AND j.tenant IS NOT NULL
         ORDER BY j.tenant LIMIT 1)
        UNION ALL
        SELECT (SELECT j.tenant FROM pgjobs.jobs_live j
                WHERE j.queue = _fair_shares.fair_queue AND j.status = 'queued' AND j.tenant > n.tenant
                ORDER BY j.tenant LIMIT 1)
        FROM named n WHERE n.tenant IS NOT NULL
    ), due AS (
        SELECT n.tenant, c.n
        FROM named n
        CROSS JOIN LATERAL (SELECT count(*)::integer AS n
                            FROM (SELECT FROM pgjobs.jobs_live j
                                  WHERE j.queue = _fair_shares.fair_queue AND j.tenant = n.tenant
                                    AND j.status = 'queued' AND j.scheduled_at <= now()
                                  LIMIT wanted) d) c
        WHERE n.tenant IS NOT NULL
        UNION ALL
        -- Jobs without a tenant (the unnamed tenant, ''): among the first 100 due jobs of the
        -- queue in claim order, so that a claim never reads the whole backlog for them.
        SELECT '', least((SELECT count(*) FROM (SELECT j.tenant FROM pgjobs.jobs_live j
                                                WHERE j.queue = _fair_shares.fair_queue AND j.status = 'queued'
                                                  AND j.scheduled_at <= now()
                                                ORDER BY j.priority, j.scheduled_at, j.id
                                                LIMIT 100) d
                          WHERE d.tenant IS NULL), wanted)::integer
    ), t AS (
        SELECT d.tenant, d.n, greatest(coalesce(w.pass, 0), s.fair_clock) AS start, coalesce(w.weight, 1) AS weight
        FROM due d
        JOIN pgjobs.queue_settings s ON s.queue = _fair_shares.fair_queue AND d.tenant <> ALL (passed)
        LEFT JOIN pgjobs.queue_tenants w ON w.queue = _fair_shares.fair_queue AND w.tenant = d.tenant
        WHERE d.n > 0
        ORDER BY 3, 1
        LIMIT wanted
    ), tags AS (
        SELECT t.tenant, t.start, t.weight
        FROM t CROSS JOIN LATERAL generate_series(0, t.n - 1) AS k
        ORDER BY t.start + k / t.weight, t.tenant
        LIMIT wanted
    )
    SELECT _fair_shares.fair_queue, tags.tenant, count(*)::integer, min(tags.start), min(tags.weight)
    FROM tags GROUP BY tags.tenant;
END;
$$;

-- After a claim on fair queues: each tenant's pass moves on by 1 / weight a job claimed, and each
-- queue's clock to the start tag of the last job claimed. rows: the jobs claimed; lane_*: the
-- shares they were claimed under (_fair_shares).
CREATE OR REPLACE FUNCTION pgjobs._fair_charge(
    rows pgjobs.jobs[], lane_queues text[], lane_tenants text[], lane_starts double precision[],
    lane_weights double precision[]
) RETURNS void
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    WITH n AS (
        SELECT l.queue, l.tenant, l.start, l.weight, count(*) AS claimed
        FROM unnest(rows) r
        JOIN unnest(lane_queues, lane_tenants, lane_starts, lane_weights) AS l(queue, tenant, start, weight)
            ON l.queue = r.queue AND l.tenant = coalesce(r.tenant, '')
        GROUP BY l.queue, l.tenant, l.start, l.weight
    ), passes AS (
        INSERT INTO pgjobs.queue_tenants AS w (queue, tenant, pass)
        SELECT n.queue, n.tenant, n.start + n.claimed / n.weight FROM n
        ON CONFLICT (queue, tenant) DO UPDATE SET pass = EXCLUDED.pass
    )
    UPDATE pgjobs.queue_settings s
    SET fair_clock = greatest(s.fair_clock, c.last)
    FROM (SELECT n.queue, max(n.start + (n.claimed - 1) / n.weight) AS last FROM n GROUP BY n.queue) c
    WHERE s.queue = c.queue;
END;
$$;

-- Claim due jobs (jobs without a group claimed by the statement that locks them), within the
-- settings of their queues (pgjobs.queue_settings: pause, rate limits, active jobs at most).
CREATE OR REPLACE FUNCTION pgjobs.dequeue(worker_id text, queues text[], max_jobs integer DEFAULT 1)
RETURNS SETOF pgjobs.jobs
LANGUAGE plpgsql
-- The plan made once serves every call: planning it again for each call (PostgreSQL's choice, as
-- the generic plan's estimates for LIMIT wanted are huge) cost more than running it, and those
-- estimates must not start JIT compilation either. A session makes that plan at its first call,
-- often on an empty queue, whose statistics favour scanning the whole table and sorting it:
-- without sequential scans the plan walks the indexes, right for any size (a plan made on an empty
-- table claimed 50 jobs of 20,000 in 23 ms instead of 2). Nor bitmap scans: counting a queue's
-- active jobs (max_active) read every entry of the active-jobs index left by runs since the last
-- vacuum, where an index scan marks the dead ones and skips them after (a drain with max_active
-- cost 1.6-1.8x one without).
-- No lock is waited for longer than lock_timeout: a claim refused for it is tried again later.
SET plan_cache_mode = force_generic_plan SET jit = off SET enable_seqscan = off SET enable_bitmapscan = off
SET lock_timeout = '5s' AS $$
#variable_conflict use_column
DECLARE
    wanted integer := max_jobs;
    -- Salts the groups' advisory locks: no login without it can compute a group's key and squat it.
    salt text;
    -- Per queue, in the order of queues: how many more this call may claim (NULL: no limit), and
    -- for each of its groups the active runs and the claims per window at most (0: no limit).
    caps integer[] := '{}';
    group_caps integer[] := '{}';
    group_rates integer[] := '{}';
    group_periods double precision[] := '{}';
    limited boolean := false;
    counted text[] := '{}';        -- queues whose claims feed their sliding window
    group_counted text[] := '{}';  -- queues whose groups' claims do
    s record;
    cap bigint;
    rows pgjobs.jobs[];
    grouped pgjobs.jobs[];
    locked integer;
    ids bigint[];
    id_queues text[];
    groups text[];
    owners text[];  -- the enqueuing role of each grouped candidate: a group is its client's
    claim_ids bigint[];
    claim_slots integer[];
    rounds integer := 0;
    claimed integer;
    -- Fair queues (see _fair_shares): their names, and per queue of the call whether it is one.
    fair_queues text[] := '{}';
    fairs boolean[] := '{}';
    -- Lanes of this round: per tenant of a fair queue with due jobs, how many of its jobs to claim,
    -- the virtual time its first one starts at, and its weight. The unnamed tenant's share goes
    -- through the queue's own scan (plain_caps).
    lane_queues text[];
    lane_tenants text[];
    lane_quotas integer[];
    lane_starts double precision[];
    lane_weights double precision[];
    plain_caps integer[];
    -- Tenants whose lane came up short in a round (their jobs locked, or their groups full): the
    -- next rounds give their share to the others.
    short_queues text[] := '{}';
    short_tenants text[] := '{}';
    shorted integer := 0;
BEGIN
    IF worker_id IS NULL OR worker_id = '' THEN
        PERFORM pgjobs._refuse('worker_id', 'must be a non-empty text');
    END IF;
    IF max_jobs IS NULL OR max_jobs < 0 THEN
        PERFORM pgjobs._refuse('max_jobs', format('must be >= 0, got %s', max_jobs));
    END IF;
    IF queues IS NULL THEN
        PERFORM pgjobs._refuse('queues', 'must be an array of queue names');
    END IF;
    -- Group exclusivity and the limits rely on each statement taking a fresh snapshot.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'pgjobs: dequeue must run at READ COMMITTED isolation, not %',
            current_setting('transaction_isolation') USING ERRCODE = 'invalid_transaction_state';
    END IF;
    -- Queues without settings pay one probe of an index for them.
    IF max_jobs > 0 AND EXISTS (SELECT FROM pgjobs.queue_settings q WHERE q.queue = ANY (dequeue.queues)) THEN
        limited := true;
        FOR s IN
            SELECT u.name, u.n, q.paused, q.rate_limit, q.rate_period, q.max_active, q.group_rate_limit,
                   q.group_rate_period, q.group_max_active, coalesce(q.fair, false) AS fair
            FROM unnest(dequeue.queues) WITH ORDINALITY AS u(name, n)
            LEFT JOIN pgjobs.queue_settings q ON q.queue = u.name
            ORDER BY u.name  -- queue locks taken in one order by every claimer
        LOOP
            cap := NULL;
            IF s.paused THEN
                cap := 0;
            ELSIF s.max_active > 0 OR s.rate_limit > 0 OR s.fair THEN
                -- Claimers of a limited or fair queue take turns: each counts what those before it
                -- committed, and a fair queue's tenants' passes are read and moved on by one at a time.
                -- On its settings row, which only pgjobs' own functions may lock (an advisory lock,
                -- any login could take and hold).
                PERFORM FROM pgjobs.queue_settings q WHERE q.queue = s.name FOR NO KEY UPDATE;
                cap := max_jobs;
                IF s.max_active > 0 THEN
                    cap := least(cap, s.max_active - (SELECT count(*) FROM pgjobs.jobs_live a
                                                      WHERE a.queue = s.name AND a.status IN ('active', 'aborting')));
                END IF;
                IF s.rate_limit > 0 THEN
                    DELETE FROM pgjobs.queue_claims w
                    WHERE w.queue = s.name AND w.group_key = '' AND w.enqueued_by = ''
                      AND w.claimed_at <= now() - make_interval(secs => s.rate_period);
                    cap := least(cap, s.rate_limit - (SELECT count(*) FROM pgjobs.queue_claims w
                                                      WHERE w.queue = s.name AND w.group_key = ''
                                                        AND w.enqueued_by = ''));
                    counted := counted || s.name;
                END IF;
                cap := greatest(cap, 0);
            END IF;
            IF s.group_rate_limit > 0 THEN
                DELETE FROM pgjobs.queue_claims w
                WHERE w.queue = s.name AND w.group_key <> ''
                  AND w.claimed_at <= now() - make_interval(secs => s.group_rate_period);
                group_counted := group_counted || s.name;
            END IF;
            caps[s.n] := cap;
            fairs[s.n] := s.fair AND NOT s.paused;
            IF s.fair AND NOT s.paused THEN
                fair_queues := fair_queues || s.name;
            END IF;
            group_caps[s.n] := coalesce(s.group_max_active, 1);
            group_rates[s.n] := coalesce(s.group_rate_limit, 0);
            group_periods[s.n] := coalesce(s.group_rate_period, 0);
        END LOOP;
    END IF;
    salt := coalesce((SELECT k.salt FROM pgjobs.lock_keys k LIMIT 1), '');
    WHILE wanted > 0 AND rounds < 4 LOOP
        rounds := rounds + 1;
        plain_caps := caps;
        IF cardinality(fair_queues) > 0 THEN
            -- Share what each fair queue may give this round between its tenants (_fair_shares).
            SELECT array_agg(f.queue), array_agg(f.tenant), array_agg(f.quota), array_agg(f.start), array_agg(f.weight)
            INTO lane_queues, lane_tenants, lane_quotas, lane_starts, lane_weights
            FROM unnest(dequeue.queues, caps) AS u(name, cap)
            CROSS JOIN LATERAL pgjobs._fair_shares(u.name, least(wanted, coalesce(u.cap, wanted)),
                                                   ARRAY(SELECT s.tenant FROM unnest(short_queues, short_tenants)
                                                             AS s(queue, tenant) WHERE s.queue = u.name)) AS f
            WHERE u.name = ANY (fair_queues);
            plain_caps := ARRAY(SELECT CASE WHEN u.name = ANY (fair_queues)
                                            THEN coalesce((SELECT l.quota FROM unnest(lane_queues, lane_tenants, lane_quotas)
                                                               AS l(queue, tenant, quota)
                                                           WHERE l.queue = u.name AND l.tenant = ''), 0)
                                            ELSE u.cap END
                                FROM unnest(dequeue.queues, caps) WITH ORDINALITY AS u(name, cap, n) ORDER BY u.n);
        END IF;
        -- 1. Lock candidates and claim those whose group has no limit at once. A candidate of a
        --    limited group also takes the group's transaction-scoped advisory lock (salted), so that
        --    concurrent claimers of one group serialise on it, and is claimed by the next statement.
        WITH c AS (
            -- One ordered index scan per queue (queue = ANY(...) would sort the whole backlog).
            SELECT l.* FROM unnest(dequeue.queues, plain_caps, group_caps, group_rates, group_periods, fairs)
                AS q(name, cap, gcap, grate, gperiod, fair)
            CROSS JOIN LATERAL (
                SELECT j.id, j.queue, j.priority, j.scheduled_at, j.enqueued_by,
                       CASE WHEN coalesce(q.gcap, 1) > 0 OR coalesce(q.grate, 0) > 0 THEN j.group_key END AS group_key
                FROM pgjobs.jobs j
                WHERE j.status = 'queued' AND j.expires_at IS NULL
                  AND j.queue = q.name
                  AND j.scheduled_at <= now()
                  AND (q.fair IS NOT TRUE OR j.tenant IS NULL)  -- a fair queue's named tenants: below
                  -- A candidate of a group: its group (a client's) has room, and it takes the group's
                  -- advisory lock (salted) so that claimers of one group serialise on it. Written out
                  -- here and in the fair lanes below: as a function it made grouped claims 2.3 times
                  -- as slow (a call per candidate).
                  AND (j.group_key IS NULL OR (
                       -- OFFSET 0: probe the group index per candidate; never hash every running job.
                       (coalesce(q.gcap, 1) = 0
                        OR (SELECT count(*) FROM (SELECT FROM pgjobs.jobs a
                                                  WHERE a.enqueued_by = j.enqueued_by AND a.group_key = j.group_key
                                                    AND a.status IN ('active', 'aborting')
                                                    AND a.expires_at IS NULL LIMIT coalesce(q.gcap, 1)) a)
                           < coalesce(q.gcap, 1))
                       AND (coalesce(q.grate, 0) = 0
                            OR (SELECT count(*) FROM pgjobs.queue_claims w
                                WHERE w.queue = q.name AND w.group_key = j.group_key AND w.enqueued_by = j.enqueued_by
                                  AND w.claimed_at > now() - make_interval(secs => q.gperiod)) < q.grate)
                       AND (coalesce(q.gcap, 1) = 0 AND coalesce(q.grate, 0) = 0
                            OR pg_try_advisory_xact_lock(1885957986,
                                                         hashtext(salt || j.enqueued_by || '/' || j.group_key)))))
                ORDER BY j.priority, j.scheduled_at, j.id
                LIMIT least(wanted, q.cap)
                FOR UPDATE OF j SKIP LOCKED
            ) l
            UNION ALL
            -- The named tenants of fair queues, each its share, through the index by tenant.
            SELECT l.* FROM unnest(lane_queues, lane_tenants, lane_quotas) AS f(name, tenant, quota)
            JOIN unnest(dequeue.queues, group_caps, group_rates, group_periods) AS q(name, gcap, grate, gperiod)
                ON q.name = f.name
            CROSS JOIN LATERAL (
                SELECT j.id, j.queue, j.priority, j.scheduled_at, j.enqueued_by,
                       CASE WHEN coalesce(q.gcap, 1) > 0 OR coalesce(q.grate, 0) > 0 THEN j.group_key END AS group_key
                FROM pgjobs.jobs j
                WHERE j.status = 'queued' AND j.expires_at IS NULL
                  AND j.queue = f.name AND j.tenant = f.tenant
                  AND j.scheduled_at <= now()
                  -- The group rule of the queue's own lane above.
                  AND (j.group_key IS NULL OR (
                       -- OFFSET 0: probe the group index per candidate; never hash every running job.
                       (coalesce(q.gcap, 1) = 0
                        OR (SELECT count(*) FROM (SELECT FROM pgjobs.jobs a
                                                  WHERE a.enqueued_by = j.enqueued_by AND a.group_key = j.group_key
                                                    AND a.status IN ('active', 'aborting')
                                                    AND a.expires_at IS NULL LIMIT coalesce(q.gcap, 1)) a)
                           < coalesce(q.gcap, 1))
                       AND (coalesce(q.grate, 0) = 0
                            OR (SELECT count(*) FROM pgjobs.queue_claims w
                                WHERE w.queue = q.name AND w.group_key = j.group_key AND w.enqueued_by = j.enqueued_by
                                  AND w.claimed_at > now() - make_interval(secs => q.gperiod)) < q.grate)
                       AND (coalesce(q.gcap, 1) = 0 AND coalesce(q.grate, 0) = 0
                            OR pg_try_advisory_xact_lock(1885957986,
                                                         hashtext(salt || j.enqueued_by || '/' || j.group_key)))))
                ORDER BY j.priority, j.scheduled_at, j.id
                LIMIT f.quota
                FOR UPDATE OF j SKIP LOCKED
            ) l
            WHERE f.tenant <> '' AND f.quota > 0
            ORDER BY priority, scheduled_at, id
            LIMIT wanted
        ), free AS (
            -- By id from an array: the one plan for every call must probe the primary key however
            -- many rows it guesses a claim takes (a join could hash the table).
            -- The hot partition itself, as complete_many does: through pgjobs.jobs, the statement
            -- trigger's transition tables would copy every row (claims are announced below).
            UPDATE pgjobs.jobs_live j
            SET status = 'active', attempts = j.attempts + 1, worker_id = dequeue.worker_id,
                started_at = now(), touched_at = now(), completed_at = NULL, group_slot = NULL
            WHERE j.id = ANY (ARRAY(SELECT c.id FROM c WHERE c.group_key IS NULL))
            RETURNING ROW(j.*)::pgjobs.jobs AS j
        )
        SELECT (SELECT array_agg(free.j) FROM free), count(*),
               array_agg(c.id ORDER BY c.priority, c.scheduled_at, c.id) FILTER (WHERE c.group_key IS NOT NULL),
               array_agg(c.queue ORDER BY c.priority, c.scheduled_at, c.id) FILTER (WHERE c.group_key IS NOT NULL),
               array_agg(c.group_key ORDER BY c.priority, c.scheduled_at, c.id) FILTER (WHERE c.group_key IS NOT NULL),
               array_agg(c.enqueued_by ORDER BY c.priority, c.scheduled_at, c.id) FILTER (WHERE c.group_key IS NOT NULL)
        INTO rows, locked, ids, id_queues, groups, owners
        FROM c;
        EXIT WHEN locked = 0 AND cardinality(fair_queues) = 0;
        grouped := NULL;
        -- 2. Claim the grouped ones, as many of each group as its room allows, each in a free slot.
        --    This statement's snapshot was taken after the group locks were held, so it sees every
        --    run claimed by a transaction that held the lock before us.
        IF ids IS NOT NULL AND NOT limited THEN
            -- Groups of queues without settings: one run of a group at a time, in slot 0.
            WITH c AS (
                SELECT u.id, u.group_key, u.enqueued_by,
                       row_number() OVER (PARTITION BY u.enqueued_by, u.group_key ORDER BY u.ord) AS nth
                FROM unnest(ids, groups, owners) WITH ORDINALITY AS u(id, group_key, enqueued_by, ord)
            ), free AS (
                SELECT c.id FROM c
                WHERE c.nth = 1
                  AND NOT EXISTS (SELECT FROM pgjobs.jobs a
                                  WHERE a.enqueued_by = c.enqueued_by AND a.group_key = c.group_key
                                    AND a.status IN ('active', 'aborting') AND a.expires_at IS NULL OFFSET 0)
            ), u AS (
                UPDATE pgjobs.jobs_live j
                SET status = 'active', attempts = j.attempts + 1, worker_id = dequeue.worker_id,
                    started_at = now(), touched_at = now(), completed_at = NULL, group_slot = 0
                WHERE j.id = ANY (ARRAY(SELECT free.id FROM free))
                RETURNING ROW(j.*)::pgjobs.jobs AS j
            )
            SELECT array_agg(u.j) INTO grouped FROM u;
        ELSIF ids IS NOT NULL THEN
            WITH c AS (
                SELECT u.id, u.queue, u.group_key, u.enqueued_by,
                       row_number() OVER (PARTITION BY u.enqueued_by, u.group_key ORDER BY u.ord) AS nth
                FROM unnest(ids, id_queues, groups, owners) WITH ORDINALITY AS u(id, queue, group_key, enqueued_by, ord)
            ), g AS (
                SELECT DISTINCT ON (c.enqueued_by, c.group_key) c.enqueued_by, c.group_key, c.queue,
                       coalesce(q.gcap, 1) AS gcap, coalesce(q.grate, 0) AS grate, q.gperiod
                FROM c
                LEFT JOIN unnest(dequeue.queues, group_caps, group_rates, group_periods)
                    AS q(name, gcap, grate, gperiod) ON q.name = c.queue
                ORDER BY c.enqueued_by, c.group_key, c.nth
            ), room AS (
                SELECT g.enqueued_by, g.group_key,
                       least(CASE WHEN g.gcap = 0 THEN 2147483647
                                  ELSE g.gcap - (SELECT count(*) FROM pgjobs.jobs a
                                                 WHERE a.enqueued_by = g.enqueued_by AND a.group_key = g.group_key
                                                   AND a.status IN ('active', 'aborting')
                                                   AND a.expires_at IS NULL OFFSET 0) END,
                             CASE WHEN g.grate = 0 THEN 2147483647
                                  ELSE g.grate - (SELECT count(*) FROM pgjobs.queue_claims w
                                                  WHERE w.queue = g.queue AND w.group_key = g.group_key
                                                    AND w.enqueued_by = g.enqueued_by
                                                    AND w.claimed_at > now() - make_interval(secs => g.gperiod)) END
                       ) AS n
                FROM g
            ), slots AS (
                SELECT g.enqueued_by, g.group_key, s.slot,
                       row_number() OVER (PARTITION BY g.enqueued_by, g.group_key ORDER BY s.slot) AS nth
                FROM g CROSS JOIN LATERAL generate_series(0, g.gcap - 1) AS s(slot)
                WHERE NOT EXISTS (SELECT FROM pgjobs.jobs a
                                  WHERE a.enqueued_by = g.enqueued_by AND a.group_key = g.group_key
                                    AND a.group_slot = s.slot
                                    AND a.status IN ('active', 'aborting') AND a.expires_at IS NULL)
            )
            SELECT array_agg(c.id), array_agg(s.slot)
            INTO claim_ids, claim_slots
            FROM c
            JOIN room r ON r.enqueued_by = c.enqueued_by AND r.group_key = c.group_key AND c.nth <= r.n
            LEFT JOIN slots s ON s.enqueued_by = c.enqueued_by AND s.group_key = c.group_key AND s.nth = c.nth;
            IF claim_ids IS NOT NULL THEN
                WITH u AS (
                    UPDATE pgjobs.jobs_live j
                    SET status = 'active', attempts = j.attempts + 1, worker_id = dequeue.worker_id,
                        started_at = now(), touched_at = now(), completed_at = NULL,
                        group_slot = claim_slots[array_position(claim_ids, j.id)]
                    WHERE j.id = ANY (claim_ids)
                    RETURNING ROW(j.*)::pgjobs.jobs AS j
                )
                SELECT array_agg(u.j) INTO grouped FROM u;
            END IF;
        END IF;
        RETURN QUERY SELECT * FROM unnest(rows);
        RETURN QUERY SELECT * FROM unnest(grouped);
        claimed := coalesce(cardinality(rows), 0) + coalesce(cardinality(grouped), 0);
        IF claimed > 0 THEN
            PERFORM pgjobs._announce_events(ARRAY(SELECT t.id FROM unnest(coalesce(rows, '{}') || grouped) AS t),
                                            'active');
        END IF;
        wanted := wanted - claimed;
        IF limited THEN
            rows := coalesce(rows, '{}') || coalesce(grouped, '{}');
            caps := ARRAY(SELECT u.cap - (SELECT count(*) FROM unnest(rows) t WHERE t.queue = u.name)
                          FROM unnest(dequeue.queues, caps) WITH ORDINALITY AS u(name, cap, n) ORDER BY u.n);
            -- Each claim of a rate-limited queue or group enters its sliding window now, where the
            -- next round's counts (and, after commit, other claimers') see it.
            INSERT INTO pgjobs.queue_claims (queue, group_key, enqueued_by, claimed_at)
            SELECT t.queue, '', '', now() FROM unnest(rows) t WHERE t.queue = ANY (counted)
            UNION ALL
            SELECT t.queue, t.group_key, t.enqueued_by, now() FROM unnest(rows) t
            WHERE t.queue = ANY (group_counted) AND t.group_key IS NOT NULL;
            IF cardinality(fair_queues) > 0 THEN
                IF claimed > 0 THEN
                    PERFORM pgjobs._fair_charge(rows, lane_queues, lane_tenants, lane_starts, lane_weights);
                END IF;
                SELECT short_queues || array_agg(l.queue), short_tenants || array_agg(l.tenant)
                INTO short_queues, short_tenants
                FROM unnest(lane_queues, lane_tenants, lane_quotas) AS l(queue, tenant, quota)
                WHERE l.quota > (SELECT count(*) FROM unnest(rows) r
                                 WHERE r.queue = l.queue AND coalesce(r.tenant, '') = l.tenant);
            END IF;
        END IF;
        -- Fewer rows locked than asked for: the queue holds no more due jobs for us. (With limits,
        -- each queue was asked for its own cap: go on while a round claims something.)
        EXIT WHEN CASE WHEN limited THEN claimed = 0 AND cardinality(short_queues) = shorted
                       ELSE locked < wanted + claimed END;
        shorted := cardinality(short_queues);
    END LOOP;
END;
$$;

-- A worker's round trip: record the results of its finished runs (done_*: as complete_many) and
-- claim its next jobs (as dequeue) in one transaction, so that a worker pays one round trip and
-- one commit where the two calls cost two. Returns first one row per completion that changed
-- nothing because the run was no longer current (claimed false, the other columns NULL), then one
-- per job claimed (claimed true, the columns a run needs; meta NULL when empty).
CREATE OR REPLACE FUNCTION pgjobs.complete_and_dequeue(
    worker_id text,
    queues text[],
    max_jobs integer,
    done_ids bigint[] DEFAULT '{}',
    done_results jsonb[] DEFAULT NULL,
    done_attempts integer[] DEFAULT NULL
) RETURNS TABLE (
    id bigint, claimed boolean, task text, args jsonb, attempts integer, max_attempts integer, queue text,
    priority integer, group_key text, key text, meta jsonb, scheduled_at timestamptz, enqueued_at timestamptz,
    started_at timestamptz, timeout double precision, heartbeat double precision, retry_delay double precision,
    retry_backoff double precision, ttl integer, progress double precision, error text, tenant text
)
LANGUAGE plpgsql
SET lock_timeout = '5s' AS $$
#variable_conflict use_column
DECLARE
    done bigint[];
BEGIN
    IF cardinality(done_ids) > 0 THEN
        done := ARRAY(SELECT pgjobs.complete_many(done_ids, done_results, done_attempts));
        RETURN QUERY
        SELECT u.id, false, NULL::text, NULL::jsonb, NULL::integer, NULL::integer, NULL::text, NULL::integer,
               NULL::text, NULL::text, NULL::jsonb, NULL::timestamptz, NULL::timestamptz, NULL::timestamptz,
               NULL::float8, NULL::float8, NULL::float8, NULL::float8, NULL::integer, NULL::float8, NULL::text,
               NULL::text
        FROM unnest(done_ids) AS u(id)
        WHERE u.id <> ALL (done);
    END IF;
    -- dequeue checks the arguments, max_jobs 0 included (then it claims nothing).
    RETURN QUERY
    SELECT d.id, true, d.task, d.args, d.attempts, d.max_attempts, d.queue, d.priority, d.group_key, d.key,
           nullif(d.meta, '{}'), d.scheduled_at, d.enqueued_at, d.started_at, d.timeout, d.heartbeat,
           d.retry_delay, d.retry_backoff, d.ttl, d.progress, d.error, d.tenant
    FROM pgjobs.dequeue(complete_and_dequeue.worker_id, complete_and_dequeue.queues,
                        complete_and_dequeue.max_jobs) AS d;
END;
$$;
