-- Repair of the counters and storage_used_bytes (automl-db verify --repair).
--
-- users_repair_derived(user) locks the user's row, recomputes dataset_count,
-- workflow_count (workflows not soft-deleted), model_count and storage_used_bytes
-- (the bytes of dataset versions and of models) from their tables with the
-- triggers' own rules, and writes the columns that differ. The write goes through users_guard_derived (users_derived.sql), which
-- lets it pass only under the transaction-local flag automl.repair = 'on' and
-- logs every corrected column in derived_repairs. credit_balance is never
-- repaired: the ledger is the truth and is never rewritten, so a balance that
-- disagrees with it is reported (automl-db verify), not overwritten.
--
-- EXECUTE is revoked from PUBLIC (migration and automl-db grant): only the schema
-- owner runs it. Returns one row per column corrected: (column_name, old, new).

CREATE OR REPLACE FUNCTION public.users_repair_derived(p_user_id uuid)
RETURNS TABLE (column_name text, old_value bigint, new_value bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_old record;
    v_datasets bigint;
    v_workflows bigint;
    v_models bigint;
    v_storage bigint;
BEGIN
    -- The lock the counter triggers take: a concurrent insert either committed its
    -- delta before this point (and its row is counted below, each statement taking
    -- a new snapshot) or applies it after this transaction, on top of the repair.
    SELECT u.dataset_count, u.workflow_count, u.model_count, u.storage_used_bytes
      INTO v_old
      FROM public.users AS u
     WHERE u.id = p_user_id
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist', p_user_id USING ERRCODE = 'no_data_found';
    END IF;

    SELECT count(*) INTO v_datasets FROM public.datasets AS d WHERE d.user_id = p_user_id;
    SELECT count(*) INTO v_workflows
      FROM public.workflows AS w WHERE w.user_id = p_user_id AND NOT w.is_deleted;
    SELECT count(*) INTO v_models FROM public.models AS m WHERE m.user_id = p_user_id;
    SELECT coalesce(sum(coalesce(v.original_size_bytes, 0) + coalesce(v.parquet_size_bytes, 0)), 0)
           + (SELECT coalesce(sum(coalesce(m.size_bytes, 0)), 0)
                FROM public.models AS m WHERE m.user_id = p_user_id)
      INTO v_storage
      FROM public.dataset_versions AS v WHERE v.user_id = p_user_id;

    IF (v_old.dataset_count, v_old.workflow_count, v_old.model_count, v_old.storage_used_bytes)
       = (v_datasets, v_workflows, v_models, v_storage) THEN
        RETURN;
    END IF;

    PERFORM set_config('automl.repair', 'on', true);
    UPDATE public.users AS u
       SET dataset_count = v_datasets,
           workflow_count = v_workflows,
           model_count = v_models,
           storage_used_bytes = v_storage
     WHERE u.id = p_user_id;
    PERFORM set_config('automl.repair', 'off', true);

    RETURN QUERY
    SELECT c.col, c.was, c.fixed
      FROM (VALUES ('dataset_count', v_old.dataset_count::bigint, v_datasets),
                   ('workflow_count', v_old.workflow_count::bigint, v_workflows),
                   ('model_count', v_old.model_count::bigint, v_models),
                   ('storage_used_bytes', v_old.storage_used_bytes, v_storage))
           AS c(col, was, fixed)
     WHERE c.was <> c.fixed;
END;
$$;
