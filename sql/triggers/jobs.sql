-- The life of queued work, kept by the database: a status may only move along the
-- arrows below, whoever writes it (the API, a worker, raw SQL). Anything else is
-- refused with SQLSTATE ML010 (database.errors.InvalidStatusTransition; 409 in the
-- API). An UPDATE that leaves the status as it is never calls these functions
-- (the WHEN clauses), and INSERT is free: a row may be written in any status
-- (tests and imports write finished jobs).
--
-- jobs:        pending -> queued | cancelled
--              queued  -> running | cancelled
--              running -> completed | failed | cancelled
--              running -> queued     (released by a stopping worker, its lease
--                                     expired, or a transient error: retried)
--              completed, failed, cancelled: final
-- job_nodes:   pending -> running | skipped
--              running -> success | failed
--              any     -> pending    only while the job is queued again (the
--                                     reset of a requeued job's nodes)
--              success, failed, skipped: otherwise final
-- ingestion_jobs: pending    -> processing
--                 processing -> completed | failed
--                 processing -> pending  (released, lease expired, transient error)
--                 completed, failed: final

CREATE OR REPLACE FUNCTION public.jobs_status_transition()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF (OLD.status, NEW.status) IN (
        ('pending', 'queued'), ('pending', 'cancelled'),
        ('queued', 'running'), ('queued', 'cancelled'),
        ('running', 'completed'), ('running', 'failed'), ('running', 'cancelled'),
        ('running', 'queued')
    ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'job % may not go from % to %', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'ML010',
              DETAIL = format('table=jobs from=%s to=%s', OLD.status, NEW.status);
END;
$$;

CREATE OR REPLACE FUNCTION public.job_nodes_status_transition()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF (OLD.status, NEW.status) IN (
        ('pending', 'running'), ('pending', 'skipped'),
        ('running', 'success'), ('running', 'failed')
    ) THEN
        RETURN NEW;
    END IF;
    IF NEW.status = 'pending'
       AND EXISTS (SELECT 1 FROM public.jobs AS j WHERE j.id = NEW.job_id AND j.status = 'queued')
    THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'node % of job % may not go from % to %',
            OLD.node_id, OLD.job_id, OLD.status, NEW.status
        USING ERRCODE = 'ML010',
              DETAIL = format('table=job_nodes from=%s to=%s', OLD.status, NEW.status);
END;
$$;

CREATE OR REPLACE FUNCTION public.ingestion_jobs_status_transition()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF (OLD.status, NEW.status) IN (
        ('pending', 'processing'),
        ('processing', 'completed'), ('processing', 'failed'), ('processing', 'pending')
    ) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'ingestion job % may not go from % to %', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'ML010',
              DETAIL = format('table=ingestion_jobs from=%s to=%s', OLD.status, NEW.status);
END;
$$;

CREATE TRIGGER jobs_status_transition
BEFORE UPDATE OF status ON jobs
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION public.jobs_status_transition();

CREATE TRIGGER job_nodes_status_transition
BEFORE UPDATE OF status ON job_nodes
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION public.job_nodes_status_transition();

CREATE TRIGGER ingestion_jobs_status_transition
BEFORE UPDATE OF status ON ingestion_jobs
FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION public.ingestion_jobs_status_transition();
