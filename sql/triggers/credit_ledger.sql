-- The credit ledger: append-only, and the one way credits move.
--
-- Rules (each has a test in tests/test_credit_ledger.py):
--   * an entry locks its user's row, checks the balance and sets balance_after in
--     one statement; the users.credit_balance update and the entry commit together;
--   * a balance never goes below zero                      -> ML001 insufficient_credits
--   * refunds name a charged job and never exceed it       -> ML004 refund_exceeds_charge
--   * the job of a charge or refund is its user's own      -> ML095 job_not_owned
--     (c16e00000001, issue 16: the foreign key is job_id -> jobs.id alone, so the
--     job index is (job_id, type); the balance UPDATE below tests the owner, and
--     a job's owner never changes, jobs_user_id_immutable  -> ML096 job_owner_immutable)
--   * a soft-deleted user cannot buy                       -> ML005 user_deleted
--   * UPDATE, DELETE and TRUNCATE of the ledger fail        -> ML002 ledger_immutable
--   * duplicates (a Stripe payment, a job's charge or refund, an entry id) are
--     refused here, under the user's row lock (and, for the id, a transaction lock
--     on the id, as one id could be sent for two users), with the unique index's
--     name or ML002: the indexes alone would let INSERT ... ON CONFLICT DO NOTHING
--     skip a row after its balance had moved;
--   * a charge of usage (a consumption naming no job) is accounted for by the
--     usage_charges row naming it (ledger_entry_id, its user, its credits), written in
--     the same transaction: checked at commit      -> ML094 usage_charge_unaccounted
--     (issue 16: the row carries neither a key nor a description; usage_charges is
--     unique per user, period start, deployment and sku, and describes the entry);
--   * an entry is dated when it is applied (clock_timestamp() under the row lock),
--     so the latest entry by created_at is the one that holds the balance.
--   * an entry that crosses one of its user's next alert thresholds (users.alert_*,
--     compared by the balance UPDATE itself) is checked against the user's alerts,
--     under the same lock (billing_alerts_check, billing.sql); no other entry pays
--     more than that comparison for alerts.
-- Declarative rules sit on the table itself (models/credit_transaction.py): the sign
-- of each type's amount, one charge and one refund per job (one unique index on
-- (job_id, type), issue 16), unique Stripe payment ids (a unique index on the id's
-- 64-bit key, hashtextextended(stripe_payment_id, 0), c16f00000001), the job existing
-- (job_id -> jobs.id; its owner is tested here, ML095).
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
    v_alert boolean;
    v_payment text;
