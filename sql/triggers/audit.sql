-- The audit trail: who did what to which entity (docs/audit.md).
--
-- Rules (each has a test in tests/test_audit.py):
--   * the actor is read from ONE transaction-local setting, automl.actor (its
--     format below; database.audit.set_actor sets it): the columns of audit_events
--     default to its fields, so raw SQL is audited too, with a NULL actor when its
--     transaction named none; a field that is not a UUID (or an IP) fails the
--     audited statement                                      -> ML106 invalid_audit_actor
--   * audit_events is append-only: UPDATE, DELETE and TRUNCATE are refused for
--     every client, on the table and on each partition      -> ML105 audit_append_only
--     Two narrow exceptions, both only for the owner role inside its own SECURITY
--     DEFINER functions (a setting alone gives the apps' role nothing):
--       - audit_redact_user: clears client_ip and user_agent of a purged user's
--         rows, and changes nothing else (a purge's erasure of personal data);
--       - audit_events_ensure_partitions: moves rows out of the DEFAULT partition
--         into the month partition it creates for them.
--     Old months leave by DROP of whole partitions (DDL, the owner's: automl-db clean).
--   * a redaction of a user who is not purged is refused   -> ML107 audit_redaction_refused
--   * audit_record given a malformed action or entity type, or a detail that is not
--     a JSON object of at most 4096 bytes                    -> ML108 invalid_audit_event
--     (audit_events has no CHECK constraints: its writers are this file's functions,
--     and each CHECK cost every audit row's INSERT; docs/performance.md)
--
-- The trigger functions are generic; the table-specific part is in TG_ARGV:
--   audit_row_inserted(entity_type, key column, subject column, action, detail columns...)
--     row-level AFTER INSERT: a creation is one row (a key, a sign-up, a grant), and a
--     row trigger needs no transition table (a statement trigger's tuplestore and
--     INSERT ... SELECT cost a single-row insert about twice as much);
--   audit_rows(entity_type, key column, subject column, action, detail columns...)
--     statement-level AFTER DELETE with a transition table: one INSERT ... SELECT
--     per statement, whatever its number of rows (a user's keys go in one cascade);
--   audit_changes(entity_type, key column, subject column, spec...)
--     row-level AFTER UPDATE with a WHEN clause naming the watched columns, so an
--     UPDATE of other columns (the ledger's credit_balance, a key's last_used_at)
--     calls no function at all. A spec is 'column=action' (any change) or
--     'column=action_when_set/action_when_cleared' (set = true or not NULL); a
--     leading '~' records that the column changed but not its values (personal data).
-- The "subject" is the user whose entity it is (a key's owner, the account, a
-- grantee): GET /v1/audit-events shows a user the events of which they are actor or
-- subject.

-- The actor: ONE transaction-local setting, automl.actor =
--   '<user id> <api key id> <session id> <request id> <client ip> <user agent>'
-- fields separated by one space, empty when unknown, the user agent last (it may hold
-- spaces), trailing fields optional: raw SQL may name just a user
-- (SET LOCAL automl.actor = '<uuid>'). database.audit sets it: with the API's key or
-- session lookup, in the same statement (one set_config, no round trip).
--
-- The columns of audit_events default to its fields through the SQL functions
-- below, which the planner inlines into the INSERT (no PL/pgSQL call per row; the
-- error function runs only for a malformed field).

-- Field p_field (1-6) of automl.actor, NULL when empty or absent: of the setting split
-- once into its fields (p_fields: string_to_array(setting, ' ')), the user agent the
-- fields from the sixth on joined again (so its spaces are kept exactly).
CREATE OR REPLACE FUNCTION public.audit_actor_field_of(p_fields text[], p_field integer)
RETURNS text
LANGUAGE sql
STABLE
AS $$
SELECT NULLIF(CASE WHEN p_field < 6 THEN p_fields[p_field]
                   ELSE array_to_string(p_fields[6:], ' ') END, '')
$$;

-- Field p_field (1-6) of automl.actor, NULL when empty or absent.
CREATE OR REPLACE FUNCTION public.audit_actor_field(p_field integer)
RETURNS text
LANGUAGE sql
STABLE
AS $$
SELECT public.audit_actor_field_of(string_to_array(current_setting('automl.actor', true), ' '),
                                   p_field)
$$;

CREATE OR REPLACE FUNCTION public.audit_actor_invalid(p_field integer)
RETURNS text
LANGUAGE plpgsql
STABLE
AS $$
DECLARE
    v_name text := (ARRAY['actor_user_id', 'actor_api_key_id', 'actor_session_id',
                          'request_id', 'client_ip', 'user_agent'])[p_field];
BEGIN
    RAISE EXCEPTION 'the % of the setting automl.actor is not %', v_name,
            CASE WHEN p_field = 5 THEN 'an IP address' ELSE 'a UUID' END
        USING ERRCODE = 'ML106', DETAIL = format('setting=automl.actor field=%s', v_name),
              HINT = 'automl.actor is ''<user id> <api key id> <session id> <request id> <client ip> <user agent>''';
END;
$$;

-- A field's value (p_value) as a UUID (an IP address), NULL when empty; ML106 naming
-- field p_field when it is not one. The one place of the rule: the column defaults
-- (audit_actor_uuid, audit_actor_inet below) call these. p_value must not be a
-- value the planner can fold (a constant, or a PL/pgSQL variable in a custom plan):
-- the THEN branch's cast would be folded, raising 22P02 before the check.
CREATE OR REPLACE FUNCTION public.audit_actor_uuid_of(p_value text, p_field integer)
RETURNS uuid
LANGUAGE sql
STABLE
AS $$
SELECT CASE WHEN p_value IS NULL THEN NULL
            WHEN pg_input_is_valid(p_value, 'uuid') THEN p_value::uuid
            ELSE public.audit_actor_invalid(p_field)::uuid END
$$;

CREATE OR REPLACE FUNCTION public.audit_actor_inet_of(p_value text, p_field integer)
RETURNS inet
LANGUAGE sql
STABLE
AS $$
SELECT CASE WHEN p_value IS NULL THEN NULL
            WHEN pg_input_is_valid(p_value, 'inet') THEN p_value::inet
            ELSE public.audit_actor_invalid(p_field)::inet END
$$;

CREATE OR REPLACE FUNCTION public.audit_actor_uuid(p_field integer)
RETURNS uuid
LANGUAGE sql
STABLE
AS $$
SELECT public.audit_actor_uuid_of(public.audit_actor_field(p_field), p_field)
$$;

CREATE OR REPLACE FUNCTION public.audit_actor_inet(p_field integer)
RETURNS inet
LANGUAGE sql
STABLE
AS $$
SELECT public.audit_actor_inet_of(public.audit_actor_field(p_field), p_field)
$$;

CREATE OR REPLACE FUNCTION public.audit_events_immutable()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- Not SECURITY DEFINER: current_user is the role whose statement this is (the
    -- owner only inside the owner's own SECURITY DEFINER functions, or as itself).
    IF TG_OP = 'UPDATE' THEN
        IF current_setting('automl.audit_redact', true) = 'on'
           AND pg_has_role(current_user,
                           (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = TG_RELID),
                           'MEMBER')
           AND NEW.client_ip IS NULL AND NEW.user_agent IS NULL
           AND (to_jsonb(NEW) - 'client_ip' - 'user_agent') = (to_jsonb(OLD) - 'client_ip' - 'user_agent')
        THEN
            RETURN NEW;
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        -- public.partition_month moving the DEFAULT partition's rows of a new month.
        IF current_setting('automl.partition_maintenance', true) = 'on'
           AND TG_TABLE_NAME = 'audit_events_default'
           AND pg_has_role(current_user,
                           (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = TG_RELID),
                           'MEMBER')
        THEN
            RETURN OLD;
        END IF;
    END IF;
    RAISE EXCEPTION 'audit_events is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'ML105',
              HINT = 'old months leave by dropping whole partitions (automl-db clean --what audit)';
END;
$$;

CREATE OR REPLACE FUNCTION public.audit_row_inserted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_row jsonb := to_jsonb(NEW);
    v_detail jsonb;
    v_col text;
BEGIN
    -- TG_ARGV: entity_type, key column, subject column, action, detail columns...
    -- One row, no transition table: the key's creation, a sign-up, a grant. The
    -- hot path of a write (POST /v1/api-keys). Most of a row's cost is setting up
    -- expressions (each call is a new transaction: every expression is compiled
    -- again), so: the detail in one expression per number of columns, each in its
    -- own branch (a CASE would compile every branch; IF compiles the one taken),
    -- its size read without printing it.
    IF TG_NARGS = 8 THEN
        v_detail := jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4], TG_ARGV[5], v_row -> TG_ARGV[5],
                                       TG_ARGV[6], v_row -> TG_ARGV[6], TG_ARGV[7], v_row -> TG_ARGV[7]);
    ELSIF TG_NARGS = 4 THEN
        v_detail := '{}'::jsonb;
    ELSIF TG_NARGS = 5 THEN
        v_detail := jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4]);
    ELSIF TG_NARGS = 7 THEN
        v_detail := jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4], TG_ARGV[5], v_row -> TG_ARGV[5],
                                       TG_ARGV[6], v_row -> TG_ARGV[6]);
    ELSE
        v_detail := '{}'::jsonb;
        FOREACH v_col IN ARRAY TG_ARGV[4:] LOOP
            v_detail := v_detail || jsonb_build_object(v_col, v_row -> v_col);
        END LOOP;
    END IF;
    IF pg_column_size(v_detail) > 2000 THEN
        v_detail := jsonb_build_object('truncated', true);
    END IF;
    -- The actor's columns from ONE split of the setting (the columns' defaults split
    -- it once per field: a fifth of the row's work), through the same functions as
    -- the defaults (audit_actor_field_of, the one place of the format, and the _of
    -- checks, the one place of ML106). The setting is read in the statement, in a
    -- subquery kept apart (OFFSET 0, so it is split once): a value the planner
    -- cannot fold, so a malformed field raises ML106 when the row is written, never
    -- while a plan is made.
    INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, detail,
                                     actor_user_id, actor_api_key_id, actor_session_id,
                                     request_id, client_ip, user_agent)
    SELECT TG_ARGV[3], TG_ARGV[0], (v_row ->> TG_ARGV[1])::uuid, (v_row ->> TG_ARGV[2])::uuid,
           v_detail,
           public.audit_actor_uuid_of(public.audit_actor_field_of(a.f, 1), 1),
           public.audit_actor_uuid_of(public.audit_actor_field_of(a.f, 2), 2),
           public.audit_actor_uuid_of(public.audit_actor_field_of(a.f, 3), 3),
           left(public.audit_actor_field_of(a.f, 4), 200),
           public.audit_actor_inet_of(public.audit_actor_field_of(a.f, 5), 5),
           left(public.audit_actor_field_of(a.f, 6), 512)
      FROM (SELECT string_to_array(current_setting('automl.actor', true), ' ') AS f OFFSET 0) AS a;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION public.audit_rows()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    -- TG_ARGV: entity_type, key column, subject column, action, detail columns...
    -- Deletes only (a user's deletion cascades over their keys: one INSERT ... SELECT
    -- per statement, whatever its number of rows); inserts are audit_row_inserted's.
    INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, detail)
        SELECT TG_ARGV[3], TG_ARGV[0], (r.j ->> TG_ARGV[1])::uuid, (r.j ->> TG_ARGV[2])::uuid,
               CASE WHEN octet_length(r.d::text) <= 2000 THEN r.d
                    ELSE jsonb_build_object('truncated', true) END
          FROM (SELECT o.j, coalesce((SELECT jsonb_object_agg(c, o.j -> c)
                                        FROM unnest(TG_ARGV[4:]) AS c), '{}'::jsonb) AS d
                  FROM (SELECT to_jsonb(x) AS j FROM old_rows AS x) AS o) AS r;
    RETURN NULL;
