-- users.storage_used_bytes = what the user stores: the sum over the user's dataset
-- versions of original_size_bytes + parquet_size_bytes, plus the sum over the
-- user's models of size_bytes (the model artifact), plus the sum over the user's
-- batch_outputs of size_bytes (a batch prediction's Parquet); NULL counts as 0. It follows
-- inserts, changes of owner, deletes of versions, of whole datasets (the cascade
-- deletes their versions), of models and of batch outputs. Statement-level, like
-- counters.sql, whose users_apply_deltas does the locked update; one trigger
-- function, users_adjust_storage(size columns...), for every table.
--
-- A size is written once, when its file is stored (NULL -> a value: the upload,
-- the worker's Parquet, the model's artifact), and is read-only after: a change
-- or a reset to NULL is refused -> ML022 size_read_only. Otherwise a client could
-- lower the bytes counted against its quota while the files stay.

-- One function for every table whose files count: the trigger's arguments name the
-- row's size columns (dataset_versions: original_size_bytes, parquet_size_bytes;
-- models and batch_outputs: size_bytes), and a row counts the sum of them, NULL as 0.
-- The table needs a user_id. The statement is built from the arguments (quoted as
-- identifiers) and reads the transition tables new_rows and old_rows. Its price: a plan
-- per statement, where a per-table function's written-out query was planned once per
-- session (docs/performance.md, "The storage trigger"; bench/storage_trigger.py).
CREATE OR REPLACE FUNCTION public.users_adjust_storage()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_column text;
    v_bytes text;
    v_rows text;
    v_ids uuid[];
    v_deltas bigint[];
BEGIN
    IF TG_NARGS = 0 THEN
        RAISE EXCEPTION 'users_adjust_storage() on %: name the size columns as the trigger''s arguments',
            TG_TABLE_NAME
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Built with expressions, not a query: each statement run here costs a plan.
    FOREACH v_column IN ARRAY TG_ARGV LOOP
        v_bytes := concat_ws(' + ', v_bytes, format('coalesce(r.%I, 0)', v_column));
    END LOOP;
    IF TG_OP = 'INSERT' THEN
        v_rows := format('SELECT r.user_id, %s AS n FROM new_rows AS r', v_bytes);
    ELSIF TG_OP = 'DELETE' THEN
        v_rows := format('SELECT r.user_id, -(%s) AS n FROM old_rows AS r', v_bytes);
    ELSE
        v_rows := format('SELECT r.user_id, %s AS n FROM new_rows AS r'
                         ' UNION ALL SELECT r.user_id, -(%s) FROM old_rows AS r', v_bytes, v_bytes);
    END IF;
    EXECUTE 'SELECT array_agg(s.user_id), array_agg(s.n)'
            ' FROM (SELECT c.user_id, sum(c.n)::bigint AS n FROM (' || v_rows || ') AS c'
            ' GROUP BY c.user_id) AS s'
       INTO v_ids, v_deltas;
    PERFORM public.users_apply_deltas('storage_used_bytes', v_ids, v_deltas);
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_adjust_storage_insert
AFTER INSERT ON dataset_versions REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage('original_size_bytes', 'parquet_size_bytes');

CREATE TRIGGER users_adjust_storage_delete
AFTER DELETE ON dataset_versions REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage('original_size_bytes', 'parquet_size_bytes');

CREATE TRIGGER users_adjust_storage_update
AFTER UPDATE ON dataset_versions REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage('original_size_bytes', 'parquet_size_bytes');

-- The WHEN clauses of the triggers below hold the test; this only says which.
CREATE OR REPLACE FUNCTION public.storage_size_read_only()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_old jsonb := to_jsonb(OLD);
    v_new jsonb := to_jsonb(NEW);
    v_column text;
BEGIN
    SELECT c INTO v_column
      FROM unnest(ARRAY['original_size_bytes', 'parquet_size_bytes', 'size_bytes']) AS c
     WHERE v_old ? c AND v_old ->> c IS NOT NULL AND v_new -> c IS DISTINCT FROM v_old -> c
     LIMIT 1;
    RAISE EXCEPTION '%.% is % and cannot change: sizes are written once, when the file is stored',
        TG_TABLE_NAME, v_column, v_old ->> v_column
        USING ERRCODE = 'ML022',
              HINT = 'delete the row (and its file) instead; storage_used_bytes follows';
END;
$$;

CREATE TRIGGER users_adjust_model_storage_insert
AFTER INSERT ON models REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage('size_bytes');

CREATE TRIGGER users_adjust_model_storage_delete
AFTER DELETE ON models REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage('size_bytes');

CREATE TRIGGER users_adjust_model_storage_update
AFTER UPDATE ON models REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage('size_bytes');

CREATE TRIGGER dataset_versions_sizes_read_only
BEFORE UPDATE OF original_size_bytes, parquet_size_bytes ON dataset_versions
FOR EACH ROW
WHEN ((OLD.original_size_bytes IS NOT NULL
       AND NEW.original_size_bytes IS DISTINCT FROM OLD.original_size_bytes)
   OR (OLD.parquet_size_bytes IS NOT NULL
       AND NEW.parquet_size_bytes IS DISTINCT FROM OLD.parquet_size_bytes))
EXECUTE FUNCTION public.storage_size_read_only();

CREATE TRIGGER models_size_read_only
BEFORE UPDATE OF size_bytes ON models
FOR EACH ROW
WHEN (OLD.size_bytes IS NOT NULL AND NEW.size_bytes IS DISTINCT FROM OLD.size_bytes)
EXECUTE FUNCTION public.storage_size_read_only();

-- A batch prediction's output (batch_outputs): counted like a model's artifact.
CREATE TRIGGER users_adjust_batch_output_storage_insert
AFTER INSERT ON batch_outputs REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage('size_bytes');

CREATE TRIGGER users_adjust_batch_output_storage_delete
AFTER DELETE ON batch_outputs REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage('size_bytes');

CREATE TRIGGER users_adjust_batch_output_storage_update
AFTER UPDATE ON batch_outputs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage('size_bytes');

CREATE TRIGGER batch_outputs_size_read_only
BEFORE UPDATE OF size_bytes ON batch_outputs
FOR EACH ROW
WHEN (NEW.size_bytes IS DISTINCT FROM OLD.size_bytes)
EXECUTE FUNCTION public.storage_size_read_only();
