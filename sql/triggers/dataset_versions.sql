-- A dataset version inserted without a version_number gets the dataset's next one
-- (1, 2, 3, ...). The dataset row is locked first, so concurrent uploads to one
-- dataset number their versions one after the other; a number given explicitly
-- is kept, and uq_dataset_versions_dataset_id_version_number refuses a duplicate.

-- enable_seqscan = off: the two lookups must use their indexes whatever the
-- statistics say. Right after a table is created or emptied the planner believes
-- dataset_versions is empty and would scan it for max(version_number), a plan the
-- session then keeps: a bulk load of 100,000 unnumbered versions scanned the
-- growing table once per row (quadratic; docs/performance.md).

CREATE OR REPLACE FUNCTION public.dataset_versions_number()
RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
BEGIN
    PERFORM 1 FROM public.datasets AS d WHERE d.id = NEW.dataset_id FOR NO KEY UPDATE;
    SELECT coalesce(max(v.version_number), 0) + 1 INTO NEW.version_number
      FROM public.dataset_versions AS v
     WHERE v.dataset_id = NEW.dataset_id;
    RETURN NEW;
END;
$$;

CREATE TRIGGER dataset_versions_number
BEFORE INSERT ON dataset_versions
FOR EACH ROW
WHEN (NEW.version_number IS NULL)
EXECUTE FUNCTION public.dataset_versions_number();
