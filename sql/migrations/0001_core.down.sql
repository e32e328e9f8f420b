-- 0001 core, rolled back: everything the up migration created, in reverse order.
DROP FUNCTION pgjobs.cancel(bigint);
DROP FUNCTION pgjobs.release(text, bigint[]);
DROP FUNCTION pgjobs.fail(bigint, text, integer, boolean);
DROP FUNCTION pgjobs.complete(bigint, jsonb, integer);
DROP FUNCTION pgjobs.complete_many(bigint[], jsonb[], integer[]);
DROP FUNCTION pgjobs.dequeue(text, text[], integer);
DROP FUNCTION pgjobs.enqueue_many(jsonb);
DROP FUNCTION pgjobs.enqueue(text, jsonb, text, integer, timestamptz, text, text, integer,
                             double precision, double precision, double precision, double precision,
                             integer, jsonb);
DROP FUNCTION pgjobs.enqueue_job(text, jsonb, text, integer, timestamptz, text, text, integer,
                                 double precision, double precision, double precision, double precision,
                                 integer, jsonb);
DROP FUNCTION pgjobs._announce_done(bigint[]);
DROP FUNCTION pgjobs.retry_delay_for(integer, double precision, double precision);
DROP FUNCTION pgjobs._job_row(text, text, jsonb, text, integer, timestamptz, text, text, integer,
                              double precision, double precision, double precision, double precision,
                              integer, jsonb);
DROP FUNCTION pgjobs._refuse(text, text);
DROP FUNCTION pgjobs.queue_channel(text);
DROP TABLE pgjobs.jobs;
DROP TYPE pgjobs.job_status;
