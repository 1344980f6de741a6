-- The users columns that only triggers write: credit_balance (the ledger),
-- dataset_count, workflow_count, model_count (counters.sql) and storage_used_bytes
-- (storage.sql). A direct write fails with ML003 derived_column_read_only.
--
-- The trigger functions that maintain them update users from inside a trigger
-- (pg_trigger_depth() > 0); any statement issued by a client runs at depth 0.

CREATE OR REPLACE FUNCTION public.users_guard_derived()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_columns text[] := ARRAY[]::text[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.credit_balance <> 0 THEN v_columns := array_append(v_columns, 'credit_balance'); END IF;
        IF NEW.dataset_count <> 0 THEN v_columns := array_append(v_columns, 'dataset_count'); END IF;
        IF NEW.workflow_count <> 0 THEN v_columns := array_append(v_columns, 'workflow_count'); END IF;
        IF NEW.model_count <> 0 THEN v_columns := array_append(v_columns, 'model_count'); END IF;
        IF NEW.storage_used_bytes <> 0 THEN v_columns := array_append(v_columns, 'storage_used_bytes'); END IF;
    ELSE
        IF NEW.credit_balance IS DISTINCT FROM OLD.credit_balance THEN
            v_columns := array_append(v_columns, 'credit_balance'); END IF;
        IF NEW.dataset_count IS DISTINCT FROM OLD.dataset_count THEN
            v_columns := array_append(v_columns, 'dataset_count'); END IF;
        IF NEW.workflow_count IS DISTINCT FROM OLD.workflow_count THEN
            v_columns := array_append(v_columns, 'workflow_count'); END IF;
        IF NEW.model_count IS DISTINCT FROM OLD.model_count THEN
            v_columns := array_append(v_columns, 'model_count'); END IF;
        IF NEW.storage_used_bytes IS DISTINCT FROM OLD.storage_used_bytes THEN
            v_columns := array_append(v_columns, 'storage_used_bytes'); END IF;
    END IF;
    RAISE EXCEPTION 'users.% is maintained by the database and cannot be written directly',
        array_to_string(v_columns, ', users.')
        USING ERRCODE = 'ML003',
              HINT = 'credits move through credit_transactions; counters and storage follow their tables';
END;
$$;

CREATE TRIGGER users_guard_derived_insert
BEFORE INSERT ON users
FOR EACH ROW
WHEN (NEW.credit_balance <> 0 OR NEW.dataset_count <> 0 OR NEW.workflow_count <> 0
      OR NEW.model_count <> 0 OR NEW.storage_used_bytes <> 0)
EXECUTE FUNCTION public.users_guard_derived();

CREATE TRIGGER users_guard_derived_update
BEFORE UPDATE ON users
FOR EACH ROW
WHEN (pg_trigger_depth() = 0
      AND (OLD.credit_balance, OLD.dataset_count, OLD.workflow_count, OLD.model_count,
           OLD.storage_used_bytes)
          IS DISTINCT FROM
          (NEW.credit_balance, NEW.dataset_count, NEW.workflow_count, NEW.model_count,
           NEW.storage_used_bytes))
EXECUTE FUNCTION public.users_guard_derived();
