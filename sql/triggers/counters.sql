-- users.dataset_count, workflow_count and model_count follow their tables:
-- inserts, deletes (cascades included) and a change of owner. workflow_count
-- counts workflows that are not soft-deleted, so soft delete and restore move it.
-- users.storage_used_bytes follows dataset versions the same way (storage.sql).
--
-- Statement-level triggers with transition tables: one aggregated UPDATE of users
-- per statement, however many rows it touched, instead of rewriting the same
-- users row once per row of a bulk load.

-- Adds per-user deltas to one derived column. Rows are locked in id order, so
-- two statements touching the same users cannot deadlock on each other. Called
-- from the trigger functions only; a client calling it directly is refused by
-- users_guard_derived_update (users_derived.sql), as it runs at trigger depth 0.
CREATE OR REPLACE FUNCTION public.users_apply_deltas(p_column text, p_user_ids uuid[], p_deltas bigint[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF p_column NOT IN ('dataset_count', 'workflow_count', 'model_count', 'storage_used_bytes') THEN
        RAISE EXCEPTION 'users_apply_deltas: unknown column %', p_column
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Lock first, in id order, in a statement of its own; the UPDATE after it then
    -- works on the latest row versions instead of queueing behind other waiters
    -- with an older snapshot (which deadlocked concurrent changes of owner).
    PERFORM 1
       FROM public.users AS u
      WHERE u.id IN (SELECT d.user_id FROM unnest(p_user_ids, p_deltas) AS d(user_id, n)
                      WHERE d.n <> 0)
      ORDER BY u.id
        FOR NO KEY UPDATE;
    UPDATE public.users AS u
       SET dataset_count = u.dataset_count
               + CASE WHEN p_column = 'dataset_count' THEN d.n::integer ELSE 0 END,
           workflow_count = u.workflow_count
               + CASE WHEN p_column = 'workflow_count' THEN d.n::integer ELSE 0 END,
           model_count = u.model_count
               + CASE WHEN p_column = 'model_count' THEN d.n::integer ELSE 0 END,
           storage_used_bytes = u.storage_used_bytes
               + CASE WHEN p_column = 'storage_used_bytes' THEN d.n ELSE 0 END
      FROM unnest(p_user_ids, p_deltas) AS d(user_id, n)
     WHERE u.id = d.user_id AND d.n <> 0;
END;
$$;

CREATE OR REPLACE FUNCTION public.users_count_datasets()
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
          FROM (SELECT r.user_id, count(*) AS n FROM new_rows AS r GROUP BY r.user_id) AS s;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas
          FROM (SELECT r.user_id, -count(*) AS n FROM old_rows AS r GROUP BY r.user_id) AS s;
    ELSE
        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas
          FROM (SELECT c.user_id, sum(c.n) AS n
                  FROM (SELECT r.user_id, 1 AS n FROM new_rows AS r
                        UNION ALL
                        SELECT r.user_id, -1 AS n FROM old_rows AS r) AS c
                 GROUP BY c.user_id) AS s;
    END IF;
    PERFORM public.users_apply_deltas('dataset_count', v_ids, v_deltas);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION public.users_count_workflows()
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
          FROM (SELECT r.user_id, count(*) AS n FROM new_rows AS r
                 WHERE NOT r.is_deleted GROUP BY r.user_id) AS s;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas
          FROM (SELECT r.user_id, -count(*) AS n FROM old_rows AS r
                 WHERE NOT r.is_deleted GROUP BY r.user_id) AS s;
    ELSE
        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas
          FROM (SELECT c.user_id, sum(c.n) AS n
                  FROM (SELECT r.user_id, 1 AS n FROM new_rows AS r WHERE NOT r.is_deleted
                        UNION ALL
                        SELECT r.user_id, -1 AS n FROM old_rows AS r WHERE NOT r.is_deleted) AS c
                 GROUP BY c.user_id) AS s;
    END IF;
    PERFORM public.users_apply_deltas('workflow_count', v_ids, v_deltas);
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION public.users_count_models()
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
          FROM (SELECT r.user_id, count(*) AS n FROM new_rows AS r GROUP BY r.user_id) AS s;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas
          FROM (SELECT r.user_id, -count(*) AS n FROM old_rows AS r GROUP BY r.user_id) AS s;
    ELSE
        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas
          FROM (SELECT c.user_id, sum(c.n) AS n
                  FROM (SELECT r.user_id, 1 AS n FROM new_rows AS r
                        UNION ALL
                        SELECT r.user_id, -1 AS n FROM old_rows AS r) AS c
                 GROUP BY c.user_id) AS s;
    END IF;
    PERFORM public.users_apply_deltas('model_count', v_ids, v_deltas);
    RETURN NULL;
END;
$$;

CREATE TRIGGER users_inc_dataset_count
AFTER INSERT ON datasets REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_count_datasets();

CREATE TRIGGER users_dec_dataset_count
AFTER DELETE ON datasets REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_count_datasets();

CREATE TRIGGER users_move_dataset_count
AFTER UPDATE ON datasets REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_count_datasets();

CREATE TRIGGER users_inc_workflow_count
AFTER INSERT ON workflows REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_count_workflows();

CREATE TRIGGER users_dec_workflow_count
AFTER DELETE ON workflows REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_count_workflows();

CREATE TRIGGER users_move_workflow_count
AFTER UPDATE ON workflows REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_count_workflows();

CREATE TRIGGER users_inc_model_count
AFTER INSERT ON models REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_count_models();

CREATE TRIGGER users_dec_model_count
AFTER DELETE ON models REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_count_models();

CREATE TRIGGER users_move_model_count
AFTER UPDATE ON models REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.users_count_models();

-- TRUNCATE fires no DELETE trigger: it would leave every counter and
-- storage_used_bytes stale, so it is refused on the tables they follow.
CREATE OR REPLACE FUNCTION public.refuse_truncate_counted()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'TRUNCATE of % would leave the users'' counters stale', TG_TABLE_NAME
        USING ERRCODE = 'ML003',
              HINT = 'DELETE the rows instead: the counters follow a DELETE';
END;
$$;

CREATE TRIGGER users_counters_no_truncate
BEFORE TRUNCATE ON datasets
FOR EACH STATEMENT EXECUTE FUNCTION public.refuse_truncate_counted();

CREATE TRIGGER users_counters_no_truncate
BEFORE TRUNCATE ON workflows
FOR EACH STATEMENT EXECUTE FUNCTION public.refuse_truncate_counted();

CREATE TRIGGER users_counters_no_truncate
BEFORE TRUNCATE ON models
FOR EACH STATEMENT EXECUTE FUNCTION public.refuse_truncate_counted();

CREATE TRIGGER users_counters_no_truncate
BEFORE TRUNCATE ON dataset_versions
FOR EACH STATEMENT EXECUTE FUNCTION public.refuse_truncate_counted();

-- batch_outputs' bytes are in storage_used_bytes (storage.sql): refused the same way.
CREATE TRIGGER users_counters_no_truncate
BEFORE TRUNCATE ON batch_outputs
FOR EACH STATEMENT EXECUTE FUNCTION public.refuse_truncate_counted();
