-- Billing (issue 16): price books, the price lines of a job, and billing alerts.
-- The Python side is database/billing.py; routers and the worker only call it.
--
-- Price books (price_books, price_items): a tier's prices for a span of time.
--   * two books of one tier never overlap   -> 23P01, the exclusion constraints
--     ex_price_books_<tier>_span (written in the migration: one per tier, as the
--     embedded PostgreSQL has no btree_gist for the tier's equality)
--   * an item of a book in force or past (effective_from <= now()) is history:
--     UPDATE or DELETE refused              -> ML090 price_item_immutable
--     (changing prices is a new book: database.billing.set_prices)
--   * a book in force or past keeps its tier, currency and start; it may only be
--     closed from now on (effective_to >= now()), never deleted
--                                           -> ML091 price_book_immutable
-- Metered use (usage_events) is priced by the book in force for the user's tier as
-- it is recorded (usage_events_apply_price; ML093 without a book).
-- A job's price lines (job_price_items): credits = quantity x the item's
-- credits_per_unit, written here; never updated -> ML092 job_price_immutable.
--
-- Billing alerts: checked by the ledger's own balance trigger
-- (credit_tx_before_insert, credit_ledger.sql). The user's row carries the next
-- thresholds (users.alert_below, alert_rearm, alert_spend_above, with alert_spend
-- and alert_spend_until for the month's spend; kept by billing_alerts_sync), so the
-- balance UPDATE compares the new balance and spend with them (RETURNING: no
-- statement more) and billing_alerts_check runs only for an entry that crossed one
-- (c16c00000001: calling it on every entry of a user with an alert cost that user's
-- charges +22% of CPU; docs/performance.md). It holds the user's row lock, so one
-- user's firings are decided one entry at a time:
--   * balance_below fires when the balance goes from >= threshold (armed) to
--     < threshold, and re-arms when it is back at or above the threshold;
--   * spend_above fires once per calendar month (UTC) when the month's charges,
--     net of refunds, go above the threshold (on a charge).
-- Each firing is one row of billing_alert_events (the outbox), in the
-- transaction of the entry that crossed; the worker delivers it.

CREATE OR REPLACE FUNCTION public.price_items_immutable()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_from timestamptz;
BEGIN
    SELECT b.effective_from INTO v_from FROM public.price_books AS b WHERE b.id = OLD.price_book_id;
    IF v_from IS NOT NULL AND v_from <= now() THEN
        RAISE EXCEPTION 'price item % (%) belongs to a price book in force since %: % refused',
                OLD.id, OLD.sku, v_from, TG_OP
            USING ERRCODE = 'ML090',
                  HINT = 'change prices with a new price book (automl-db prices set)';
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION public.price_books_guard()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF OLD.effective_from > now() THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;  -- not in force yet
    END IF;
    IF TG_OP = 'DELETE' THEN
        RAISE EXCEPTION 'price book % has been in force since %: it cannot be deleted',
                OLD.id, OLD.effective_from
            USING ERRCODE = 'ML091';
    END IF;
    IF (NEW.tier, NEW.currency, NEW.effective_from, NEW.id)
       IS DISTINCT FROM (OLD.tier, OLD.currency, OLD.effective_from, OLD.id) THEN
        RAISE EXCEPTION 'price book % has been in force since %: its tier, currency and start are history',
                OLD.id, OLD.effective_from
            USING ERRCODE = 'ML091',
                  HINT = 'close it (effective_to from now on) and start a new book';
    END IF;
    IF NEW.effective_to IS DISTINCT FROM OLD.effective_to THEN
        IF (OLD.effective_to IS NOT NULL AND OLD.effective_to <= now())
           OR (NEW.effective_to IS NOT NULL AND NEW.effective_to < now()) THEN
            RAISE EXCEPTION 'price book %: its end can change only from now on (% to %)',
                    OLD.id, OLD.effective_to, NEW.effective_to
                USING ERRCODE = 'ML091';
        END IF;
    END IF;
    RETURN NEW;
END;
$$;

-- Metered use (issue 14's usage_events: predicted_rows, batch_rows) is priced by the
-- book in force for the user's tier when it is recorded: the price of one unit in
-- micro-credits (the item's credits per 1,000 units x 1,000). ML093 when the tier
-- has no book in force, or the book no such item. A price change therefore applies
-- to the usage recorded after it; usage recorded before keeps its price (and what
-- was charged for it stays in the ledger).
CREATE OR REPLACE FUNCTION public.billing_usage_price_micro(p_user uuid, p_sku text)
RETURNS bigint
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_tier public.user_tier;
    v_price bigint;
    v_at timestamptz := clock_timestamp();
BEGIN
    SELECT u.tier INTO v_tier FROM public.users AS u WHERE u.id = p_user;
    IF NOT FOUND THEN
        RETURN NULL;  -- no such user: the row's foreign key refuses it
    END IF;
    SELECT i.credits_per_unit INTO v_price
      FROM public.price_books AS b
      JOIN public.price_items AS i ON i.price_book_id = b.id AND i.sku = p_sku
     WHERE b.tier = v_tier
       AND b.effective_from <= v_at
       AND (b.effective_to IS NULL OR b.effective_to > v_at)
     ORDER BY b.effective_from DESC
     LIMIT 1;
    IF v_price IS NULL THEN
        RAISE EXCEPTION 'no % price book in force prices %', v_tier, p_sku
            USING ERRCODE = 'ML093';
    END IF;
    RETURN v_price * 1000;
END;
$$;

-- Every usage event is priced here, whatever unit price the client sent (named to
-- run before metering's usage_events_before_insert, which adds the event's cost to
-- the user's meter: BEFORE triggers run in name order).
CREATE OR REPLACE FUNCTION public.usage_events_apply_price()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF NEW.user_id IS NOT NULL AND NEW.sku IS NOT NULL THEN
        NEW.unit_price_micro := public.billing_usage_price_micro(NEW.user_id, NEW.sku::text);
    END IF;
    RETURN NEW;
END;
$$;

CREATE OR REPLACE FUNCTION public.job_price_items_fill()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        RAISE EXCEPTION 'the price lines of job % are what it cost: UPDATE refused', OLD.job_id
            USING ERRCODE = 'ML092';
    END IF;
    SELECT NEW.quantity * i.credits_per_unit INTO NEW.credits
      FROM public.price_items AS i WHERE i.id = NEW.price_item_id;
    IF NEW.credits IS NULL THEN
        NEW.credits := 0;  -- no such item: its foreign key refuses the row
    END IF;
    RETURN NEW;
END;
$$;

-- The alerts of one user after one ledger entry, called by credit_tx_before_insert
-- (holding the user's row lock) only when the entry crossed one of the user's
-- next thresholds (users.alert_*, kept by billing_alerts_sync): p_balance is the
-- balance after the entry, p_spent what the entry adds to the month's spend (its
-- charge, or minus its refund; 0 for the other types). The entry is not in the
-- ledger yet (a BEFORE trigger), the earlier entries of its statement are; the
-- balance UPDATE has already added p_spent to users.alert_spend.
CREATE OR REPLACE FUNCTION public.billing_alerts_check(p_user uuid, p_balance bigint, p_spent bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    r record;
    v_event uuid;
    v_spend bigint;
    v_until timestamptz;
    v_now timestamptz := clock_timestamp();
    v_month_start timestamptz := date_trunc('month', clock_timestamp(), 'UTC');
BEGIN
    SELECT u.alert_spend, u.alert_spend_until INTO v_spend, v_until
      FROM public.users AS u WHERE u.id = p_user;
    IF v_until IS NOT NULL AND v_now >= v_until THEN
        -- A new month: its spend is counted again from the ledger (once a month per
        -- user with a spend_above alert), this entry included.
        SELECT coalesce(-sum(t.amount), 0) + p_spent INTO v_spend
          FROM public.credit_transactions AS t
         WHERE t.user_id = p_user
           -- The month as ix_credit_transactions_user_id_month names it: one key.
           AND date_trunc('month', t.created_at AT TIME ZONE 'UTC') = v_month_start AT TIME ZONE 'UTC'
           AND t.created_at >= v_month_start
           AND t.type IN ('consumption', 'refund');
        UPDATE public.users
           SET alert_spend = v_spend,
               alert_spend_until = (v_month_start AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC'
         WHERE id = p_user;
    END IF;
    -- Read without a lock: the user's entries are serialized by the user's row lock,
    -- and a transition is an UPDATE that tests the state again (armed, fired_month).
    -- Each transition's UPDATE of billing_alerts runs billing_alerts_sync, which
    -- moves the user's next thresholds.
    FOR r IN
        SELECT a.id, a.kind, a.threshold, a.armed, a.fired_month
          FROM public.billing_alerts AS a
         WHERE a.user_id = p_user AND a.active
         ORDER BY a.id
    LOOP
        IF r.kind = 'balance_below' THEN
            IF r.armed AND p_balance < r.threshold THEN
                UPDATE public.billing_alerts SET armed = false WHERE id = r.id AND armed;
                IF FOUND THEN
                    v_event := gen_random_uuid();
                    INSERT INTO public.billing_alert_events (id, alert_id, user_id, kind, threshold, value, payload)
                    VALUES (v_event, r.id, p_user, r.kind, r.threshold, p_balance,
                            jsonb_build_object('id', v_event, 'type', 'billing_alert.balance_below',
                                               'alert_id', r.id, 'user_id', p_user,
                                               'threshold', r.threshold, 'balance', p_balance,
                                               'created', floor(extract(epoch FROM v_now))::bigint));
                END IF;
            ELSIF NOT r.armed AND p_balance >= r.threshold THEN
                UPDATE public.billing_alerts SET armed = true WHERE id = r.id;
            END IF;
        ELSIF r.fired_month IS DISTINCT FROM v_month_start AND p_spent > 0
              AND v_spend > r.threshold THEN  -- spend_above
            UPDATE public.billing_alerts SET fired_month = v_month_start
             WHERE id = r.id AND fired_month IS DISTINCT FROM v_month_start;
            IF FOUND THEN
                v_event := gen_random_uuid();
                INSERT INTO public.billing_alert_events (id, alert_id, user_id, kind, threshold, value, payload)
                VALUES (v_event, r.id, p_user, r.kind, r.threshold, v_spend,
                        jsonb_build_object('id', v_event, 'type', 'billing_alert.spend_above',
                                           'alert_id', r.id, 'user_id', p_user,
                                           'threshold', r.threshold, 'spend', v_spend,
                                           'month', to_char(v_month_start AT TIME ZONE 'UTC', 'YYYY-MM'),
                                           'created', floor(extract(epoch FROM v_now))::bigint));
            END IF;
        END IF;
    END LOOP;
    -- A new month re-arms the spend_above alerts fired last month, though none of
    -- their rows changed: move the thresholds here too.
    IF v_until IS NOT NULL AND v_now >= v_until THEN
        PERFORM public.billing_alerts_sync(p_user);
    END IF;
END;
$$;

-- The user's next thresholds (users.alert_*), from the user's active alerts:
--   alert_below       the highest armed balance_below threshold (fires below it)
--   alert_rearm       the lowest disarmed balance_below threshold (re-arms at it)
--   alert_spend_above the lowest spend_above threshold not fired this month
--   alert_spend       this month's spend (charges net of refunds), kept while the
--                     user has an active spend_above alert (else NULL), counted
--                     from the ledger when it starts or the month changes and then
--                     added to by the balance UPDATE of each entry
--   alert_spend_until when that month ends (UTC)
-- Run by billing_alerts_sync_trigger on every change of billing_alerts that can
-- move them, and by billing_alerts_check on a new month. Locks the user's row
-- first, so the spend is counted after every entry in flight committed.
CREATE OR REPLACE FUNCTION public.billing_alerts_sync(p_user uuid)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_month_start timestamptz := date_trunc('month', clock_timestamp(), 'UTC');
    v_until timestamptz;
    v_below bigint;
    v_rearm bigint;
    v_spend_above bigint;
    v_has_spend boolean;
    v_spend bigint;
    v_old_until timestamptz;
BEGIN
    v_until := (v_month_start AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
    SELECT u.alert_spend, u.alert_spend_until INTO v_spend, v_old_until
      FROM public.users AS u WHERE u.id = p_user FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RETURN;  -- the user is being deleted (billing_alerts cascades)
    END IF;
    SELECT max(a.threshold) FILTER (WHERE a.kind = 'balance_below' AND a.armed),
           min(a.threshold) FILTER (WHERE a.kind = 'balance_below' AND NOT a.armed),
           min(a.threshold) FILTER (WHERE a.kind = 'spend_above'
                                      AND a.fired_month IS DISTINCT FROM v_month_start),
           coalesce(bool_or(a.kind = 'spend_above'), false)
      INTO v_below, v_rearm, v_spend_above, v_has_spend
      FROM public.billing_alerts AS a
     WHERE a.user_id = p_user AND a.active;
    IF NOT v_has_spend THEN
        v_spend := NULL;
        v_until := NULL;
    ELSIF v_old_until IS DISTINCT FROM v_until OR v_spend IS NULL THEN
        -- A new statement after the row lock: every entry committed before it counts.
        SELECT coalesce(-sum(t.amount), 0) INTO v_spend
          FROM public.credit_transactions AS t
         WHERE t.user_id = p_user
           -- The month as ix_credit_transactions_user_id_month names it: one key.
           AND date_trunc('month', t.created_at AT TIME ZONE 'UTC') = v_month_start AT TIME ZONE 'UTC'
           AND t.created_at >= v_month_start
           AND t.type IN ('consumption', 'refund');
    END IF;
    UPDATE public.users AS u
       SET alert_below = v_below, alert_rearm = v_rearm, alert_spend_above = v_spend_above,
           alert_spend = v_spend, alert_spend_until = v_until
     WHERE u.id = p_user
       AND (u.alert_below, u.alert_rearm, u.alert_spend_above, u.alert_spend, u.alert_spend_until)
           IS DISTINCT FROM (v_below, v_rearm, v_spend_above, v_spend, v_until);
END;
$$;

CREATE OR REPLACE FUNCTION public.billing_alerts_sync_trigger()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM public.billing_alerts_sync(OLD.user_id);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.user_id IS DISTINCT FROM OLD.user_id) THEN
        PERFORM public.billing_alerts_sync(NEW.user_id);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER price_items_immutable
BEFORE UPDATE OR DELETE ON price_items
FOR EACH ROW EXECUTE FUNCTION public.price_items_immutable();

CREATE TRIGGER price_books_guard
BEFORE UPDATE OR DELETE ON price_books
FOR EACH ROW EXECUTE FUNCTION public.price_books_guard();

CREATE TRIGGER job_price_items_fill
BEFORE INSERT OR UPDATE ON job_price_items
FOR EACH ROW EXECUTE FUNCTION public.job_price_items_fill();

CREATE TRIGGER usage_events_apply_price
BEFORE INSERT ON usage_events
FOR EACH ROW EXECUTE FUNCTION public.usage_events_apply_price();

CREATE TRIGGER billing_alerts_sync
AFTER INSERT OR DELETE OR UPDATE OF active, user_id, kind, threshold, armed, fired_month
ON billing_alerts
FOR EACH ROW EXECUTE FUNCTION public.billing_alerts_sync_trigger();

-- updated_at, like every table's (updated_at.sql holds the function): an invoice's
-- status moves with Stripe's events.
CREATE TRIGGER set_updated_at
BEFORE UPDATE ON billing_invoices
FOR EACH ROW
WHEN (OLD.* IS DISTINCT FROM NEW.*)
EXECUTE FUNCTION public.set_updated_at();
