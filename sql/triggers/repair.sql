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
           + (SELECT coalesce(sum(b.size_bytes), 0)
                FROM public.batch_outputs AS b WHERE b.user_id = p_user_id)
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

-- registry_repair_derived(user) does the same for the registry's derived columns of
-- the user's registered models and versions (automl-db verify --repair):
--
-- - model_versions.download_count, set back to the number of the version's granted
--   downloads. The write passes model_versions_download_count_guard (registry.sql)
--   only under automl.repair = 'on', and that guard logs it in derived_repairs.
-- - registered_models.last_version_number, raised to the highest version number
--   when it fell below it (the next version would take a number already given).
--   Raising the counter is never refused (registered_models_version_counter_guard
--   refuses only lowering it, ML060), so this function logs it itself. A counter
--   above the highest version is right: numbers of deleted versions are not given
--   again.
--
-- Locks: the user's registered models first, then the versions, the order the
-- writers take them (numbering: the registered model's row, then a new version;
-- downloads: the version's row). A concurrent download either committed before
-- the lock (its rows are counted, each statement taking a new snapshot) or adds
-- its count after this transaction, on top of the repair. EXECUTE is revoked from
-- PUBLIC. Returns one row per value corrected: (table_name, row_id, column_name,
-- old, new).
CREATE OR REPLACE FUNCTION public.registry_repair_derived(p_user_id uuid)
RETURNS TABLE (table_name text, row_id uuid, column_name text, old_value bigint,
               new_value bigint)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM public.registered_models AS r
     WHERE r.user_id = p_user_id ORDER BY r.id FOR NO KEY UPDATE;
    PERFORM 1 FROM public.model_versions AS v
     WHERE v.user_id = p_user_id ORDER BY v.id FOR NO KEY UPDATE;

    PERFORM set_config('automl.repair', 'on', true);
    RETURN QUERY
    WITH counted AS (
        SELECT v.id AS rid, v.download_count AS was,
               (SELECT count(*) FROM public.model_downloads AS d
                 WHERE d.model_version_id = v.id AND d.granted) AS fixed
          FROM public.model_versions AS v
         WHERE v.user_id = p_user_id
    ), corrected AS (
        UPDATE public.model_versions AS v
           SET download_count = c.fixed
          FROM counted AS c
         WHERE v.id = c.rid AND c.was <> c.fixed
        RETURNING v.id AS rid, c.was, c.fixed
    )
    SELECT 'model_versions'::text, f.rid, 'download_count'::text, f.was, f.fixed
      FROM corrected AS f ORDER BY f.rid;
    PERFORM set_config('automl.repair', 'off', true);

    RETURN QUERY
    WITH highest AS (
        SELECT r.id AS rid, r.last_version_number::bigint AS was,
               max(v.version)::bigint AS fixed
          FROM public.registered_models AS r
          JOIN public.model_versions AS v ON v.registered_model_id = r.id
         WHERE r.user_id = p_user_id
         GROUP BY r.id, r.last_version_number
    ), raised AS (
        UPDATE public.registered_models AS r
           SET last_version_number = h.fixed
          FROM highest AS h
         WHERE r.id = h.rid AND h.was < h.fixed
        RETURNING r.id AS rid, h.was, h.fixed
    ), logged AS (
        INSERT INTO public.derived_repairs
               (user_id, table_name, row_id, column_name, old_value, new_value)
        SELECT p_user_id, 'registered_models', x.rid, 'last_version_number', x.was, x.fixed
          FROM raised AS x
    )
    SELECT 'registered_models'::text, x.rid, 'last_version_number'::text, x.was, x.fixed
      FROM raised AS x ORDER BY x.rid;
END;
$$;
