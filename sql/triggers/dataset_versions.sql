-- Version numbers (1, 2, 3, ...) come from a counter on the dataset,
-- datasets.last_version_number, never from the versions that exist now: a number
-- once given is never given again, even after its version was deleted (what a
-- registry's clients rely on: "version 3" means one thing forever).
--
-- A version inserted without a number takes the counter plus one, in the UPDATE
-- that also locks the dataset's row: concurrent uploads to one dataset number
-- their versions one after the other. A number given explicitly is kept (the
-- unique key refuses a duplicate), and the statement-level trigger below lifts the
-- counter to the highest number given, once per dataset and statement, so a bulk
-- load of numbered versions pays one UPDATE per dataset, not one per row.
--
-- enable_seqscan = off: the lookups must use their indexes whatever the statistics
-- say. Right after a table is created or emptied the planner believes it empty and
-- would scan it, a plan the session then keeps: a bulk load of 100,000 unnumbered
-- versions once scanned the growing table for each row (docs/performance.md).

CREATE OR REPLACE FUNCTION public.dataset_versions_number()
RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
BEGIN
    UPDATE public.datasets AS d
       SET last_version_number = d.last_version_number + 1
     WHERE d.id = NEW.dataset_id
    RETURNING d.last_version_number INTO NEW.version_number;
    IF NOT FOUND THEN
        NEW.version_number := 1;  -- no such dataset: its foreign key refuses the row
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION public.dataset_versions_lift_counter()
RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
BEGIN
    UPDATE public.datasets AS d
       SET last_version_number = m.top
      FROM (SELECT n.dataset_id, max(n.version_number) AS top
              FROM new_rows AS n GROUP BY n.dataset_id) AS m
     WHERE d.id = m.dataset_id AND d.last_version_number < m.top;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION public.dataset_versions_lift_counter_row()
RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
BEGIN
    UPDATE public.datasets AS d
       SET last_version_number = NEW.version_number
     WHERE d.id = NEW.dataset_id AND d.last_version_number < NEW.version_number;
    RETURN NULL;
END;
$$;

CREATE TRIGGER dataset_versions_number
BEFORE INSERT ON dataset_versions
FOR EACH ROW
WHEN (NEW.version_number IS NULL)
EXECUTE FUNCTION public.dataset_versions_number();

CREATE TRIGGER dataset_versions_lift_counter
AFTER INSERT ON dataset_versions REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT
EXECUTE FUNCTION public.dataset_versions_lift_counter();

-- A version renumbered or moved by hand: row-level, and the WHEN clause keeps
-- every other update (an ingestion's progress) from calling it.
CREATE TRIGGER dataset_versions_lift_counter_on_update
AFTER UPDATE OF version_number, dataset_id ON dataset_versions
FOR EACH ROW
WHEN (NEW.version_number IS DISTINCT FROM OLD.version_number
      OR NEW.dataset_id IS DISTINCT FROM OLD.dataset_id)
EXECUTE FUNCTION public.dataset_versions_lift_counter_row();

-- The counter only goes up: lowering it (raw SQL, a careless repair) would give a
-- number again. ML011.
CREATE OR REPLACE FUNCTION public.datasets_version_counter_guard()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'the version counter of dataset % may not go down (% to %)',
            OLD.id, OLD.last_version_number, NEW.last_version_number
        USING ERRCODE = 'ML011';
END;
$$;

CREATE TRIGGER datasets_version_counter_guard
BEFORE UPDATE OF last_version_number ON datasets
FOR EACH ROW
WHEN (NEW.last_version_number < OLD.last_version_number)
EXECUTE FUNCTION public.datasets_version_counter_guard();
