-- Deployments (issue 14; docs/serving.md): models.is_deployed derived from the
-- active deployments, following alias moves; the deployments' status life (ML081);
-- a deployment's target never changes (ML082); is_deployed refused to clients (ML080).

-- Recompute models.is_deployed for the trained models named: true while an active
-- deployment serves one of their versions, directly or through an alias that points
-- at it now. Only rows whose value changes are written. SECURITY DEFINER: the
-- applications' role holds no UPDATE on models.is_deployed (database/grants.py).
-- The models' rows are locked first (in id order), and the value computed by the
-- next statement, which sees what committed meanwhile (READ COMMITTED: a snapshot
-- per statement): two transactions stopping the two deployments of one model
-- cannot both read the other's as still active.
CREATE OR REPLACE FUNCTION public.models_refresh_deployed(p_model_ids uuid[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM 1 FROM public.models AS m WHERE m.id = ANY (p_model_ids) ORDER BY m.id FOR UPDATE;
    UPDATE public.models AS m
       SET is_deployed = c.deployed
      FROM (SELECT ids.id,
                   EXISTS (
                       SELECT 1
                         FROM public.model_versions AS v
                         JOIN public.deployments AS d
                           ON d.status = 'active'
                          AND (d.model_version_id = v.id
                               OR EXISTS (SELECT 1 FROM public.model_aliases AS a
                                           WHERE a.registered_model_id = d.registered_model_id
                                             AND a.alias = d.alias
                                             AND a.model_version_id = v.id))
                        WHERE v.model_id = ids.id) AS deployed
              FROM (SELECT DISTINCT unnest(p_model_ids) AS id) AS ids
             WHERE ids.id IS NOT NULL) AS c
     WHERE m.id = c.id AND m.is_deployed IS DISTINCT FROM c.deployed;
END;
$$;

-- The trained model a deployment serves now (its version's, or its alias's).
CREATE OR REPLACE FUNCTION public.deployment_model_id(
    p_model_version_id uuid, p_registered_model_id uuid, p_alias text)
RETURNS uuid
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    SELECT v.model_id
      FROM public.model_versions AS v
     WHERE v.id = COALESCE(p_model_version_id,
                           (SELECT a.model_version_id FROM public.model_aliases AS a
                             WHERE a.registered_model_id = p_registered_model_id
                               AND a.alias = p_alias));
$$;

-- A deployment created, changed or deleted: the models it served and serves. A
-- deployment that follows an alias first takes a share lock on the alias's row, so
-- a concurrent move of the alias (which holds that row) is committed before the
-- alias is resolved here, and the moved-to model is the one refreshed.
CREATE OR REPLACE FUNCTION public.deployments_is_deployed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_ids uuid[] := ARRAY[]::uuid[];
    v_rm uuid;
    v_alias text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        v_rm := OLD.registered_model_id; v_alias := OLD.alias;
    ELSE
        v_rm := NEW.registered_model_id; v_alias := NEW.alias;
    END IF;
    IF v_rm IS NOT NULL THEN
        PERFORM 1 FROM public.model_aliases AS a
         WHERE a.registered_model_id = v_rm AND a.alias = v_alias FOR SHARE;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        v_ids := v_ids || public.deployment_model_id(OLD.model_version_id,
                                                     OLD.registered_model_id, OLD.alias);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        v_ids := v_ids || public.deployment_model_id(NEW.model_version_id,
                                                     NEW.registered_model_id, NEW.alias);
    END IF;
    PERFORM public.models_refresh_deployed(v_ids);
    RETURN NULL;
END;
$$;

CREATE TRIGGER deployments_is_deployed
AFTER INSERT OR DELETE OR UPDATE OF status ON deployments
FOR EACH ROW
EXECUTE FUNCTION public.deployments_is_deployed();

-- Versions deleted: the deployments of them went with them (their key cascades),
-- and deployment_model_id() can no longer find the model of a version that is gone,
-- so the deleted versions' models are refreshed here, once per statement, after the
-- cascades have run.
CREATE OR REPLACE FUNCTION public.model_versions_is_deployed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM public.models_refresh_deployed(ARRAY(SELECT DISTINCT o.model_id FROM old_rows AS o));
    RETURN NULL;
END;
$$;

CREATE TRIGGER model_versions_is_deployed
AFTER DELETE ON model_versions REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT
EXECUTE FUNCTION public.model_versions_is_deployed();

-- An alias created, moved or deleted: when an active deployment follows it, the
-- model it pointed at and the one it points at now.
CREATE OR REPLACE FUNCTION public.model_aliases_is_deployed()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_ids uuid[] := ARRAY[]::uuid[];
    v_rm uuid;
    v_alias text;
BEGIN
    IF TG_OP = 'DELETE' THEN
        v_rm := OLD.registered_model_id; v_alias := OLD.alias;
    ELSE
        v_rm := NEW.registered_model_id; v_alias := NEW.alias;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM public.deployments AS d
                    WHERE d.registered_model_id = v_rm AND d.alias = v_alias
                      AND d.status = 'active') THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        v_ids := v_ids || (SELECT v.model_id FROM public.model_versions AS v
                            WHERE v.id = OLD.model_version_id);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        v_ids := v_ids || (SELECT v.model_id FROM public.model_versions AS v
                            WHERE v.id = NEW.model_version_id);
    END IF;
    PERFORM public.models_refresh_deployed(v_ids);
    RETURN NULL;
END;
$$;

CREATE TRIGGER model_aliases_is_deployed
AFTER INSERT OR DELETE OR UPDATE OF model_version_id ON model_aliases
FOR EACH ROW
EXECUTE FUNCTION public.model_aliases_is_deployed();

-- models.is_deployed is the database's: a client's INSERT of true or UPDATE of it
-- (trigger depth 0) is refused, whoever the client. ML080.
CREATE OR REPLACE FUNCTION public.models_guard_is_deployed()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'models.is_deployed is maintained by the database and cannot be written directly'
        USING ERRCODE = 'ML080',
              HINT = 'create or stop a deployment instead';
END;
$$;

CREATE TRIGGER models_guard_is_deployed_insert
BEFORE INSERT ON models
FOR EACH ROW
WHEN (NEW.is_deployed)
EXECUTE FUNCTION public.models_guard_is_deployed();

CREATE TRIGGER models_guard_is_deployed_update
BEFORE UPDATE OF is_deployed ON models
FOR EACH ROW
WHEN (pg_trigger_depth() = 0 AND NEW.is_deployed IS DISTINCT FROM OLD.is_deployed)
EXECUTE FUNCTION public.models_guard_is_deployed();

-- A deployment's life: pending -> active | failed | stopped; active -> stopped |
-- failed; stopped and failed are final (deploy again under a new name, or delete
-- and reuse the name). ML081.
CREATE OR REPLACE FUNCTION public.deployments_status_transition()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    IF (OLD.status = 'pending' AND NEW.status IN ('active', 'failed', 'stopped'))
       OR (OLD.status = 'active' AND NEW.status IN ('stopped', 'failed')) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'deployment % may not go from % to %', OLD.id, OLD.status, NEW.status
        USING ERRCODE = 'ML081',
              DETAIL = format('table=deployments from=%s to=%s', OLD.status, NEW.status);
END;
$$;

CREATE TRIGGER deployments_status_transition
BEFORE UPDATE OF status ON deployments
FOR EACH ROW
WHEN (NEW.status IS DISTINCT FROM OLD.status)
EXECUTE FUNCTION public.deployments_status_transition();

-- What a deployment serves and whose it is never change: a new target is a new
-- deployment (the request log names the deployment, and its history would lie). ML082.
CREATE OR REPLACE FUNCTION public.deployments_target_immutable()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'deployment % may not change its owner, version, registered model or alias',
            OLD.id
        USING ERRCODE = 'ML082';
END;
$$;

CREATE TRIGGER deployments_target_immutable
BEFORE UPDATE OF user_id, model_version_id, registered_model_id, alias ON deployments
FOR EACH ROW
WHEN (NEW.user_id IS DISTINCT FROM OLD.user_id
      OR NEW.model_version_id IS DISTINCT FROM OLD.model_version_id
      OR NEW.registered_model_id IS DISTINCT FROM OLD.registered_model_id
      OR NEW.alias IS DISTINCT FROM OLD.alias)
EXECUTE FUNCTION public.deployments_target_immutable();

-- updated_at, like every table's (updated_at.sql holds the function).
CREATE TRIGGER set_updated_at
BEFORE UPDATE ON deployments
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();
