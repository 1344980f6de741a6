-- A job's log (job_logs) and its nodes' progress.
--
-- job_logs_number: a line inserted for a job gets the job's next number (1, 2, 3...),
-- whatever seq the client sent. The numbering holds a transaction-scoped advisory lock
-- per job (class 7305040, the hash of the job id), so concurrent writers to one job
-- number their lines one after the other without touching the jobs row (which the
-- worker's heartbeat and the API's cancel lock). A job keeps at most 1000 lines
-- (ck_job_logs_seq_range says the same): line 1000 is replaced by a warning that the
-- log is full, and later lines are dropped (the INSERT affects no row), so a chatty
-- writer can never fail a job, nor grow its log without bound.
--
-- enable_seqscan = off: the last-line lookup must use the primary key whatever the
-- statistics say (see dataset_versions.sql).

CREATE OR REPLACE FUNCTION public.job_logs_number()
RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
DECLARE
    last_seq integer;
BEGIN
    PERFORM pg_advisory_xact_lock(7305040, hashtext(NEW.job_id::text));
    SELECT l.seq INTO last_seq
      FROM public.job_logs AS l
     WHERE l.job_id = NEW.job_id
     ORDER BY l.seq DESC
     LIMIT 1;
    NEW.seq := coalesce(last_seq, 0) + 1;
    IF NEW.seq > 1000 THEN
        RETURN NULL;
    END IF;
    IF NEW.seq = 1000 THEN
        NEW.level := 'warning';
        NEW.node_id := NULL;
        NEW.message := 'the log of this job is full (1000 lines): later lines are not kept';
    END IF;
    IF NEW.created_at IS NULL THEN
        NEW.created_at := clock_timestamp();
    END IF;
    RETURN NEW;
END;
$$;

-- job_logs_job_status: every change of a job's status is a line of its log, written
-- in the transaction that changes it, whoever changes it (the worker's claim and
-- finish, the API's cancel, the recovery of a lost worker, raw SQL). So a reader that
-- sees the new status in a snapshot sees its line too.

CREATE OR REPLACE FUNCTION public.job_logs_job_status()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    line text;
    lvl text := 'info';  -- a log_level label (the type is created with the table)
BEGIN
    CASE NEW.status
        WHEN 'running' THEN
            line := format('job claimed by a worker (attempt %s)', NEW.attempts);
        WHEN 'queued' THEN
            IF OLD.status = 'running' THEN
                lvl := 'warning';
                line := format(
                    'attempt %s ended without finishing (its worker stopped or was lost):'
                    ' the job waits in the queue again', OLD.attempts);
            ELSE
                line := 'job queued';
            END IF;
        WHEN 'completed' THEN
            line := 'job completed';
        WHEN 'failed' THEN
            lvl := 'error';
            line := 'job failed: ' || coalesce(NEW.error_message, 'no reason given');
        WHEN 'cancelled' THEN
            lvl := 'warning';
            line := 'job cancelled' || coalesce(': ' || NEW.error_message, '');
        ELSE
            line := 'job ' || NEW.status::text;
    END CASE;
    INSERT INTO public.job_logs (job_id, level, message) VALUES (NEW.id, CAST(lvl AS public.log_level), left(line, 2000));
    RETURN NULL;
END;
$$;

-- job_nodes_status_progress: when a node's status moves, its progress follows
-- (running starts at 0, success ends at 1, a reset to pending starts over; a failed
-- or skipped node keeps how far it got), its progress message is cleared, and the
-- change is a line of the job's log (a reset to pending is not: the job's own line
-- says why).

CREATE OR REPLACE FUNCTION public.job_nodes_status_progress()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    line text;
    lvl text := 'info';  -- a log_level label (the type is created with the table)
BEGIN
    NEW.progress_message := NULL;
    CASE NEW.status
        WHEN 'running' THEN
            NEW.progress := 0;
            line := format('node %s (%s) started', NEW.node_id, NEW.node_type);
        WHEN 'success' THEN
            NEW.progress := 1;
            line := format('node %s succeeded', NEW.node_id);
        WHEN 'failed' THEN
            lvl := 'error';
            line := format('node %s failed: %s', NEW.node_id,
                           coalesce(NEW.error_message, 'no reason given'));
        WHEN 'skipped' THEN
            lvl := 'warning';
            IF NEW.error_message LIKE 'skipped%' THEN
                line := format('node %s %s', NEW.node_id, NEW.error_message);
            ELSE
                line := format('node %s skipped: %s', NEW.node_id,
                               coalesce(NEW.error_message, 'no reason given'));
            END IF;
        ELSE
            NEW.progress := 0;
    END CASE;
    IF line IS NOT NULL THEN
        INSERT INTO public.job_logs (job_id, level, node_id, message)
        VALUES (NEW.job_id, CAST(lvl AS public.log_level), NEW.node_id, left(line, 2000));
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER job_logs_number
BEFORE INSERT ON job_logs
FOR EACH ROW
EXECUTE FUNCTION public.job_logs_number();

CREATE TRIGGER jobs_log_status
AFTER UPDATE OF status ON jobs
FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION public.job_logs_job_status();

CREATE TRIGGER job_nodes_status_progress
BEFORE UPDATE OF status ON job_nodes
FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION public.job_nodes_status_progress();
