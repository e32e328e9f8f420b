-- 0006 leases: the reaper's leader holds a lease on the database clock, not a session advisory
-- lock. A lock lives as long as its session, and a frozen or cut-off host keeps its session (and
-- so the lock) for as long as the server believes in it: hours, with default TCP settings. A lease
-- runs out by itself, so another worker takes over within its ttl.

-- ---------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------
-- One row per leadership (today only 'reaper'). The holder is a worker id, NULL when the lease
-- is free; expires_at is renewed by every pass of the holder, in the transaction that does the
-- pass's work. Rows are never deleted: contenders lock the existing row (SKIP LOCKED) instead of
-- racing to insert one, which would make them wait for each other.
CREATE TABLE pgjobs.leases (
    name        text PRIMARY KEY,
    holder      text,
    acquired_at timestamptz,
    expires_at  timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO pgjobs.leases (name) VALUES ('reaper');

-- ---------------------------------------------------------------------------------------------
-- Functions
-- ---------------------------------------------------------------------------------------------

-- Take or renew a lease for ttl seconds (database clock). True when holder holds it afterwards:
-- it was free, expired, or already holder's. The row stays locked until the caller's transaction
-- ends, so work done in that transaction is done by the holder alone; a contender that finds the
-- row locked gets false at once instead of waiting.
CREATE FUNCTION pgjobs.lease_take(name text, holder text, ttl double precision)
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
    IF lease_take.ttl IS NULL OR NOT (lease_take.ttl > 0 AND lease_take.ttl <= 86400) THEN
        PERFORM pgjobs._refuse('ttl', format('must be more than 0 and at most 86400 seconds, got %s', lease_take.ttl));
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
CREATE FUNCTION pgjobs.lease_release(name text, holder text)
RETURNS boolean
LANGUAGE sql AS $$
    UPDATE pgjobs.leases x SET holder = NULL, acquired_at = NULL, expires_at = '-infinity'
    WHERE x.name = lease_release.name AND x.holder = lease_release.holder
    RETURNING true
$$;

-- One reaper pass by whoever holds the 'reaper' lease: take or renew it for lease_ttl seconds,
-- and do the pass in the same transaction only when holder holds it. A deposed leader that
-- wakes up gets leader = false and changes nothing. Returns one row: leader, then reap()'s counts
-- (all 0 when not the leader).
CREATE FUNCTION pgjobs.reap_as(holder text, lease_ttl double precision, batch_size integer DEFAULT 1000,
                               grace_multiplier double precision DEFAULT 2.1)
RETURNS TABLE (leader boolean, killed integer, dead_workers integer, reset integer, deleted_jobs integer,
               deleted_workers integer)
LANGUAGE plpgsql AS $$
BEGIN
    IF NOT pgjobs.lease_take('reaper', reap_as.holder, reap_as.lease_ttl) THEN
        RETURN QUERY SELECT false, 0, 0, 0, 0, 0;
        RETURN;
    END IF;
    RETURN QUERY SELECT true, r.* FROM pgjobs.reap(reap_as.batch_size, reap_as.grace_multiplier) r;
END;
$$;

SELECT pgjobs.harden();