END;
$$;

CREATE OR REPLACE FUNCTION public.audit_changes()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_old jsonb := to_jsonb(OLD);
    v_new jsonb := to_jsonb(NEW);
    v_spec text;
    v_col text;
    v_hide boolean;
    v_actions text[];
    v_detail jsonb;
BEGIN
    -- TG_ARGV: entity_type, key column, subject column, specs ('[~]column=action[/action]')
    FOREACH v_spec IN ARRAY TG_ARGV[3:] LOOP
        v_hide := starts_with(v_spec, '~');
        IF v_hide THEN
            v_spec := substr(v_spec, 2);
        END IF;
        v_col := split_part(v_spec, '=', 1);
        CONTINUE WHEN (v_old -> v_col) IS NOT DISTINCT FROM (v_new -> v_col);
        v_actions := string_to_array(split_part(v_spec, '=', 2), '/');
        v_detail := CASE WHEN v_hide THEN jsonb_build_object('column', v_col)
                         ELSE jsonb_build_object('column', v_col, 'old', v_old -> v_col,
                                                 'new', v_new -> v_col) END;
        IF octet_length(v_detail::text) > 2000 THEN
            v_detail := jsonb_build_object('column', v_col, 'truncated', true);
        END IF;
        INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, detail)
        VALUES (CASE WHEN cardinality(v_actions) > 1
                          AND (v_new -> v_col) IN ('null'::jsonb, 'false'::jsonb)
                     THEN v_actions[2] ELSE v_actions[1] END,
                TG_ARGV[0], (v_new ->> TG_ARGV[1])::uuid, (v_new ->> TG_ARGV[2])::uuid, v_detail);
    END LOOP;
    RETURN NULL;
