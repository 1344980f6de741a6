-- Adjustments: credit that comes from no purchase and no job (a goodwill gesture, a
-- correction) is an operator's act, never the applications'.
--
--   * an adjustment is written by the ledger's owner (the migrator), or through
--     public.credit_adjust(), which runs as the owner and whose EXECUTE
--     `automl-db grant --operator ROLE` gives to operator roles; any other role,
--     the applications' among them, is refused           -> ML021 adjustment_not_allowed
--   * it names who made it (actor) and why (description): the check constraint
--     ck_credit_transactions_adjustment_has_actor_and_reason
--
-- The test is on the role running the INSERT (current_user), so this function is
-- not SECURITY DEFINER: inside credit_adjust() that role is the owner. It fires
-- before credit_tx_before_insert (name order), so a refused adjustment never
-- touches the balance; and only for adjustments, so charges pay nothing for it.

CREATE OR REPLACE FUNCTION public.credit_adjustment_rules()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF NOT pg_has_role(current_user,
                       (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = TG_RELID),
                       'USAGE') THEN
        RAISE EXCEPTION 'role % may not write adjustments: an adjustment of % credits is an operator''s act',
            current_user, NEW.amount
            USING ERRCODE = 'ML021',
                  HINT = 'operators call public.credit_adjust() (automl-db grant --operator ROLE)';
    END IF;
    RETURN NEW;
END;
$$;

-- The operators' one way to move credits by hand: one adjustment entry, returned.
-- p_idempotency_key (NULL for none), when given, makes a retry fail with 23505 on
-- uq_credit_transactions_idempotency_key instead of adjusting twice
-- (database.credits.adjust looks the earlier entry up first and returns it).
CREATE OR REPLACE FUNCTION public.credit_adjust(p_user_id uuid, p_amount integer, p_reason text, p_actor text, p_idempotency_key text)
RETURNS SETOF public.credit_transactions
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
    INSERT INTO public.credit_transactions (user_id, type, amount, description, actor, idempotency_key)
    VALUES (p_user_id, 'adjustment', p_amount, p_reason, p_actor, p_idempotency_key)
    RETURNING *;
$$;

CREATE TRIGGER credit_adjustment_rules
BEFORE INSERT ON credit_transactions
FOR EACH ROW
WHEN (NEW.type = 'adjustment')
EXECUTE FUNCTION public.credit_adjustment_rules();
