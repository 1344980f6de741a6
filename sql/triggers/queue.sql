-- The work queue's wake-up call. A job that becomes queued, or an ingestion job
-- that becomes pending, notifies channel automl_queue with the table's name; the
-- workers LISTEN on it instead of polling. NOTIFY is delivered at commit, so a
-- worker never wakes for work it cannot see yet, and a rolled-back enqueue (a
-- refused charge) wakes nobody. Identical notifications in one transaction are
-- folded into one. Row-level with WHEN: other updates (heartbeats) never call it.

CREATE OR REPLACE FUNCTION public.queue_notify()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM pg_notify('automl_queue', TG_TABLE_NAME);
    RETURN NULL;
END;
$$;

CREATE TRIGGER jobs_queue_notify
AFTER INSERT OR UPDATE OF status ON jobs
FOR EACH ROW WHEN (NEW.status = 'queued')
EXECUTE FUNCTION public.queue_notify();

CREATE TRIGGER ingestion_jobs_queue_notify
AFTER INSERT OR UPDATE OF status ON ingestion_jobs
FOR EACH ROW WHEN (NEW.status = 'pending')
EXECUTE FUNCTION public.queue_notify();
