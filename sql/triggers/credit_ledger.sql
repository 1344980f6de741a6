-- The credit ledger: append-only, and the one way credits move.
--
-- Rules (each has a test in tests/test_credit_ledger.py):
--   * an entry locks its user's row, checks the balance and sets balance_after in
--     one statement; the users.credit_balance update and the entry commit together;
--   * a balance never goes below zero                      -> ML001 insufficient_credits
--   * refunds name a charged job and never exceed it       -> ML004 refund_exceeds_charge
--   * a soft-deleted user cannot buy                       -> ML005 user_deleted
--   * UPDATE, DELETE and TRUNCATE of the ledger fail        -> ML002 ledger_immutable
-- Declarative rules sit on the table itself (models/credit_transaction.py): the sign
-- of each type's amount, one charge and one refund per job, unique Stripe payment ids.
-- Invariant for every user: credit_balance = sum(amount) = latest balance_after.

CREATE OR REPLACE FUNCTION public.credit_tx_before_insert()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_charged integer;
    v_balance integer;
    v_deleted boolean;
BEGIN
    IF NEW.type = 'refund' THEN
        SELECT -t.amount INTO v_charged
          FROM public.credit_transactions AS t
         WHERE t.job_id = NEW.job_id AND t.type = 'consumption';
        IF v_charged IS NULL THEN
            RAISE EXCEPTION 'job % was never charged, so it cannot be refunded', NEW.job_id
                USING ERRCODE = 'ML004';
        ELSIF NEW.amount > v_charged THEN
            RAISE EXCEPTION 'refund of % credits exceeds the % charged for job %',
                NEW.amount, v_charged, NEW.job_id
                USING ERRCODE = 'ML004';
        END IF;
    END IF;

    -- One statement takes the row lock, applies the rule and computes the balance.
    UPDATE public.users AS u
       SET credit_balance = u.credit_balance + NEW.amount
     WHERE u.id = NEW.user_id
       AND u.credit_balance + NEW.amount >= 0
       AND NOT (u.is_deleted AND NEW.type = 'purchase')
    RETURNING u.credit_balance INTO NEW.balance_after;

    IF NOT FOUND THEN
        SELECT u.credit_balance, u.is_deleted INTO v_balance, v_deleted
          FROM public.users AS u WHERE u.id = NEW.user_id;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'user % does not exist', NEW.user_id
                USING ERRCODE = 'foreign_key_violation',
                      CONSTRAINT = 'fk_credit_transactions_user_id_users';
        ELSIF v_deleted AND NEW.type = 'purchase' THEN
            RAISE EXCEPTION 'user % is deleted and cannot buy credits', NEW.user_id
                USING ERRCODE = 'ML005';
        ELSE
            RAISE EXCEPTION 'insufficient credits: balance %, % of %',
                v_balance, NEW.type, NEW.amount
                USING ERRCODE = 'ML001',
                      DETAIL = format('balance=%s amount=%s', v_balance, NEW.amount);
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION public.credit_tx_immutable()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'credit_transactions is an append-only ledger: % is not allowed', TG_OP
        USING ERRCODE = 'ML002',
              HINT = 'correct a mistake with a new entry (a refund or an adjustment)';
END;
$$;

CREATE TRIGGER credit_tx_before_insert
BEFORE INSERT ON credit_transactions
FOR EACH ROW EXECUTE FUNCTION public.credit_tx_before_insert();

CREATE TRIGGER credit_tx_no_update_delete
BEFORE UPDATE OR DELETE ON credit_transactions
FOR EACH ROW EXECUTE FUNCTION public.credit_tx_immutable();

CREATE TRIGGER credit_tx_no_truncate
BEFORE TRUNCATE ON credit_transactions
FOR EACH STATEMENT EXECUTE FUNCTION public.credit_tx_immutable();
