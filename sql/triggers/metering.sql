-- Metering: the inference request log, usage events, usage charges (issue 14).
--
-- Rules (tests/test_metering.py tries to break each):
--   * inference_requests is append-only: UPDATE, DELETE and TRUNCATE fail for every
--     role, the owner included (ML085); its partitions too (the row triggers are
--     cloned onto each partition; each partition gets its own TRUNCATE trigger
--     when made). Retention drops whole partitions (DDL by the owner), never DELETE.
--   * usage_events and usage_charges are append-only the same way (ML086).
--   * a usage event locks its user's meter (usage_meters), adds its cost to
--     pending_micro and is dated clock_timestamp() under that lock, so an
--     aggregation holding the lock sees every event dated before it; a duplicate
--     idempotency key is refused under the lock, before anything moves (an
--     INSERT ... ON CONFLICT DO NOTHING would move the meter and skip the row: don't).
--   * partitions are monthly, in UTC: [first of the month 00:00 UTC, first of the
--     next). public.inference_requests_partition_for(ts) makes the month of ts;
--     public.inference_requests_ensure_partitions(n) this month and the n next.

CREATE OR REPLACE FUNCTION public.inference_requests_append_only()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION 'inference_requests is append-only: % refused', TG_OP
        USING ERRCODE = 'ML085',
              HINT = 'old months are dropped whole (automl-db inference-retention)';
END;
$$;

CREATE OR REPLACE FUNCTION public.usage_append_only()
RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'ML086',
              HINT = 'usage is corrected by a new entry in the ledger (an adjustment)';
END;
$$;

CREATE OR REPLACE FUNCTION public.usage_events_before_insert()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    IF NEW.user_id IS NULL OR NEW.quantity IS NULL OR NEW.unit_price_micro IS NULL
       OR NEW.idempotency_key IS NULL THEN
        RETURN NEW;  -- the NOT NULL constraints refuse the row
    END IF;
    -- The meter's row lock: events of one user are applied one at a time, and an
    -- aggregation holding it sees every event dated before it.
    INSERT INTO public.usage_meters AS m (user_id, charged_through, pending_micro)
    VALUES (NEW.user_id, date_trunc('hour', clock_timestamp(), 'UTC'),
            NEW.quantity * NEW.unit_price_micro)
    ON CONFLICT (user_id) DO UPDATE
        SET pending_micro = m.pending_micro + EXCLUDED.pending_micro;
    IF EXISTS (SELECT 1 FROM public.usage_events AS e
                WHERE e.idempotency_key = NEW.idempotency_key) THEN
        RAISE EXCEPTION 'usage % was already recorded', NEW.idempotency_key
            USING ERRCODE = 'unique_violation',
                  CONSTRAINT = 'uq_usage_events_idempotency_key';
    END IF;
    NEW.created_at := clock_timestamp();
    RETURN NEW;
END;
$$;

-- The month partitions: public.partition_month / partition_months (partitions.sql,
-- shared with the audit trail). partition_for(ts) makes the month of ts (its name,
-- NULL when it existed); ensure_partitions(n) this month and the n next.
CREATE OR REPLACE FUNCTION public.inference_requests_partition_for(p_at timestamptz)
RETURNS text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    RETURN public.partition_month('inference_requests', p_at, 'inference_requests_append_only');
END;
$$;

CREATE OR REPLACE FUNCTION public.inference_requests_ensure_partitions(p_months_ahead integer)
RETURNS SETOF text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    RETURN QUERY SELECT public.partition_months('inference_requests', now(), p_months_ahead,
                                                'inference_requests_append_only');
END;
$$;

-- Admission of a request before the model runs (database.metering.admit, and
-- database.deployments.admit_serving in the statement that reads the deployment), one call:
--   * the key's quotas, each one INSERT ... ON CONFLICT DO UPDATE ... WHERE used + n
--     <= limit: the counter row's lock orders concurrent admissions of one key in
--     every process; no row touched means the quota is spent  -> ML088 quota_exceeded
--     (DETAIL quota=... limit=... retry_after=<seconds to the window's end>);
--   * the user's row lock (the ledger's), then, in a new statement and so a new
--     snapshot that sees every admission and record committed before the lock was
--     granted, a hold of p_amount micro-credits if the balance covers the meter
--     (uncharged usage and carry), the live holds and it      -> ML087 payment_required
--     (DETAIL needed=... available=...); an unknown user       -> ML089.
--   * the hold's amount: p_amount micro-credits, or, when p_amount is NULL (what the
--     apps pass), p_rows x the price of a predicted row in the book in force for the
--     user's tier (billing_usage_price_micro: the price the usage is recorded at, so
--     the hold is what the request will cost; ML093 when no book prices it).
-- A refusal raises: the caller's transaction (or savepoint) undoes the counting.
-- The hold's id is returned (NULL when nothing is held: p_amount <= 0), so the
-- request's record releases exactly its own hold (database.metering.record_requests).
CREATE OR REPLACE FUNCTION public.usage_hold(p_user uuid, p_key uuid, p_deployment uuid, p_rows bigint, p_amount bigint, p_request_id text, p_hold_seconds integer)
RETURNS uuid
LANGUAGE plpgsql
AS $$
DECLARE
    v_now timestamptz := now();
    v_rl integer;
    v_mq bigint;
    v_start timestamptz;
    v_available bigint;
    v_hold uuid;
    v_amount bigint := p_amount;
