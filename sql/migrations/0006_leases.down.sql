-- 0006 leases, rolled back: the reaper's leader is again the holder of a session advisory lock.
DROP FUNCTION pgjobs.reap_as(text, double precision, integer, double precision);
DROP FUNCTION pgjobs.lease_release(text, text);
DROP FUNCTION pgjobs.lease_take(text, text, double precision);
DROP TABLE pgjobs.leases;
