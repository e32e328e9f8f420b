-- 0012 lock keys, undone: the groups' advisory locks are unsalted again (sql/schema of the version
-- rolled back to).
DROP TABLE pgjobs.lock_keys;
