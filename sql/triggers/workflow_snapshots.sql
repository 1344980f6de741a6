-- A workflow snapshot is frozen: UPDATE fails with ML006 snapshot_immutable.
-- The one change allowed is the foreign key's own ON DELETE SET NULL, which
-- clears workflow_id when the source workflow is deleted: it runs inside the
-- foreign key's trigger (pg_trigger_depth() > 1); a client's own UPDATE does not.

CREATE OR REPLACE FUNCTION public.workflow_snapshots_immutable()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF pg_trigger_depth() > 1
       AND NEW.workflow_id IS NULL
       AND (NEW.id, NEW.user_id, NEW.snapshot_data, NEW.created_at)
           IS NOT DISTINCT FROM (OLD.id, OLD.user_id, OLD.snapshot_data, OLD.created_at) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'workflow snapshot % is immutable', OLD.id
        USING ERRCODE = 'ML006',
              HINT = 'create a new snapshot from the workflow instead';
END;
$$;

CREATE TRIGGER workflow_snapshots_immutable
BEFORE UPDATE ON workflow_snapshots
FOR EACH ROW EXECUTE FUNCTION public.workflow_snapshots_immutable();
