-- users.storage_used_bytes = sum over the user's dataset versions of
-- original_size_bytes + parquet_size_bytes (NULL counts as 0). It follows inserts,
-- changes of size or owner, deletes of versions and of whole datasets (the cascade
-- deletes their versions). Statement-level, like counters.sql, whose
-- users_apply_deltas does the locked update.

CREATE OR REPLACE FUNCTION public.users_adjust_storage()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_ids uuid[];
    v_deltas bigint[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas
          FROM (SELECT r.user_id,
                       sum(coalesce(r.original_size_bytes, 0) + coalesce(r.parquet_size_bytes, 0)) AS n
                  FROM new_rows AS r GROUP BY r.user_id) AS s;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas
          FROM (SELECT r.user_id,
                       -sum(coalesce(r.original_size_bytes, 0) + coalesce(r.parquet_size_bytes, 0)) AS n
                  FROM old_rows AS r GROUP BY r.user_id) AS s;
    ELSE
        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas
          FROM (SELECT c.user_id, sum(c.n) AS n
                  FROM (SELECT r.user_id,
                               coalesce(r.original_size_bytes, 0) + coalesce(r.parquet_size_bytes, 0) AS n
                          FROM new_rows AS r
                        UNION ALL
                        SELECT r.user_id,
                               -(coalesce(r.original_size_bytes, 0) + coalesce(r.parquet_size_bytes, 0))
                          FROM old_rows AS r) AS c
                 GROUP BY c.user_id) AS s;
    END IF;
    PERFORM public.users_apply_deltas('storage_used_bytes', v_ids, v_deltas);
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_adjust_storage_insert
AFTER INSERT ON dataset_versions REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage();

CREATE TRIGGER users_adjust_storage_delete
AFTER DELETE ON dataset_versions REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage();

CREATE TRIGGER users_adjust_storage_update
AFTER UPDATE ON dataset_versions REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_storage();
