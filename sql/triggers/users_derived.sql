-- The users columns that only triggers write: credit_balance (the ledger),
-- dataset_count, workflow_count, model_count (counters.sql) and storage_used_bytes
-- (storage.sql), and the next billing alert thresholds alert_* (billing.sql,
-- c16c00000001). A direct write fails with ML003 derived_column_read_only.
--
-- The trigger functions that maintain them update users from inside a trigger
-- (pg_trigger_depth() > 0); any statement issued by a client runs at depth 0.
--
-- One exception, logged: public.users_repair_derived (repair.sql) corrects a
-- counter or storage_used_bytes that drifted, under the transaction-local flag
-- automl.repair = 'on'. The guard lets such an UPDATE through only if it leaves
-- credit_balance alone, and writes one derived_repairs row per column it changes.
-- The flag grants nothing by itself: the application role has no UPDATE privilege
-- on these columns (automl-db grant), so only the schema owner, who could disable
-- the trigger anyway, can use it, and every use is in the log.

CREATE OR REPLACE FUNCTION public.users_guard_derived()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    v_columns text[] := ARRAY[]::text[];
BEGIN
    IF TG_OP = 'UPDATE'
       AND current_setting('automl.repair', true) = 'on'
       AND NEW.credit_balance = OLD.credit_balance THEN
        INSERT INTO public.derived_repairs (user_id, column_name, old_value, new_value)
        SELECT NEW.id, c.name, c.old_value, c.new_value
          FROM (VALUES ('dataset_count', OLD.dataset_count::bigint, NEW.dataset_count::bigint),
                       ('workflow_count', OLD.workflow_count::bigint, NEW.workflow_count::bigint),
                       ('model_count', OLD.model_count::bigint, NEW.model_count::bigint),
                       ('storage_used_bytes', OLD.storage_used_bytes, NEW.storage_used_bytes))
               AS c(name, old_value, new_value)
         WHERE c.old_value IS DISTINCT FROM c.new_value;
        RETURN NEW;
    END IF;
    IF TG_OP = 'INSERT' THEN
        IF NEW.credit_balance <> 0 THEN v_columns := array_append(v_columns, 'credit_balance'); END IF;
        IF NEW.dataset_count <> 0 THEN v_columns := array_append(v_columns, 'dataset_count'); END IF;
        IF NEW.workflow_count <> 0 THEN v_columns := array_append(v_columns, 'workflow_count'); END IF;
        IF NEW.model_count <> 0 THEN v_columns := array_append(v_columns, 'model_count'); END IF;
        IF NEW.storage_used_bytes <> 0 THEN v_columns := array_append(v_columns, 'storage_used_bytes'); END IF;
        IF num_nonnulls(NEW.alert_below, NEW.alert_rearm, NEW.alert_spend_above, NEW.alert_spend,
                        NEW.alert_spend_until) > 0 THEN
            v_columns := array_append(v_columns, 'alert_*'); END IF;
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
        -- The next billing alert thresholds (billing.sql's billing_alerts_sync).
        IF (NEW.alert_below, NEW.alert_rearm, NEW.alert_spend_above, NEW.alert_spend,
            NEW.alert_spend_until)
           IS DISTINCT FROM (OLD.alert_below, OLD.alert_rearm, OLD.alert_spend_above,
                             OLD.alert_spend, OLD.alert_spend_until) THEN
            v_columns := array_append(v_columns, 'alert_*'); END IF;
    END IF;
    IF cardinality(v_columns) = 0 THEN
        RETURN NEW;  -- an UPDATE that leaves the derived columns alone
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
      OR NEW.model_count <> 0 OR NEW.storage_used_bytes <> 0
      OR num_nonnulls(NEW.alert_below, NEW.alert_rearm, NEW.alert_spend_above,
                      NEW.alert_spend, NEW.alert_spend_until) > 0)
EXECUTE FUNCTION public.users_guard_derived();

-- The WHEN clause is only the depth test, and the function compares the columns:
-- PostgreSQL re-reads a trigger's WHEN expression from the catalog for every
-- statement, and the ledger's balance UPDATE (one statement per charge, at depth 1)
-- paid for parsing the column comparison without ever using it (docs/performance.md).
CREATE TRIGGER users_guard_derived_update
BEFORE UPDATE ON users
FOR EACH ROW
WHEN (pg_trigger_depth() = 0)
EXECUTE FUNCTION public.users_guard_derived();