END;
$$;

-- The API's own events (reads that matter: downloads). The apps' role may EXECUTE
-- it (database/grants.py) but not INSERT into audit_events: the time and the
-- actor's columns are the database's. The shape of what it is given is checked
-- here (ML108), the one writer taking free values: the triggers' actions and entity
-- types are this file's constants (tests/test_audit.py checks them), their details
-- objects they cap at 2000 bytes, and the actor's text columns are cut to their
-- lengths where they are read; audit_events has no CHECK of its own to re-read each
-- row (each costs the trigger's INSERT its parse and set-up, docs/performance.md).
CREATE OR REPLACE FUNCTION public.audit_record(p_action text, p_entity_type text, p_entity_id uuid, p_outcome text, p_detail jsonb, p_subject_user_id uuid)
RETURNS uuid
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_id uuid;
BEGIN
    IF p_action IS NULL OR char_length(p_action) > 100
       OR p_action !~ '^[a-z][a-z_]*(\.[a-z][a-z_]*)+$' THEN
        RAISE EXCEPTION 'an audit event''s action is ''<entity>.<verb>'' in lower case (at most 100 characters), not %',
                quote_nullable(left(p_action, 100))
            USING ERRCODE = 'ML108', DETAIL = 'field=action';
    END IF;
    IF p_entity_type IS NULL OR char_length(p_entity_type) > 50
       OR p_entity_type !~ '^[a-z][a-z_]*$' THEN
        RAISE EXCEPTION 'an audit event''s entity type is a lower-case word (at most 50 characters), not %',
                quote_nullable(left(p_entity_type, 50))
            USING ERRCODE = 'ML108', DETAIL = 'field=entity_type';
    END IF;
    IF p_detail IS NOT NULL
       AND (jsonb_typeof(p_detail) <> 'object' OR octet_length(p_detail::text) > 4096) THEN
        RAISE EXCEPTION 'an audit event''s detail is a JSON object of at most 4096 bytes'
            USING ERRCODE = 'ML108', DETAIL = 'field=detail';
    END IF;
    INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, outcome, detail)
    VALUES (p_action, p_entity_type, p_entity_id, p_subject_user_id,
            coalesce(p_outcome, 'success')::public.audit_outcome, coalesce(p_detail, '{}'::jsonb))
    RETURNING id INTO v_id;
    RETURN v_id;
