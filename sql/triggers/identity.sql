-- Identity (issue 17): who may change an account's role, permissions, activity and
-- tier; sessions whose token and revocation stay as written. The Python side is
-- database/identity.py.
--
-- The actor is the user field of the transaction-local setting automl.actor
-- (public.audit_actor_field(1), audit.sql), set by the API
-- after it authenticated the caller (database.audit.set_actor):
--
--   * an actor changing their own role, permissions, activity or tier  -> ML100
--   * an actor who is not an active, undeleted admin                    -> ML101
--   * no actor (or not a uuid), from a role that is neither the schema's owner
--     nor an operator (EXECUTE on public.credit_adjust): the apps' role -> ML102
--   * no actor from the owner or an operator (the operator's CLI,
--     `automl-db users promote EMAIL`, migrations): allowed
--
-- The setting is the apps' word: a role that may write users may also set it. The
-- rule keeps the API's own code (a bug, an injected statement running as a user)
-- from raising a user's privileges; it is no defence against the apps' role itself.
--
-- Sessions: the token hash, the owner and the creation time never change, a
-- revocation is final and the expiry only comes closer                -> ML103

CREATE OR REPLACE FUNCTION public.identity_check_actor(p_target uuid, p_what text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_setting text := public.audit_actor_field(1);
    v_actor uuid;
BEGIN
    IF v_setting IS NULL THEN
        IF pg_has_role(current_user,
                       (SELECT c.relowner FROM pg_catalog.pg_class AS c
                         WHERE c.oid = 'public.users'::regclass), 'USAGE')
           OR has_function_privilege(current_user,
                                     'public.credit_adjust(uuid, integer, text, text, text)',
                                     'EXECUTE') THEN
            RETURN;
        END IF;
        RAISE EXCEPTION '% of user % refused: no actor is set', p_what, p_target
            USING ERRCODE = 'ML102',
                  HINT = 'the apps set automl.actor (database.audit.set_actor) to an admin';
    END IF;
    BEGIN
        v_actor := v_setting::uuid;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION '% of user % refused: the actor % is not a user id', p_what, p_target, v_setting
            USING ERRCODE = 'ML102';
    END;
    IF v_actor = p_target THEN
        RAISE EXCEPTION 'user % may not make % of their own account', p_target, p_what
            USING ERRCODE = 'ML100',
                  HINT = 'another admin makes it (or an operator: automl-db users)';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM public.users AS u
                    WHERE u.id = v_actor AND u.role = 'admin' AND u.is_active
                      AND NOT u.is_deleted) THEN
        RAISE EXCEPTION '% of user % refused: user % is not an active admin', p_what, p_target, v_actor
            USING ERRCODE = 'ML101';
    END IF;
END;
$$;

CREATE OR REPLACE FUNCTION public.users_privileges_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM public.identity_check_actor(OLD.id, 'a change of role, permissions, activity or tier');
    RETURN NEW;
END;
$$;

-- An admin's change of tier: the apps' role may not UPDATE users.tier itself
-- (an operator's column), so the API goes through here. Requires an actor; the
-- guard trigger then checks it is an admin and not the user. False: no such user.
CREATE OR REPLACE FUNCTION public.admin_set_tier(p_user_id uuid, p_tier user_tier)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF public.audit_actor_field(1) IS NULL THEN
        RAISE EXCEPTION 'a change of tier of user % refused: no actor is set', p_user_id
            USING ERRCODE = 'ML102';
    END IF;
    UPDATE public.users SET tier = p_tier WHERE id = p_user_id;
    RETURN FOUND;
END;
$$;

-- An admin's credit adjustment (POST /v1/admin/users/{id}/credit-adjustments): the
-- actor must be an active admin other than the user; the entry names them
-- ('admin:<id>'). Otherwise as public.credit_adjust (idempotency key: 23505).
CREATE OR REPLACE FUNCTION public.admin_credit_adjust(p_user_id uuid, p_amount integer, p_reason text, p_idempotency_key text)
RETURNS SETOF public.credit_transactions
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_actor text := public.audit_actor_field(1);
BEGIN
    IF v_actor IS NULL THEN
        RAISE EXCEPTION 'a credit adjustment of user % refused: no actor is set', p_user_id
            USING ERRCODE = 'ML102';
    END IF;
    PERFORM public.identity_check_actor(p_user_id, 'a credit adjustment');
    RETURN QUERY
        INSERT INTO public.credit_transactions (user_id, type, amount, description, actor, idempotency_key)
        VALUES (p_user_id, 'adjustment', p_amount, p_reason, 'admin:' || v_actor, p_idempotency_key)
        RETURNING *;
END;
$$;

CREATE OR REPLACE FUNCTION public.user_sessions_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF NEW.user_id <> OLD.user_id OR NEW.token_hash <> OLD.token_hash
       OR NEW.created_at <> OLD.created_at
       OR (OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at)
       OR NEW.expires_at > OLD.expires_at THEN
        RAISE EXCEPTION 'session % may not change its owner, token or creation, be revoked again or un-revoked, or live longer', OLD.id
            USING ERRCODE = 'ML103',
                  HINT = 'log in again for a new session';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER users_privileges_guard
BEFORE UPDATE OF role, is_active, can_upload, can_train, can_deploy, can_download, can_buy, tier ON users
FOR EACH ROW
WHEN (OLD.role IS DISTINCT FROM NEW.role OR OLD.is_active IS DISTINCT FROM NEW.is_active
      OR OLD.can_upload IS DISTINCT FROM NEW.can_upload OR OLD.can_train IS DISTINCT FROM NEW.can_train
      OR OLD.can_deploy IS DISTINCT FROM NEW.can_deploy OR OLD.can_download IS DISTINCT FROM NEW.can_download
      OR OLD.can_buy IS DISTINCT FROM NEW.can_buy OR OLD.tier IS DISTINCT FROM NEW.tier)
EXECUTE FUNCTION public.users_privileges_guard();

CREATE TRIGGER user_sessions_guard
BEFORE UPDATE ON user_sessions
FOR EACH ROW
EXECUTE FUNCTION public.user_sessions_guard();
