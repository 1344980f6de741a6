-- Monthly partitions of the partitioned logs (audit_events, inference_requests): one
-- copy of the calendar, the locking and the DDL, called by each log's own functions
-- (audit_events_ensure_partitions in audit.sql; inference_requests_partition_for and
-- inference_requests_ensure_partitions in metering.sql).
--
-- Rules (tests/test_partitions.py, tests/test_audit.py, tests/test_metering.py):
--   * a month is [first day 00:00 UTC, first day of the next month 00:00 UTC), named
--     <parent>_pYYYYMM; Dec 31 23:59:59.999 UTC is December's, Feb 29 February's;
--   * a finite instant only (NULL, infinity refused: invalid_parameter_value);
--     months ahead between 0 and 120;
--   * idempotent; concurrent callers queue on the parent's SHARE UPDATE EXCLUSIVE
--     lock (self-conflicting, not in the way of INSERTs; a relation lock, unlike an
--     advisory lock, makes the waiter read the catalog changes of the one before it,
--     so it finds the partition just made instead of making it twice);
--   * rows the parent's DEFAULT partition (if it has one) caught for the month move
--     into the new partition, under the setting automl.partition_maintenance that the
--     parent's append-only trigger lets through for its owner only;
--   * each new partition gets the parent's TRUNCATE refusal (<parent>_no_truncate,
--     calling p_no_truncate): a statement trigger on the parent does not fire for a
--     TRUNCATE of a partition.
-- Not SECURITY DEFINER, EXECUTE revoked from PUBLIC: only the owner's functions call
-- them (themselves SECURITY DEFINER where the apps' role may ask for a partition).

CREATE OR REPLACE FUNCTION public.partition_month(p_parent text, p_at timestamptz, p_no_truncate text)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_start timestamp;
    v_name text;
    v_lo text;
    v_hi text;
    v_default text;
    v_key text;
    v_found boolean := false;
BEGIN
    IF p_at IS NULL OR NOT isfinite(p_at) THEN
        RAISE EXCEPTION 'a partition needs a finite instant, not %', p_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_start := date_trunc('month', p_at AT TIME ZONE 'UTC');
    v_name := p_parent || '_p' || to_char(v_start, 'YYYYMM');
    IF to_regclass('public.' || v_name) IS NOT NULL THEN
        RETURN NULL;  -- the common case: no lock, no DDL
    END IF;
    EXECUTE format('LOCK TABLE public.%I IN SHARE UPDATE EXCLUSIVE MODE', p_parent);
    IF to_regclass('public.' || v_name) IS NOT NULL THEN
        RETURN NULL;  -- made by the caller we waited for
    END IF;
    v_lo := to_char(v_start, 'YYYY-MM-DD') || ' 00:00:00+00';
    v_hi := to_char(v_start + interval '1 month', 'YYYY-MM-DD') || ' 00:00:00+00';
    SELECT c.relname INTO v_default
      FROM pg_catalog.pg_inherits AS i
      JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid
     WHERE i.inhparent = ('public.' || quote_ident(p_parent))::regclass
       AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';
    IF v_default IS NOT NULL THEN
        SELECT a.attname INTO v_key
          FROM pg_catalog.pg_partitioned_table AS p
          JOIN pg_catalog.pg_attribute AS a
            ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]
         WHERE p.partrelid = ('public.' || quote_ident(p_parent))::regclass;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM public.%I AS d WHERE d.%I >= %L AND d.%I < %L)',
                       v_default, v_key, v_lo, v_key, v_hi)
           INTO v_found;
    END IF;
    IF v_found THEN
        EXECUTE format('CREATE TABLE public.%I (LIKE public.%I INCLUDING DEFAULTS'
                       ' INCLUDING CONSTRAINTS)', v_name, p_parent);
        PERFORM set_config('automl.partition_maintenance', 'on', true);
        EXECUTE format('WITH moved AS (DELETE FROM public.%I AS d'
                       ' WHERE d.%I >= %L AND d.%I < %L RETURNING d.*)'
                       ' INSERT INTO public.%I SELECT * FROM moved',
                       v_default, v_key, v_lo, v_key, v_hi, v_name);
        PERFORM set_config('automl.partition_maintenance', 'off', true);
        EXECUTE format('ALTER TABLE public.%I ATTACH PARTITION public.%I'
                       ' FOR VALUES FROM (%L) TO (%L)', p_parent, v_name, v_lo, v_hi);
    ELSE
        EXECUTE format('CREATE TABLE public.%I PARTITION OF public.%I'
                       ' FOR VALUES FROM (%L) TO (%L)', v_name, p_parent, v_lo, v_hi);
    END IF;
    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON public.%I'
                   ' FOR EACH STATEMENT EXECUTE FUNCTION public.%I()',
                   p_parent || '_no_truncate', v_name, p_no_truncate);
    RETURN v_name;
END;
$$;

-- The month of p_at and the p_months_ahead months after it: the names made.
CREATE OR REPLACE FUNCTION public.partition_months(p_parent text, p_at timestamptz, p_months_ahead integer, p_no_truncate text)
RETURNS SETOF text
LANGUAGE plpgsql
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    v_month timestamp;
    v_made text;
BEGIN
    IF p_months_ahead IS NULL OR p_months_ahead < 0 OR p_months_ahead > 120 THEN
        RAISE EXCEPTION 'months ahead must be between 0 and 120, not %', p_months_ahead
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_at IS NULL OR NOT isfinite(p_at) THEN
        RAISE EXCEPTION 'a partition needs a finite instant, not %', p_at
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_month := date_trunc('month', p_at AT TIME ZONE 'UTC');
    FOR i IN 0 .. p_months_ahead LOOP
        v_made := public.partition_month(
            p_parent, (v_month + make_interval(months => i)) AT TIME ZONE 'UTC', p_no_truncate);
        IF v_made IS NOT NULL THEN
            RETURN NEXT v_made;
        END IF;
    END LOOP;
END;
$$;