END;
$$;

-- Purge's erasure of personal data: the IP and user agent of the events a purged
-- user made. Owner only (EXECUTE revoked from PUBLIC); refuses a user who is not
-- purged (ML107); the row trigger lets the UPDATE through only for these two
-- columns going NULL.
CREATE OR REPLACE FUNCTION public.audit_redact_user(p_user_id uuid)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_count bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.users AS u
                    WHERE u.id = p_user_id AND u.purged_at IS NOT NULL) THEN
        RAISE EXCEPTION 'user % is not purged: the audit trail keeps their IP and user agent',
                p_user_id
            USING ERRCODE = 'ML107';
    END IF;
    PERFORM set_config('automl.audit_redact', 'on', true);
    -- "actor = the user", written as the two arms the partial indexes serve
    -- (database.audit.by_actor says why).
    UPDATE public.audit_events AS e
       SET client_ip = NULL, user_agent = NULL
     WHERE ((e.subject_user_id = p_user_id AND e.actor_user_id = p_user_id)
            OR (e.actor_user_id = p_user_id AND e.actor_user_id IS DISTINCT FROM e.subject_user_id))
       AND (e.client_ip IS NOT NULL OR e.user_agent IS NOT NULL);
    GET DIAGNOSTICS v_count = ROW_COUNT;
    PERFORM set_config('automl.audit_redact', 'off', true);
    RETURN v_count;
