-- Security: every function pinned and granted by harden(), which `pgjobs migrate` runs once the
-- files are applied; row security on jobs.

-- Pin every function's search_path (helpers inherit their caller's and are inlined), make the
-- API SECURITY DEFINER, and grant it: all to pgjobs_admin, all but the operator's verbs to
-- pgjobs_worker, enqueue/cancel/listen to pgjobs_client.
CREATE OR REPLACE FUNCTION pgjobs.harden() RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    f record;
    client_functions text[] := ARRAY['enqueue', 'enqueue_job', 'enqueue_many', 'cancel', 'queue_channel',
                                     'max_payload', 'worker_is_alive', 'listen', 'unlisten', 'has_job',
                                     'queue_pressure'];
    -- What an operator does by hand: changes to jobs and queues that no worker needs to make.
    admin_functions text[] := ARRAY['retry', 'retry_failed', 'retry_matching', 'cancel_matching', 'delete_job',
                                    'set_queue', 'set_tenant', 'schedule_run_now'];
    have_roles boolean := EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_client')
                          AND EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_worker');
    have_admin boolean := EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgjobs_admin');
BEGIN
    REVOKE ALL ON ALL FUNCTIONS IN SCHEMA pgjobs FROM PUBLIC;
    REVOKE ALL ON ALL TABLES IN SCHEMA pgjobs FROM PUBLIC;
    FOR f IN
        SELECT p.oid::regprocedure AS sig, p.proname AS name, p.prokind, p.prorettype AS rettype
        FROM pg_proc p WHERE p.pronamespace = 'pgjobs'::regnamespace
    LOOP
        IF f.prokind <> 'f' THEN
            CONTINUE;
        END IF;
        -- No object a caller creates (a table or function in another schema, a temporary one)
        -- can stand in for ours or for a built-in: every name is looked up in pg_catalog first.
        -- Helpers other than triggers are run only by our functions, whose pinned path they
        -- inherit: without a SET of their own, SQL ones are inlined and none pays for the switch.
        IF f.name LIKE '\_%' AND f.rettype <> 'trigger'::regtype THEN
            EXECUTE format('ALTER FUNCTION %s RESET search_path', f.sig);
        ELSE
            EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, pg_temp', f.sig);
        END IF;
        IF f.name NOT LIKE '\_%' AND f.name <> 'harden' THEN
            EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER', f.sig);
            IF have_admin THEN
                EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pgjobs_admin', f.sig);
            END IF;
            IF have_roles THEN
                IF f.name = ANY (admin_functions) THEN
                    EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM pgjobs_worker', f.sig);
                ELSE
                    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pgjobs_worker', f.sig);
                END IF;
                IF f.name = ANY (client_functions) THEN
                    EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO pgjobs_client', f.sig);
                END IF;
            END IF;
        END IF;
    END LOOP;
    IF have_roles THEN
        GRANT USAGE ON SCHEMA pgjobs TO pgjobs_client, pgjobs_worker;
        GRANT SELECT ON ALL TABLES IN SCHEMA pgjobs TO pgjobs_worker;
        GRANT SELECT ON pgjobs.jobs, pgjobs.migrations TO pgjobs_client;
        -- The salt of the groups' advisory locks stays the owner's (see dequeue).
        REVOKE ALL ON pgjobs.lock_keys FROM pgjobs_worker;
    END IF;
    IF have_admin THEN
        GRANT USAGE ON SCHEMA pgjobs TO pgjobs_admin;
        GRANT SELECT ON ALL TABLES IN SCHEMA pgjobs TO pgjobs_admin;
        REVOKE ALL ON pgjobs.lock_keys FROM pgjobs_admin;
    END IF;
END;
$$;

-- Owners and superusers are not bound by this; workers and admins read every job, clients their own.
DROP POLICY IF EXISTS jobs_read ON pgjobs.jobs;
CREATE POLICY jobs_read ON pgjobs.jobs FOR SELECT
    USING (enqueued_by = session_user
           OR EXISTS (SELECT FROM pg_roles r WHERE r.rolname IN ('pgjobs_worker', 'pgjobs_admin')
                                               AND pg_has_role(r.oid, 'MEMBER')));
