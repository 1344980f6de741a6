-- A dataset version inserted without a version_number gets the dataset's next one
-- (1, 2, 3, ...). The dataset row is locked first, so concurrent uploads to one
-- dataset number their versions one after the other; a number given explicitly
-- is kept, and uq_dataset_versions_dataset_id_version_number refuses a duplicate.

CREATE OR REPLACE FUNCTION public.dataset_versions_number()
RETURNS trigger
LANGUAGE plpgsql
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
