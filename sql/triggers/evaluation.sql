-- Evaluation (issue 15; docs/evaluation.md): a dataset's target and ignored columns
-- are columns of its current version, per-row results are written once, and a run's
-- results are written once.

-- A dataset's target column and ignored columns must be columns of its current
-- version, once that version's columns are known (ingested). Checked when either
-- changes (a new version is not checked: it has no columns until ingested). ML115:
-- the target; ML116: an ignored column, or the target among the ignored ones.
CREATE OR REPLACE FUNCTION public.datasets_columns_check()
RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    names text[];
    unknown text[];
BEGIN
    IF NEW.current_version_id IS NULL THEN
        RETURN NEW;
    END IF;
    SELECT array_agg(c ->> 'name') INTO names
      FROM public.dataset_versions AS v,
           jsonb_array_elements(
               CASE WHEN jsonb_typeof(v.columns_metadata -> 'columns') = 'array'
                    THEN v.columns_metadata -> 'columns' ELSE '[]'::jsonb END) AS c
     WHERE v.id = NEW.current_version_id;
    IF names IS NULL THEN
        RETURN NEW;  -- not ingested yet: nothing to check against
    END IF;
    IF NEW.target_column IS NOT NULL AND NOT NEW.target_column = ANY (names) THEN
        RAISE EXCEPTION 'target column "%" is not a column of the dataset''s current version',
                NEW.target_column
            USING ERRCODE = 'ML115', DETAIL = format('column=%s', NEW.target_column);
    END IF;
    SELECT array_agg(i) INTO unknown
      FROM unnest(NEW.ignored_columns) AS i
     WHERE NOT i = ANY (names);
    IF unknown IS NOT NULL THEN
        RAISE EXCEPTION 'ignored columns are not columns of the dataset''s current version: %',
                array_to_string(unknown, ', ')
            USING ERRCODE = 'ML116';
    END IF;
    IF NEW.target_column = ANY (NEW.ignored_columns) THEN
        RAISE EXCEPTION 'the target column "%" cannot be ignored', NEW.target_column
            USING ERRCODE = 'ML116';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER datasets_columns_check
BEFORE UPDATE OF target_column, ignored_columns ON datasets
FOR EACH ROW
WHEN (NEW.target_column IS DISTINCT FROM OLD.target_column
      OR NEW.ignored_columns IS DISTINCT FROM OLD.ignored_columns)
EXECUTE FUNCTION public.datasets_columns_check();

-- Per-row results are written once (COPY by the worker) and leave with their run:
-- an UPDATE is refused. ML117.
CREATE OR REPLACE FUNCTION public.evaluation_row_results_write_once()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'evaluation_row_results are written once: UPDATE refused'
        USING ERRCODE = 'ML117', HINT = 'run a new evaluation instead';
END;
$$;

CREATE TRIGGER evaluation_row_results_write_once
BEFORE UPDATE ON evaluation_row_results
FOR EACH ROW
EXECUTE FUNCTION public.evaluation_row_results_write_once();

-- A run names what it evaluated for good, and its results are written once (when
-- completed_at goes from NULL to a time). ML118.
CREATE OR REPLACE FUNCTION public.evaluation_runs_write_once()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF NEW.user_id IS DISTINCT FROM OLD.user_id
       OR NEW.job_id IS DISTINCT FROM OLD.job_id
       OR NEW.model_version_id IS DISTINCT FROM OLD.model_version_id
       OR NEW.dataset_version_id IS DISTINCT FROM OLD.dataset_version_id
       OR NEW.criteria IS DISTINCT FROM OLD.criteria
       OR OLD.completed_at IS NOT NULL THEN
        RAISE EXCEPTION 'evaluation run % may not change what it evaluated or its results',
                OLD.id
            USING ERRCODE = 'ML118';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER evaluation_runs_write_once
BEFORE UPDATE ON evaluation_runs
FOR EACH ROW
EXECUTE FUNCTION public.evaluation_runs_write_once();