BEGIN
    -- A malformed row is refused by the constraint it breaks, before any balance
    -- is read (BEFORE triggers run ahead of NOT NULL and CHECK constraints).
    IF NEW.user_id IS NULL OR NEW.type IS NULL OR NEW.amount IS NULL THEN
        RAISE EXCEPTION 'credit_transactions: user_id, type and amount are required'
            USING ERRCODE = 'not_null_violation';
    END IF;
    IF NOT ((NEW.type = 'purchase' AND NEW.amount > 0) OR (NEW.type = 'consumption' AND NEW.amount < 0)
            OR (NEW.type = 'refund' AND NEW.amount > 0) OR (NEW.type = 'adjustment' AND NEW.amount <> 0)) THEN
        RAISE EXCEPTION 'a % of % credits has the wrong sign', NEW.type, NEW.amount
            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_credit_transactions_amount_sign';
    END IF;
    -- A consumption charges a job, or usage (database.metering: no job; its
    -- usage_charges row, written in the same transaction, is unique per user,
    -- period, deployment and sku and holds what was used: credit_tx_usage_accounted
    -- checks it at commit, ML094).
    IF (NEW.type = 'consumption' AND NEW.job_id IS NOT NULL AND NEW.idempotency_key IS NOT NULL)
       OR (NEW.type = 'refund' AND NEW.job_id IS NULL)
       OR (NEW.type NOT IN ('consumption', 'refund') AND NEW.job_id IS NOT NULL) THEN
        RAISE EXCEPTION 'a % % a job', NEW.type,
            CASE WHEN NEW.job_id IS NULL THEN 'needs' ELSE 'cannot name' END
            USING ERRCODE = 'check_violation',
                  CONSTRAINT = 'ck_credit_transactions_job_only_for_charges';
    END IF;

    -- Entries of one id, for whatever user, are applied one at a time: the lock is
    -- held to the end of the transaction, and every statement below starts after it
    -- was granted, so it sees an entry of this id that committed meanwhile. Without
    -- it, two concurrent INSERT ... ON CONFLICT (id) DO NOTHING of one new id both
    -- passed the id test (its snapshot predates the other's commit) and the second
    -- moved the balance, then skipped its row on the conflict. Costs one statement
    -- per entry (docs/performance.md).
    PERFORM pg_advisory_xact_lock(hashtextextended('ledger-id:' || NEW.id::text, 0));

    -- Duplicates are tested under the user's row lock, so one user's are checked one
    -- at a time. A purchase with a payment id and a refund lock the row first; a
    -- consumption (the common charge) tests its job after the balance UPDATE below,
    -- which takes the same lock: one statement fewer per charge, and a duplicate
    -- still raises before the INSERT goes on, undoing the UPDATE with it.
    IF NEW.stripe_payment_id IS NOT NULL OR NEW.type = 'refund'
       OR NEW.idempotency_key IS NOT NULL THEN
        PERFORM 1 FROM public.users AS u WHERE u.id = NEW.user_id FOR NO KEY UPDATE;
        IF NEW.idempotency_key IS NOT NULL THEN
            -- Like a payment id: a key could be sent for two users, serialize on it.
            PERFORM pg_advisory_xact_lock(hashtextextended('idem:' || NEW.idempotency_key, 0));
            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t
                        WHERE t.idempotency_key = NEW.idempotency_key) THEN
                RAISE EXCEPTION 'idempotency key % was already used', NEW.idempotency_key
                    USING ERRCODE = 'unique_violation',
                          CONSTRAINT = 'uq_credit_transactions_idempotency_key';
            END IF;
        END IF;
        IF NEW.stripe_payment_id IS NOT NULL THEN
            -- One payment id could be sent for two users: serialize on the id too.
            -- The unique index is on the id's 64-bit key, hashtextextended(id, 0)
            -- (c16f00000001, issue 16: 16-byte index tuples, not the text's 40), so
            -- the test looks the key up: the entry found is this payment's, or
            -- (about n^2 / 2^65 for n payments) another id of the same key, which
            -- the index refuses too: said so, with both ids.
            PERFORM pg_advisory_xact_lock(hashtextextended('stripe:' || NEW.stripe_payment_id, 0));
            SELECT t.stripe_payment_id INTO v_payment
              FROM public.credit_transactions AS t
             WHERE hashtextextended(t.stripe_payment_id, 0) = hashtextextended(NEW.stripe_payment_id, 0);
            IF v_payment = NEW.stripe_payment_id THEN
                RAISE EXCEPTION 'stripe payment % was already credited', NEW.stripe_payment_id
                    USING ERRCODE = 'unique_violation',
                          CONSTRAINT = 'uq_credit_transactions_stripe_payment_id';
            ELSIF v_payment IS NOT NULL THEN
                RAISE EXCEPTION 'stripe payment % has the 64-bit key of payment %, already credited',
                    NEW.stripe_payment_id, v_payment
                    USING ERRCODE = 'unique_violation',
                          CONSTRAINT = 'uq_credit_transactions_stripe_payment_id',
                          DETAIL = format('key=%s', hashtextextended(NEW.stripe_payment_id, 0)),
                          HINT = 'credit it with an adjustment (docs/billing.md)';
            END IF;
        END IF;
        IF NEW.job_id IS NOT NULL THEN  -- a refund here (see the two IFs below)
            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t
                        WHERE t.job_id = NEW.job_id AND t.type = NEW.type) THEN
                RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type
                    USING ERRCODE = 'unique_violation', DETAIL = 'type=' || NEW.type::text,
                          CONSTRAINT = 'uq_credit_transactions_job_id_type';
            END IF;
        END IF;
    END IF;
    -- An entry id that exists already is refused before the balance moves. For
    -- every type but refunds that test is part of the balance UPDATE below (NOT
    -- EXISTS, which sees every entry of this id committed before the id lock above
    -- was granted): as a statement of its own it cost a fifth of the trigger's time
    -- per charge (docs/performance.md). A refund tests it first, as its rules come next.
    IF NEW.type = 'refund' THEN
        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id) THEN
            RAISE EXCEPTION 'ledger entry % already exists and cannot be replaced', NEW.id
                USING ERRCODE = 'ML002';
        END IF;
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
    -- It also adds the entry's spend (a charge, minus a refund) to the month's
    -- (users.alert_spend, NULL unless the user has a spend_above alert: NULL stays
    -- NULL) and tells whether the entry crossed one
    -- of the user's next alert thresholds (users.alert_*, billing.sql; all NULL for a
    -- user without alerts, so the test is NULL, i.e. no). A charge is the only entry
    -- that adds to the spend (a positive spend).
    UPDATE public.users AS u
       SET credit_balance = u.credit_balance + NEW.amount,
           alert_spend = u.alert_spend
                         - CASE WHEN NEW.type IN ('consumption', 'refund') THEN NEW.amount ELSE 0 END
     WHERE u.id = NEW.user_id
       AND u.credit_balance + NEW.amount >= 0
       AND NOT (u.is_deleted AND NEW.type = 'purchase')
       AND NOT EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id)
       -- The job is the user's own (ML095). No OR: a NULL job_id matches no job.
       -- A job's owner never changes (jobs_user_id_immutable) and a job named by
       -- the ledger is never deleted (the foreign key), so this holds for good.
       AND NOT EXISTS (SELECT 1 FROM public.jobs AS j
                        WHERE j.id = NEW.job_id AND j.user_id <> NEW.user_id)
    RETURNING u.credit_balance,
              u.credit_balance < u.alert_below OR u.credit_balance >= u.alert_rearm
              OR (u.alert_spend > u.alert_spend_above AND NEW.type = 'consumption')
              OR (u.alert_spend_until IS NOT NULL AND clock_timestamp() >= u.alert_spend_until)
         INTO NEW.balance_after, v_alert;

    IF NOT FOUND THEN
        IF NEW.type = 'consumption' THEN
            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t
                        WHERE t.job_id = NEW.job_id AND t.type = 'consumption') THEN
                RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type
                    USING ERRCODE = 'unique_violation', DETAIL = 'type=consumption',
                          CONSTRAINT = 'uq_credit_transactions_job_id_type';
            END IF;
        END IF;
        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id) THEN
            RAISE EXCEPTION 'ledger entry % already exists and cannot be replaced', NEW.id
                USING ERRCODE = 'ML002';
        END IF;
        IF NEW.job_id IS NOT NULL THEN
            IF EXISTS (SELECT 1 FROM public.jobs AS j
                        WHERE j.id = NEW.job_id AND j.user_id <> NEW.user_id) THEN
                RAISE EXCEPTION 'job % is another user''s: a % names a job of its own user',
                    NEW.job_id, NEW.type
                    USING ERRCODE = 'ML095',
                          DETAIL = format('job_id=%s user_id=%s', NEW.job_id, NEW.user_id);
            END IF;
        END IF;
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
    -- The user's row is locked now (a new statement, a new snapshot): a charge of
    -- the same job that committed first is seen here. (Two IFs, not one with AND: a
    -- condition holding a subquery is a query of its own, and one whose first half
    -- folds to false for most rows is planned again on every call, the plan cache
    -- finding each custom plan cheaper than a generic one.)
    IF NEW.type = 'consumption' THEN
        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t
                    WHERE t.job_id = NEW.job_id AND t.type = 'consumption') THEN
            RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type
                USING ERRCODE = 'unique_violation', DETAIL = 'type=consumption',
                      CONSTRAINT = 'uq_credit_transactions_job_id_type';
        END IF;
    END IF;
    -- Billing alerts (billing.sql), only when the entry crossed a threshold: the
    -- test came back with the balance, so the other entries pay nothing more.
    IF v_alert THEN
        PERFORM public.billing_alerts_check(NEW.user_id, NEW.balance_after,
            CASE WHEN NEW.type IN ('consumption', 'refund') THEN -NEW.amount ELSE 0 END);
    END IF;
    NEW.created_at := clock_timestamp();
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

