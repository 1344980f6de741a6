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
    -- The WHEN clauses below skip unchanged rows before the call, except on users,
    -- whose WHEN is only the depth test: the function checks too.
    IF NEW IS DISTINCT FROM OLD THEN
        NEW.updated_at := now();
    END IF;
    RETURN NEW;
END;
$$;

-- Only the depth test in the WHEN clause (the function compares the rows): the
-- ledger's balance UPDATE runs it at depth 1 for every charge, and PostgreSQL
-- re-reads a WHEN expression from the catalog for every statement, so a whole-row
-- comparison here cost each charge its parsing (docs/performance.md).
CREATE TRIGGER set_updated_at
BEFORE UPDATE ON users
FOR EACH ROW
WHEN (pg_trigger_depth() = 0)
EXECUTE FUNCTION public.set_updated_at();

-- datasets.last_version_number moves when a version is added (dataset_versions.sql):
-- like users' aggregates, that is not an edit of the dataset.
CREATE TRIGGER set_updated_at
BEFORE UPDATE ON datasets
FOR EACH ROW
WHEN (OLD.last_version_number IS NOT DISTINCT FROM NEW.last_version_number
      AND OLD.* IS DISTINCT FROM NEW.*)
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