END;
$$;

-- Monthly partitions (UTC bounds), from the month of p_at through p_months_ahead
-- months after it (public.partition_months, partitions.sql: shared with the request
-- log), and the DEFAULT partition, which catches a row of a month not made yet;
-- rows it caught for a month being created move into it. Each partition gets the
-- TRUNCATE refusal. Idempotent; concurrent callers queue on the parent's lock.
-- Returns the partitions created. The workers call it periodically
-- (database.audit.ensure_partitions).
CREATE OR REPLACE FUNCTION public.audit_events_ensure_partitions(p_at timestamptz, p_months_ahead integer)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_created integer := 0;
BEGIN
    IF to_regclass('public.audit_events_default') IS NULL THEN
        LOCK TABLE public.audit_events IN SHARE UPDATE EXCLUSIVE MODE;
        IF to_regclass('public.audit_events_default') IS NULL THEN
            CREATE TABLE public.audit_events_default PARTITION OF public.audit_events DEFAULT;
            CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON public.audit_events_default
                FOR EACH STATEMENT EXECUTE FUNCTION public.audit_events_immutable();
            v_created := 1;
        END IF;
    END IF;
    RETURN v_created + (SELECT count(*)::integer
                          FROM public.partition_months('audit_events', p_at, p_months_ahead,
                                                       'audit_events_immutable'));
END;
$$;

-- audit_events: append-only (the row trigger is cloned onto every partition).
CREATE TRIGGER audit_events_no_update_delete
BEFORE UPDATE OR DELETE ON audit_events
FOR EACH ROW EXECUTE FUNCTION public.audit_events_immutable();

CREATE TRIGGER audit_events_no_truncate
BEFORE TRUNCATE ON audit_events
FOR EACH STATEMENT EXECUTE FUNCTION public.audit_events_immutable();

-- api_keys: created, revoked (and un-revoked by raw SQL), scopes or expiry changed, deleted.
CREATE TRIGGER api_keys_audit_insert
AFTER INSERT ON api_keys
FOR EACH ROW EXECUTE FUNCTION public.audit_row_inserted('api_key', 'id', 'user_id', 'api_key.created', 'name', 'prefix', 'scopes', 'expires_at');

CREATE TRIGGER api_keys_audit_update
AFTER UPDATE ON api_keys
FOR EACH ROW
WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.scopes IS DISTINCT FROM NEW.scopes OR OLD.expires_at IS DISTINCT FROM NEW.expires_at)
EXECUTE FUNCTION public.audit_changes('api_key', 'id', 'user_id', 'revoked_at=api_key.revoked/api_key.unrevoked', 'scopes=api_key.scopes_changed', 'expires_at=api_key.expiry_changed');

CREATE TRIGGER api_keys_audit_delete
AFTER DELETE ON api_keys
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.audit_rows('api_key', 'id', 'user_id', 'api_key.deleted', 'name', 'prefix');