-- A charge of usage is accounted for by its usage_charges row (database.metering
-- writes both in one transaction), checked at commit: deferred, and queued only for
-- the entries it concerns (the WHEN clause), so no other entry pays for it.
-- A job's owner never changes (ML096): the ledger's test of a charge's or refund's
-- job (credit_tx_before_insert, ML095) then holds for good. It was the composite
-- foreign key (job_id, user_id) -> jobs (id, user_id) before c16e00000001; the
-- key is job_id alone now, so its index is (job_id, type) (issue 16, the ledger's
-- weight). Every job, charged or not: nothing moves a job to another user.
CREATE OR REPLACE FUNCTION public.jobs_user_id_immutable()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'job % belongs to user % and cannot be given to another', OLD.id, OLD.user_id
        USING ERRCODE = 'ML096',
              DETAIL = format('job_id=%s user_id=%s', OLD.id, OLD.user_id);
END;
$$;

CREATE OR REPLACE FUNCTION public.credit_tx_usage_accounted()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM public.usage_charges AS c
                    WHERE c.ledger_entry_id = NEW.id AND c.user_id = NEW.user_id
                      AND c.credits = -NEW.amount) THEN
        RAISE EXCEPTION 'ledger entry % charges % credits of usage that no usage charge accounts for',
            NEW.id, -NEW.amount
            USING ERRCODE = 'ML094',
                  HINT = 'charge usage with database.metering.charge_usage: it writes the usage_charges row naming the entry';
    END IF;
    RETURN NULL;
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

CREATE TRIGGER jobs_user_id_immutable
BEFORE UPDATE OF user_id ON jobs
FOR EACH ROW
WHEN (OLD.user_id IS DISTINCT FROM NEW.user_id)
EXECUTE FUNCTION public.jobs_user_id_immutable();

CREATE CONSTRAINT TRIGGER credit_tx_usage_accounted
AFTER INSERT ON credit_transactions
DEFERRABLE INITIALLY DEFERRED
FOR EACH ROW
WHEN (NEW.type = 'consumption' AND NEW.job_id IS NULL)
EXECUTE FUNCTION public.credit_tx_usage_accounted();