BEGIN
    IF p_key IS NOT NULL THEN
        SELECT k.rate_limit_per_minute, k.monthly_row_quota INTO v_rl, v_mq
          FROM public.api_keys AS k WHERE k.id = p_key;
        IF v_rl IS NOT NULL THEN
            v_start := date_trunc('minute', v_now);
            INSERT INTO public.api_key_usage_windows AS w (api_key_id, period, window_start, used)
            VALUES (p_key, 'minute', v_start, 1)
            ON CONFLICT (api_key_id, period, window_start) DO UPDATE SET used = w.used + 1
             WHERE w.used + 1 <= v_rl;
            IF NOT FOUND THEN
                RAISE EXCEPTION 'API key rate limit of % requests per minute reached', v_rl
                    USING ERRCODE = 'ML088',
                          DETAIL = format('quota=rate_limit_per_minute limit=%s retry_after=%s', v_rl,
                                          ceil(extract(epoch FROM v_start + interval '1 minute' - v_now))::int);
            END IF;
        END IF;
        IF v_mq IS NOT NULL AND p_rows > 0 THEN
            v_start := date_trunc('month', v_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
            IF p_rows <= v_mq THEN
                INSERT INTO public.api_key_usage_windows AS w (api_key_id, period, window_start, used)
                VALUES (p_key, 'month', v_start, p_rows)
                ON CONFLICT (api_key_id, period, window_start) DO UPDATE SET used = w.used + p_rows
                 WHERE w.used + p_rows <= v_mq;
            END IF;
            IF p_rows > v_mq OR NOT FOUND THEN
                RAISE EXCEPTION 'API key monthly quota of % rows reached (this request: % rows)', v_mq, p_rows
                    USING ERRCODE = 'ML088',
                          DETAIL = format('quota=monthly_row_quota limit=%s retry_after=%s', v_mq,
                                          ceil(extract(epoch FROM
                                               ((v_start AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'
                                               - v_now))::int);
            END IF;
        END IF;
    END IF;
    IF v_amount IS NULL THEN
        IF coalesce(p_rows, 0) <= 0 THEN
            RETURN NULL;
        END IF;
        -- NULL for an unknown user: refused below (ML089).
        v_amount := p_rows * public.billing_usage_price_micro(p_user, 'predicted_rows');
    END IF;
    IF v_amount <= 0 THEN
        RETURN NULL;
    END IF;
    -- A hold need not survive a crash of the server (it only stands for a request in
    -- flight): its commit does not wait for the WAL flush.
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM 1 FROM public.users AS u WHERE u.id = p_user FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist', p_user USING ERRCODE = 'ML089';
    END IF;
    INSERT INTO public.usage_holds (user_id, deployment_id, rows, amount_micro, request_id, expires_at)
    SELECT p_user, p_deployment, p_rows, v_amount, p_request_id,
           v_now + make_interval(secs => p_hold_seconds)
      FROM public.users AS u
     WHERE u.id = p_user
       AND u.credit_balance::bigint * 1000000
           - coalesce((SELECT m.pending_micro FROM public.usage_meters AS m
                        WHERE m.user_id = p_user), 0)
           - coalesce((SELECT sum(h.amount_micro) FROM public.usage_holds AS h
                        WHERE h.user_id = p_user AND h.expires_at > v_now), 0)
           >= v_amount
    RETURNING id INTO v_hold;
    IF NOT FOUND THEN
        SELECT u.credit_balance::bigint * 1000000
               - coalesce((SELECT m.pending_micro FROM public.usage_meters AS m
                            WHERE m.user_id = p_user), 0)
               - coalesce((SELECT sum(h.amount_micro) FROM public.usage_holds AS h
                            WHERE h.user_id = p_user AND h.expires_at > v_now), 0)
          INTO v_available
          FROM public.users AS u WHERE u.id = p_user;
        RAISE EXCEPTION 'insufficient credits for % rows: they cost % micro-credits, % available',
                p_rows, v_amount, greatest(v_available, 0)
            USING ERRCODE = 'ML087',
                  DETAIL = format('needed=%s available=%s', v_amount, v_available);
    END IF;
    RETURN v_hold;
END;
$$;

-- A serving process's credit lease (database.metering.CreditLeases): one hold taken
-- in bulk, from which the process admits requests of this user locally, without a
-- round trip each, until it is used up or expires; the key's quotas are still counted
-- per request (usage_hold with p_amount 0), so they hold exactly across processes.
--   * the price of a predicted row: the book in force for the user's tier
--     (billing_usage_price_micro; ML093 when none prices it); 0: nothing is held;
--   * the user's row lock, then, in a new snapshot, a hold of
--     greatest(needed, least(p_block_micro, available / 4)): the block, shrinking as
--     the balance runs low, down to the request's own cost near the limit, so other
--     processes find the rest; available < needed                -> ML087, as usage_hold;
--   * p_retire / p_retire_micro: the process's previous lease of the user, its unused
--     part given back in the same statement (its used part is given back by the
--     request log as its requests are recorded: database.metering.record_requests).
-- Returns the hold's id (NULL when the price is 0), the micro-credits held and the
-- price of a row they were held at.
CREATE OR REPLACE FUNCTION public.usage_lease(p_user uuid, p_rows bigint, p_block_micro bigint, p_retire uuid, p_retire_micro bigint, p_hold_seconds integer, OUT hold_id uuid, OUT amount_micro bigint, OUT price_micro bigint)
RETURNS record
LANGUAGE plpgsql
AS $$
DECLARE
    v_now timestamptz := now();
    v_needed bigint;
    v_available bigint;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    IF p_retire IS NOT NULL AND coalesce(p_retire_micro, 0) > 0 THEN
        -- Nothing left but the unused part (every request of the lease recorded): gone.
        DELETE FROM public.usage_holds AS h
         WHERE h.id = p_retire AND h.user_id = p_user AND h.amount_micro <= p_retire_micro;
        IF NOT FOUND THEN
            UPDATE public.usage_holds AS h SET amount_micro = h.amount_micro - p_retire_micro
             WHERE h.id = p_retire AND h.user_id = p_user;
        END IF;
    END IF;
    price_micro := public.billing_usage_price_micro(p_user, 'predicted_rows');
    IF price_micro IS NULL THEN
        RAISE EXCEPTION 'user % does not exist', p_user USING ERRCODE = 'ML089';
    END IF;
    v_needed := greatest(p_rows, 1) * price_micro;
    IF v_needed <= 0 THEN
        amount_micro := 0;
        RETURN;
    END IF;
    PERFORM 1 FROM public.users AS u WHERE u.id = p_user FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'user % does not exist', p_user USING ERRCODE = 'ML089';
    END IF;
    -- A new statement, so a new snapshot: every hold and record committed before the
    -- lock was granted is seen.
    SELECT u.credit_balance::bigint * 1000000
           - coalesce((SELECT m.pending_micro FROM public.usage_meters AS m
                        WHERE m.user_id = p_user), 0)
           - coalesce((SELECT sum(h.amount_micro) FROM public.usage_holds AS h
                        WHERE h.user_id = p_user AND h.expires_at > v_now), 0)
      INTO v_available
      FROM public.users AS u WHERE u.id = p_user;
    IF v_available < v_needed THEN
        RAISE EXCEPTION 'insufficient credits for % rows: they cost % micro-credits, % available',
                greatest(p_rows, 1), v_needed, greatest(v_available, 0)
            USING ERRCODE = 'ML087',
                  DETAIL = format('needed=%s available=%s', v_needed, v_available);
    END IF;
    amount_micro := greatest(v_needed, least(coalesce(p_block_micro, 0), v_available / 4));
    INSERT INTO public.usage_holds (user_id, deployment_id, rows, amount_micro, request_id, expires_at)
    VALUES (p_user, NULL, greatest(amount_micro / price_micro, 1), amount_micro, NULL,
            v_now + make_interval(secs => p_hold_seconds))
    RETURNING id INTO hold_id;
END;
$$;

-- The same admission, its hold's id not needed (kept for callers of the first version).
CREATE OR REPLACE FUNCTION public.usage_admit(p_user uuid, p_key uuid, p_deployment uuid, p_rows bigint, p_amount bigint, p_request_id text, p_hold_seconds integer)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM public.usage_hold(p_user, p_key, p_deployment, p_rows, p_amount, p_request_id,
                              p_hold_seconds);
END;
$$;

CREATE TRIGGER inference_requests_no_update_delete
BEFORE UPDATE OR DELETE ON inference_requests
FOR EACH ROW EXECUTE FUNCTION public.inference_requests_append_only();

CREATE TRIGGER inference_requests_no_truncate
BEFORE TRUNCATE ON inference_requests
FOR EACH STATEMENT EXECUTE FUNCTION public.inference_requests_append_only();

CREATE TRIGGER usage_events_before_insert
BEFORE INSERT ON usage_events
FOR EACH ROW EXECUTE FUNCTION public.usage_events_before_insert();

CREATE TRIGGER usage_events_no_update_delete
BEFORE UPDATE OR DELETE ON usage_events
FOR EACH ROW EXECUTE FUNCTION public.usage_append_only();

CREATE TRIGGER usage_events_no_truncate
BEFORE TRUNCATE ON usage_events
FOR EACH STATEMENT EXECUTE FUNCTION public.usage_append_only();

CREATE TRIGGER usage_charges_no_update_delete
BEFORE UPDATE OR DELETE ON usage_charges
FOR EACH ROW EXECUTE FUNCTION public.usage_append_only();

CREATE TRIGGER usage_charges_no_truncate
BEFORE TRUNCATE ON usage_charges
FOR EACH STATEMENT EXECUTE FUNCTION public.usage_append_only();
