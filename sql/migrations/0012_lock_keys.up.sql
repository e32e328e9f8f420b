-- 0012 lock keys: a secret of this database's pgjobs that salts the advisory lock a claim takes for
-- a group. PostgreSQL checks no privilege on advisory locks, and an unsalted key (a hash of the
-- group's name) let any login squat a group's lock and keep its jobs from ever being claimed.
-- Only the owner reads it (harden() revokes it from pgjobs' roles).
CREATE TABLE pgjobs.lock_keys (
    salt text NOT NULL
);
INSERT INTO pgjobs.lock_keys (salt) VALUES (gen_random_uuid()::text || gen_random_uuid()::text);
