-- set_updated_at: every table with an updated_at column has it stamped on each
-- UPDATE that changes the row, whoever issues it (raw SQL included).
-- users is the exception that proves the rule: its trigger-maintained aggregates
-- (balance, counters, storage) change at trigger depth > 0 and do not count as an
-- edit of the account, so the ledger's hot path does not pay for this trigger.

CREATE OR REPLACE FUNCTION public.set_updated_at()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END;
$$;

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON users
FOR EACH ROW
WHEN (pg_trigger_depth() = 0 AND OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON datasets
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON dataset_versions
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON dataset_profiles
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON ingestion_jobs
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON workflows
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON jobs
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON job_nodes
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON models
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON credit_packages
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON experiments
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON tutorials
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON user_tutorial_progress
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();