-- users: created; deleted and restored (is_deleted), tier and email changes. To watch
-- one more column (identity's role, is_active, permissions), add it to the WHEN line
-- and a spec ('role=user.role_changed') to the arguments.
CREATE TRIGGER users_audit_insert
AFTER INSERT ON users
FOR EACH ROW EXECUTE FUNCTION public.audit_row_inserted('user', 'id', 'id', 'user.created');

CREATE TRIGGER users_audit_update
AFTER UPDATE ON users
FOR EACH ROW
WHEN (OLD.is_deleted IS DISTINCT FROM NEW.is_deleted OR OLD.tier IS DISTINCT FROM NEW.tier OR OLD.email IS DISTINCT FROM NEW.email OR OLD.role IS DISTINCT FROM NEW.role OR OLD.is_active IS DISTINCT FROM NEW.is_active OR OLD.can_upload IS DISTINCT FROM NEW.can_upload OR OLD.can_train IS DISTINCT FROM NEW.can_train OR OLD.can_deploy IS DISTINCT FROM NEW.can_deploy OR OLD.can_download IS DISTINCT FROM NEW.can_download OR OLD.can_buy IS DISTINCT FROM NEW.can_buy)
EXECUTE FUNCTION public.audit_changes('user', 'id', 'id', 'is_deleted=user.deleted/user.restored', 'tier=user.tier_changed', '~email=user.email_changed', 'role=user.role_changed', 'is_active=user.activated/user.deactivated', 'can_upload=user.permission_changed', 'can_train=user.permission_changed', 'can_deploy=user.permission_changed', 'can_download=user.permission_changed', 'can_buy=user.permission_changed');

-- registered_model_permissions (sharing): granted, changed, revoked; the entity is the
-- registered model, the subject the grantee.
CREATE TRIGGER registered_model_permissions_audit_insert
AFTER INSERT ON registered_model_permissions
FOR EACH ROW EXECUTE FUNCTION public.audit_row_inserted('registered_model', 'registered_model_id', 'user_id', 'permission.granted', 'user_id', 'permission', 'granted_by');

CREATE TRIGGER registered_model_permissions_audit_update
AFTER UPDATE ON registered_model_permissions
FOR EACH ROW
WHEN (OLD.permission IS DISTINCT FROM NEW.permission)
EXECUTE FUNCTION public.audit_changes('registered_model', 'registered_model_id', 'user_id', 'permission=permission.changed');

CREATE TRIGGER registered_model_permissions_audit_delete
AFTER DELETE ON registered_model_permissions
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.audit_rows('registered_model', 'registered_model_id', 'user_id', 'permission.revoked', 'user_id', 'permission');

-- registered_models: visibility changes, deletes.
CREATE TRIGGER registered_models_audit_update
AFTER UPDATE ON registered_models
FOR EACH ROW
WHEN (OLD.visibility IS DISTINCT FROM NEW.visibility)
EXECUTE FUNCTION public.audit_changes('registered_model', 'id', 'user_id', 'visibility=registered_model.visibility_changed');

CREATE TRIGGER registered_models_audit_delete
AFTER DELETE ON registered_models
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.audit_rows('registered_model', 'id', 'user_id', 'registered_model.deleted', 'name');

-- identity's user_sessions: created, revoked; the entity is the session, the subject its user.
CREATE TRIGGER user_sessions_audit_insert
AFTER INSERT ON user_sessions
FOR EACH ROW EXECUTE FUNCTION public.audit_row_inserted('session', 'id', 'user_id', 'session.created');

CREATE TRIGGER user_sessions_audit_update
AFTER UPDATE ON user_sessions
FOR EACH ROW
WHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at)
EXECUTE FUNCTION public.audit_changes('session', 'id', 'user_id', 'revoked_at=session.revoked/session.unrevoked');

-- serving's deployments: created, status changes (stopped, failed...), deleted.
CREATE TRIGGER deployments_audit_insert
AFTER INSERT ON deployments
FOR EACH ROW EXECUTE FUNCTION public.audit_row_inserted('deployment', 'id', 'user_id', 'deployment.created', 'name');

CREATE TRIGGER deployments_audit_update
AFTER UPDATE ON deployments
FOR EACH ROW
WHEN (OLD.status IS DISTINCT FROM NEW.status)
EXECUTE FUNCTION public.audit_changes('deployment', 'id', 'user_id', 'status=deployment.status_changed');

CREATE TRIGGER deployments_audit_delete
AFTER DELETE ON deployments
REFERENCING OLD TABLE AS old_rows
FOR EACH STATEMENT EXECUTE FUNCTION public.audit_rows('deployment', 'id', 'user_id', 'deployment.deleted', 'name');
