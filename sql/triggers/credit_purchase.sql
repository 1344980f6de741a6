-- What may be bought (database.credits.purchase is the usual caller; raw SQL is held
-- to the same rules). Fires before credit_tx_before_insert (triggers of one event
-- fire in name order), so a refused purchase never touches the balance:
--   * a purchase's amount is positive                 -> 23514 ck_credit_transactions_amount_sign
--   * the package is on sale (is_active)              -> ML007 package_unavailable
--   * the user's tier may buy it: pro_only is for pro and enterprise users,
--     enterprise_only for enterprise users            -> ML008 package_tier_restricted
--   * the amount is exactly the package's credits     -> ML009 purchase_amount_mismatch
--   * it names a package (checked first) and a payment reference (checked
--     last; stripe_payment_id: a Stripe payment id, or the API's
--     dev:<user>:<key> for a development purchase)    -> ML020 purchase_unpaid
-- Credit that comes from anywhere else is an adjustment (credit_adjustment.sql).
-- The package row is share-locked, so deactivating a package waits for the
-- purchases that saw it active, and none commits after it.

CREATE OR REPLACE FUNCTION public.credit_purchase_rules()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_active boolean;
    v_credits integer;
    v_restriction public.credit_tier_restriction;
    v_name text;
    v_tier public.user_tier;
BEGIN
    IF NEW.user_id IS NULL OR NEW.amount IS NULL THEN
        RETURN NEW;  -- credit_tx_before_insert refuses it (23502)
    END IF;
    IF NEW.amount <= 0 THEN
        RAISE EXCEPTION 'a purchase adds credits: amount % is not positive', NEW.amount
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'ck_credit_transactions_amount_sign';
    END IF;
    IF NEW.package_id IS NULL THEN
        RAISE EXCEPTION 'a purchase names the package bought: package_id is missing'
            USING ERRCODE = 'ML020',
                  HINT = 'credit given for any other reason is an adjustment, made by an operator';
    END IF;

    SELECT p.is_active, p.credits, p.tier_restriction, p.name
      INTO v_active, v_credits, v_restriction, v_name
      FROM public.credit_packages AS p
     WHERE p.id = NEW.package_id
       FOR SHARE;
    IF NOT FOUND THEN
        RETURN NEW;  -- fk_credit_transactions_package_id_credit_packages refuses it
    END IF;

    IF NOT v_active THEN
        RAISE EXCEPTION 'credit package "%" is not for sale', v_name
            USING ERRCODE = 'ML007';
    END IF;

    IF v_restriction <> 'none' THEN
        -- The lock credit_tx_before_insert takes next anyway: the tier cannot change
        -- between this check and the commit.
        SELECT u.tier INTO v_tier
          FROM public.users AS u
         WHERE u.id = NEW.user_id
           FOR NO KEY UPDATE;
        IF FOUND AND NOT (
               (v_restriction = 'pro_only' AND v_tier IN ('pro', 'enterprise'))
            OR (v_restriction = 'enterprise_only' AND v_tier = 'enterprise')) THEN
            RAISE EXCEPTION 'credit package "%" is %, and the user is on the % tier',
                v_name, v_restriction, v_tier
                USING ERRCODE = 'ML008';
        END IF;
    END IF;

    IF NEW.amount <> v_credits THEN
        RAISE EXCEPTION 'a purchase of package "%" adds % credits, not %',
            v_name, v_credits, NEW.amount
            USING ERRCODE = 'ML009',
                  DETAIL = format('credits=%s amount=%s', v_credits, NEW.amount);
    END IF;

    IF NEW.stripe_payment_id IS NULL OR btrim(NEW.stripe_payment_id) = '' THEN
        RAISE EXCEPTION 'a purchase names its payment: stripe_payment_id is missing'
            USING ERRCODE = 'ML020',
                  HINT = 'the Stripe payment id, or dev:<user>:<key> for a development purchase';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER credit_purchase_rules
BEFORE INSERT ON credit_transactions
FOR EACH ROW
WHEN (NEW.type = 'purchase')
EXECUTE FUNCTION public.credit_purchase_rules();
