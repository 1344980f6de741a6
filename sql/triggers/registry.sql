-- The model registry's rules (docs/schema.md, "Model registry"): numbering of
-- versions, what never changes, append-only downloads and their counter, who may
-- be granted a permission, lineage without cycles.

-- Version numbers (1, 2, 3, ...) come from the registered model's counter,
-- registered_models.last_version_number, never from the versions that exist now
-- (MLflow's max(version) + 1 raced and reused numbers): the UPDATE that takes the
-- next number also locks the parent's row, so concurrent registrations of one
-- model get consecutive numbers one after the other, and a number once given is
-- never given again, even after its version was deleted. Whatever the client
-- sends, the version gets the next number, the owner's user_id and a
-- download_count of 0.
CREATE OR REPLACE FUNCTION public.model_versions_number()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE public.registered_models AS r
       SET last_version_number = r.last_version_number + 1
     WHERE r.id = NEW.registered_model_id
    RETURNING r.last_version_number, r.user_id INTO NEW.version, NEW.user_id;
    IF NOT FOUND THEN
        NEW.version := 1;  -- no such registered model: its foreign key refuses the row
    END IF;
    NEW.download_count := 0;
    RETURN NEW;
END;
$$;

CREATE TRIGGER model_versions_number
BEFORE INSERT ON model_versions
FOR EACH ROW
EXECUTE FUNCTION public.model_versions_number();

-- The counter only goes up: lowering it would give a number again. ML060.
CREATE OR REPLACE FUNCTION public.registered_models_version_counter_guard()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'the version counter of registered model % may not go down (% to %)',
            OLD.id, OLD.last_version_number, NEW.last_version_number
        USING ERRCODE = 'ML060';
END;
$$;

CREATE TRIGGER registered_models_version_counter_guard
BEFORE UPDATE OF last_version_number ON registered_models
FOR EACH ROW
WHEN (NEW.last_version_number < OLD.last_version_number)
EXECUTE FUNCTION public.registered_models_version_counter_guard();

-- "Version 3 of model m" means one trained model forever: a version's number, its
-- registered model, its trained model and its owner never change. ML061.
CREATE OR REPLACE FUNCTION public.model_versions_identity_immutable()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'model version % may not change its version, registered model, model or owner',
            OLD.id
        USING ERRCODE = 'ML061',
              DETAIL = format('version=%s registered_model_id=%s', OLD.version,
                              OLD.registered_model_id);
END;
$$;

CREATE TRIGGER model_versions_identity_immutable
BEFORE UPDATE OF version, registered_model_id, model_id, user_id ON model_versions
FOR EACH ROW
WHEN (NEW.version IS DISTINCT FROM OLD.version
      OR NEW.registered_model_id IS DISTINCT FROM OLD.registered_model_id
      OR NEW.model_id IS DISTINCT FROM OLD.model_id
      OR NEW.user_id IS DISTINCT FROM OLD.user_id)
EXECUTE FUNCTION public.model_versions_identity_immutable();

-- A registered model keeps its owner: its versions' user_id (the owner's, which
-- ties each version to a trained model of the owner) never changes (ML061), so an
-- owner changed here would leave them behind. A transfer, if ever wanted, is an
-- operation of its own (the trained models move too). ML066.
CREATE OR REPLACE FUNCTION public.registered_models_owner_immutable()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'registered model % may not change its owner', OLD.id
        USING ERRCODE = 'ML066';
END;
$$;

CREATE TRIGGER registered_models_owner_immutable
BEFORE UPDATE OF user_id ON registered_models
FOR EACH ROW
WHEN (NEW.user_id IS DISTINCT FROM OLD.user_id)
EXECUTE FUNCTION public.registered_models_owner_immutable();

-- model_downloads is append-only: an UPDATE or DELETE written by a client (trigger
-- depth 0) is refused, whoever the client; the referential actions of its keys run
-- at depth 1 and pass (a deleted version takes its downloads along, a deleted
-- user's downloads become anonymous). TRUNCATE fires no row trigger: refused by a
-- statement trigger. ML062.
CREATE OR REPLACE FUNCTION public.model_downloads_append_only()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'model_downloads is append-only: % refused', TG_OP
        USING ERRCODE = 'ML062',
              HINT = 'record a new download instead';
END;
$$;

CREATE TRIGGER model_downloads_append_only
BEFORE UPDATE OR DELETE ON model_downloads
FOR EACH ROW
WHEN (pg_trigger_depth() = 0)
EXECUTE FUNCTION public.model_downloads_append_only();

CREATE TRIGGER model_downloads_no_truncate
BEFORE TRUNCATE ON model_downloads
FOR EACH STATEMENT
EXECUTE FUNCTION public.model_downloads_append_only();

-- download_count is the number of granted downloads of the version: one UPDATE per
-- version and statement, from the statement's new rows (a bulk insert of 1,000
-- downloads of one version is one UPDATE). SECURITY DEFINER: the applications'
-- role holds no UPDATE on download_count (database/grants.py).
CREATE OR REPLACE FUNCTION public.model_downloads_count()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    UPDATE public.model_versions AS v
       SET download_count = v.download_count + c.n
      FROM (SELECT n.model_version_id, count(*) AS n
              FROM new_rows AS n
             WHERE n.granted
             GROUP BY n.model_version_id) AS c
     WHERE v.id = c.model_version_id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER model_downloads_count
