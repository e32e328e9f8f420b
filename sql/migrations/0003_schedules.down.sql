-- 0003 schedules, rolled back.
DROP FUNCTION pgjobs.backfill(text, timestamptz[], boolean, boolean);
DROP FUNCTION pgjobs.schedule_busy(text);
DROP FUNCTION pgjobs.schedule_fire(text, timestamptz[], timestamptz);
DROP FUNCTION pgjobs._schedule_job(pgjobs.schedules, timestamptz);
DROP FUNCTION pgjobs.schedule_enable(text, boolean);
DROP FUNCTION pgjobs.unschedule(text);
DROP FUNCTION pgjobs.schedule(text, text, jsonb, text, double precision, text, text, integer, text, jsonb,
                              boolean, pgjobs.missed_policy, double precision, integer, boolean);
DROP FUNCTION pgjobs.cron_check(text);
DROP FUNCTION pgjobs._cron_field(text, text, integer, integer, text[]);
DROP TABLE pgjobs.schedule_runs;
DROP TABLE pgjobs.schedules;
DROP TYPE pgjobs.missed_policy;