AFTER INSERT ON model_downloads REFERENCING NEW TABLE AS new_rows
FOR EACH STATEMENT
EXECUTE FUNCTION public.model_downloads_count();

-- Only that trigger writes download_count: a client's write (depth 0) is refused,
-- the owner's raw SQL included. ML063.
--
-- One exception, logged: public.registry_repair_derived (repair.sql) sets a count
-- that drifted back to the number of granted downloads, under the
-- transaction-local flag automl.repair = 'on' (as users_guard_derived lets
-- users_repair_derived through); each such write is one derived_repairs row. The
-- flag grants nothing by itself: the applications' role holds no UPDATE on
-- download_count.
CREATE OR REPLACE FUNCTION public.model_versions_download_count_guard()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF current_setting('automl.repair', true) = 'on' THEN
        INSERT INTO public.derived_repairs
               (user_id, table_name, row_id, column_name, old_value, new_value)
        VALUES (NEW.user_id, 'model_versions', NEW.id, 'download_count',
                OLD.download_count, NEW.download_count);
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'model_versions.download_count is kept by the database (% to %)',
            OLD.download_count, NEW.download_count
        USING ERRCODE = 'ML063',
              HINT = 'record a download in model_downloads';
END;
$$;

CREATE TRIGGER model_versions_download_count_guard
BEFORE UPDATE OF download_count ON model_versions
FOR EACH ROW
WHEN (pg_trigger_depth() = 0 AND NEW.download_count IS DISTINCT FROM OLD.download_count)
EXECUTE FUNCTION public.model_versions_download_count_guard();

-- The owner of a registered model holds every permission already: granting it one
-- is a mistake (it would outlive nothing and confuse the listing). ML064.
CREATE OR REPLACE FUNCTION public.registered_model_permissions_not_owner()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM public.registered_models AS r
                WHERE r.id = NEW.registered_model_id AND r.user_id = NEW.user_id) THEN
        RAISE EXCEPTION 'user % owns registered model %: the owner cannot be granted a permission',
                NEW.user_id, NEW.registered_model_id
            USING ERRCODE = 'ML064';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER registered_model_permissions_not_owner
BEFORE INSERT OR UPDATE OF user_id, registered_model_id ON registered_model_permissions
FOR EACH ROW
EXECUTE FUNCTION public.registered_model_permissions_not_owner();

-- A version cannot descend from itself through other versions (retrained_from,
-- tuned_from): the edge that would close a cycle is refused. ML065. Such edges are
-- rare (one per registration at most), so one transaction lock serializes their
-- checks: two edges closing a cycle together cannot both pass.
--
-- The walk up is one index lookup per step whatever the statistics say: each step
-- is a LATERAL lookup of the current version's edges, kept a subquery by OFFSET 0
-- (pulled up, it becomes a join the planner may run as a scan of every edge hashed
-- against the work table), and enable_seqscan is off. With the plain join, a bulk
-- load of edges into a table not yet analyzed was planned as a full scan per step:
-- quadratic (bench/registry.py, docs/performance.md section 6).
CREATE OR REPLACE FUNCTION public.model_lineage_no_cycle()
RETURNS trigger
LANGUAGE plpgsql
SET enable_seqscan = off
AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(7305065);
    IF EXISTS (
        WITH RECURSIVE up(id) AS (
            SELECT NEW.parent_version_id
            UNION
            SELECT p.parent_version_id
              FROM up, LATERAL (SELECT l.parent_version_id FROM public.model_lineage AS l
                                 WHERE l.child_version_id = up.id
                                   AND l.parent_version_id IS NOT NULL
                                OFFSET 0) AS p
        )
        SELECT 1 FROM up WHERE up.id = NEW.child_version_id
    ) THEN
        RAISE EXCEPTION 'model version % descends from model version % already: the edge would make a cycle',
                NEW.parent_version_id, NEW.child_version_id
            USING ERRCODE = 'ML065';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER model_lineage_no_cycle
BEFORE INSERT OR UPDATE OF parent_version_id, child_version_id ON model_lineage
FOR EACH ROW
WHEN (NEW.parent_version_id IS NOT NULL)
EXECUTE FUNCTION public.model_lineage_no_cycle();

-- updated_at (sql/triggers/updated_at.sql's function): the counters moving are not
-- an edit of the row.
CREATE TRIGGER set_updated_at
BEFORE UPDATE ON registered_models
FOR EACH ROW
WHEN (OLD.last_version_number IS NOT DISTINCT FROM NEW.last_version_number
      AND OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON model_versions
FOR EACH ROW
WHEN (OLD.download_count IS NOT DISTINCT FROM NEW.download_count
      AND OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();

CREATE TRIGGER set_updated_at
BEFORE UPDATE ON model_aliases
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();
