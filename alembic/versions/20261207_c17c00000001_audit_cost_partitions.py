"""audit cost, one partition function

Issue 17's open gaps. ``audit_events``' indexes lightened: the key becomes
``(occurred_at, id)`` (appends at the index's right end; it serves the admin's list
in time order, so ``ix_audit_events_occurred_at`` goes), the subject index partial
(``WHERE subject_user_id IS NOT NULL``) and the actor index partial on the events
whose actor is not their subject (written by hand: autogenerate compares neither
predicates nor key order). New ``partition_month()`` and ``partition_months()``
(``sql/triggers/partitions.sql``; EXECUTE revoked from PUBLIC, by hand), which
``audit_events_ensure_partitions()``, ``inference_requests_partition_for()`` and
``inference_requests_ensure_partitions()`` now call; ``audit_events_immutable()``
lets the shared function's DEFAULT-partition move through
(``automl.partition_maintenance``); ``audit_redact_user()`` says "actor = user" as
the two index arms. The downgrade restores all of it.

Revision ID: c17c00000001
Revises: c15c00000001
Create Date: 2026-12-07 10:21:03.153990+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from database.migrations import create, drop, function, replace, revoke_execute_from_public

revision: str = "c17c00000001"
down_revision: str | Sequence[str] | None = "c15c00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


PARTITION_MONTH_FUNCTION = function(
    "partition_month(p_parent text, p_at timestamptz, p_no_truncate text)",
    "returns text\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_start timestamp;\n    v_name text;\n    v_lo text;\n    v_hi text;\n    v_default text;\n    v_key text;\n    v_found boolean := false;\nBEGIN\n    IF p_at IS NULL OR NOT isfinite(p_at) THEN\n        RAISE EXCEPTION 'a partition needs a finite instant, not %', p_at\n            USING ERRCODE = 'invalid_parameter_value';\n    END IF;\n    v_start := date_trunc('month', p_at AT TIME ZONE 'UTC');\n    v_name := p_parent || '_p' || to_char(v_start, 'YYYYMM');\n    IF to_regclass('public.' || v_name) IS NOT NULL THEN\n        RETURN NULL;  -- the common case\\: no lock, no DDL\n    END IF;\n    EXECUTE format('LOCK TABLE public.%I IN SHARE UPDATE EXCLUSIVE MODE', p_parent);\n    IF to_regclass('public.' || v_name) IS NOT NULL THEN\n        RETURN NULL;  -- made by the caller we waited for\n    END IF;\n    v_lo := to_char(v_start, 'YYYY-MM-DD') || ' 00\\:00\\:00+00';\n    v_hi := to_char(v_start + interval '1 month', 'YYYY-MM-DD') || ' 00\\:00\\:00+00';\n    SELECT c.relname INTO v_default\n      FROM pg_catalog.pg_inherits AS i\n      JOIN pg_catalog.pg_class AS c ON c.oid = i.inhrelid\n     WHERE i.inhparent = ('public.' || quote_ident(p_parent))::regclass\n       AND pg_catalog.pg_get_expr(c.relpartbound, c.oid) = 'DEFAULT';\n    IF v_default IS NOT NULL THEN\n        SELECT a.attname INTO v_key\n          FROM pg_catalog.pg_partitioned_table AS p\n          JOIN pg_catalog.pg_attribute AS a\n            ON a.attrelid = p.partrelid AND a.attnum = p.partattrs[0]\n         WHERE p.partrelid = ('public.' || quote_ident(p_parent))::regclass;\n        EXECUTE format('SELECT EXISTS (SELECT 1 FROM public.%I AS d WHERE d.%I >= %L AND d.%I < %L)',\n                       v_default, v_key, v_lo, v_key, v_hi)\n           INTO v_found;\n    END IF;\n    IF v_found THEN\n        EXECUTE format('CREATE TABLE public.%I (LIKE public.%I INCLUDING DEFAULTS'\n                       ' INCLUDING CONSTRAINTS)', v_name, p_parent);\n        PERFORM set_config('automl.partition_maintenance', 'on', true);\n        EXECUTE format('WITH moved AS (DELETE FROM public.%I AS d'\n                       ' WHERE d.%I >= %L AND d.%I < %L RETURNING d.*)'\n                       ' INSERT INTO public.%I SELECT * FROM moved',\n                       v_default, v_key, v_lo, v_key, v_hi, v_name);\n        PERFORM set_config('automl.partition_maintenance', 'off', true);\n        EXECUTE format('ALTER TABLE public.%I ATTACH PARTITION public.%I'\n                       ' FOR VALUES FROM (%L) TO (%L)', p_parent, v_name, v_lo, v_hi);\n    ELSE\n        EXECUTE format('CREATE TABLE public.%I PARTITION OF public.%I'\n                       ' FOR VALUES FROM (%L) TO (%L)', v_name, p_parent, v_lo, v_hi);\n    END IF;\n    EXECUTE format('CREATE TRIGGER %I BEFORE TRUNCATE ON public.%I'\n                   ' FOR EACH STATEMENT EXECUTE FUNCTION public.%I()',\n                   p_parent || '_no_truncate', v_name, p_no_truncate);\n    RETURN v_name;\nEND;\n$$",
)
PARTITION_MONTHS_FUNCTION = function(
    "partition_months(p_parent text, p_at timestamptz, p_months_ahead integer, p_no_truncate text)",
    "returns SETOF text\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_month timestamp;\n    v_made text;\nBEGIN\n    IF p_months_ahead IS NULL OR p_months_ahead < 0 OR p_months_ahead > 120 THEN\n        RAISE EXCEPTION 'months ahead must be between 0 and 120, not %', p_months_ahead\n            USING ERRCODE = 'invalid_parameter_value';\n    END IF;\n    IF p_at IS NULL OR NOT isfinite(p_at) THEN\n        RAISE EXCEPTION 'a partition needs a finite instant, not %', p_at\n            USING ERRCODE = 'invalid_parameter_value';\n    END IF;\n    v_month := date_trunc('month', p_at AT TIME ZONE 'UTC');\n    FOR i IN 0 .. p_months_ahead LOOP\n        v_made := public.partition_month(\n            p_parent, (v_month + make_interval(months => i)) AT TIME ZONE 'UTC', p_no_truncate);\n        IF v_made IS NOT NULL THEN\n            RETURN NEXT v_made;\n        END IF;\n    END LOOP;\nEND;\n$$",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # ### commands auto generated by Alembic - please adjust! ###
    replace(
        function(
            "audit_events_immutable()",
            "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    -- Not SECURITY DEFINER\\: current_user is the role whose statement this is (the\n    -- owner only inside the owner's own SECURITY DEFINER functions, or as itself).\n    IF TG_OP = 'UPDATE' THEN\n        IF current_setting('automl.audit_redact', true) = 'on'\n           AND pg_has_role(current_user,\n                           (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = TG_RELID),\n                           'MEMBER')\n           AND NEW.client_ip IS NULL AND NEW.user_agent IS NULL\n           AND (to_jsonb(NEW) - 'client_ip' - 'user_agent') = (to_jsonb(OLD) - 'client_ip' - 'user_agent')\n        THEN\n            RETURN NEW;\n        END IF;\n    ELSIF TG_OP = 'DELETE' THEN\n        -- public.partition_month moving the DEFAULT partition's rows of a new month.\n        IF current_setting('automl.partition_maintenance', true) = 'on'\n           AND TG_TABLE_NAME = 'audit_events_default'\n           AND pg_has_role(current_user,\n                           (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = TG_RELID),\n                           'MEMBER')\n        THEN\n            RETURN OLD;\n        END IF;\n    END IF;\n    RAISE EXCEPTION 'audit_events is append-only\\: % is not allowed', TG_OP\n        USING ERRCODE = 'ML105',\n              HINT = 'old months leave by dropping whole partitions (automl-db clean --what audit)';\nEND;\n$$",
        ),
        function(
            "audit_redact_user(p_user_id uuid)",
            "returns bigint\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_count bigint;\nBEGIN\n    IF NOT EXISTS (SELECT 1 FROM public.users AS u\n                    WHERE u.id = p_user_id AND u.purged_at IS NOT NULL) THEN\n        RAISE EXCEPTION 'user % is not purged\\: the audit trail keeps their IP and user agent',\n                p_user_id\n            USING ERRCODE = 'ML107';\n    END IF;\n    PERFORM set_config('automl.audit_redact', 'on', true);\n    -- \"actor = the user\", written as the two arms the partial indexes serve\n    -- (database.audit.by_actor says why).\n    UPDATE public.audit_events AS e\n       SET client_ip = NULL, user_agent = NULL\n     WHERE ((e.subject_user_id = p_user_id AND e.actor_user_id = p_user_id)\n            OR (e.actor_user_id = p_user_id AND e.actor_user_id IS DISTINCT FROM e.subject_user_id))\n       AND (e.client_ip IS NOT NULL OR e.user_agent IS NOT NULL);\n    GET DIAGNOSTICS v_count = ROW_COUNT;\n    PERFORM set_config('automl.audit_redact', 'off', true);\n    RETURN v_count;\nEND;\n$$",
        ),
        function(
            "audit_events_ensure_partitions(p_at timestamptz, p_months_ahead integer)",
            "returns integer\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_created integer := 0;\nBEGIN\n    IF to_regclass('public.audit_events_default') IS NULL THEN\n        LOCK TABLE public.audit_events IN SHARE UPDATE EXCLUSIVE MODE;\n        IF to_regclass('public.audit_events_default') IS NULL THEN\n            CREATE TABLE public.audit_events_default PARTITION OF public.audit_events DEFAULT;\n            CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON public.audit_events_default\n                FOR EACH STATEMENT EXECUTE FUNCTION public.audit_events_immutable();\n            v_created := 1;\n        END IF;\n    END IF;\n    RETURN v_created + (SELECT count(*)::integer\n                          FROM public.partition_months('audit_events', p_at, p_months_ahead,\n                                                       'audit_events_immutable'));\nEND;\n$$",
        ),
        function(
            "inference_requests_partition_for(p_at timestamptz)",
            "returns text\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    RETURN public.partition_month('inference_requests', p_at, 'inference_requests_append_only');\nEND;\n$$",
        ),
        function(
            "inference_requests_ensure_partitions(p_months_ahead integer)",
            "returns SETOF text\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    RETURN QUERY SELECT public.partition_months('inference_requests', now(), p_months_ahead,\n                                                'inference_requests_append_only');\nEND;\n$$",
        ),
    )

    create(
        PARTITION_MONTH_FUNCTION,
        PARTITION_MONTHS_FUNCTION,
    )

    revoke_execute_from_public(*NEW_FUNCTIONS)

    op.drop_index(op.f("ix_audit_events_occurred_at"), table_name="audit_events")
    op.execute("ALTER TABLE audit_events DROP CONSTRAINT pk_audit_events")
    op.execute(
        "ALTER TABLE audit_events ADD CONSTRAINT pk_audit_events PRIMARY KEY (occurred_at, id)"
    )
    _indexes(
        "subject_user_id IS NOT NULL",
        "actor_user_id IS NOT NULL AND actor_user_id IS DISTINCT FROM subject_user_id",
    )
    # ### end Alembic commands ###


NEW_FUNCTIONS = (
    "public.partition_month(text, timestamptz, text)",
    "public.partition_months(text, timestamptz, integer, text)",
)


def _indexes(subject_where: str | None, actor_where: str | None) -> None:
    for column, where in (("subject_user_id", subject_where), ("actor_user_id", actor_where)):
        name = f"ix_audit_events_{column}_occurred_at"
        op.drop_index(name, table_name="audit_events")
        op.create_index(
            name,
            "audit_events",
            [column, "occurred_at"],
            unique=False,
            postgresql_where=None if where is None else sa.text(where),
        )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # ### commands auto generated by Alembic - please adjust! ###
    _indexes(None, None)
    op.execute("ALTER TABLE audit_events DROP CONSTRAINT pk_audit_events")
    op.execute(
        "ALTER TABLE audit_events ADD CONSTRAINT pk_audit_events PRIMARY KEY (id, occurred_at)"
    )
    op.create_index(
        op.f("ix_audit_events_occurred_at"), "audit_events", ["occurred_at"], unique=False
    )
    drop(
        PARTITION_MONTHS_FUNCTION,
        PARTITION_MONTH_FUNCTION,
    )

    replace(
        function(
            "inference_requests_ensure_partitions(p_months_ahead integer)",
            "returns SETOF text\n LANGUAGE plpgsql\n SECURITY DEFINER\n SET search_path TO 'pg_catalog', 'public', 'pg_temp'\nAS $function$\nDECLARE\n    v_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');\n    v_made text;\nBEGIN\n    IF p_months_ahead IS NULL OR p_months_ahead < 0 OR p_months_ahead > 120 THEN\n        RAISE EXCEPTION 'months ahead must be between 0 and 120, not %', p_months_ahead\n            USING ERRCODE = 'invalid_parameter_value';\n    END IF;\n    FOR i IN 0..p_months_ahead LOOP\n        v_made := public.inference_requests_partition_for(\n            (v_month + make_interval(months => i)) AT TIME ZONE 'UTC');\n        IF v_made IS NOT NULL THEN\n            RETURN NEXT v_made;\n        END IF;\n    END LOOP;\nEND;\n$function$",
        ),
        function(
            "inference_requests_partition_for(p_at timestamp with time zone)",
            "returns text\n LANGUAGE plpgsql\n SECURITY DEFINER\n SET search_path TO 'pg_catalog', 'public', 'pg_temp'\nAS $function$\nDECLARE\n    v_start timestamp := date_trunc('month', p_at AT TIME ZONE 'UTC');\n    v_name text := 'inference_requests_p' || to_char(v_start, 'YYYYMM');\nBEGIN\n    IF p_at IS NULL OR NOT isfinite(p_at) THEN\n        RAISE EXCEPTION 'a partition needs a finite instant, not %', p_at\n            USING ERRCODE = 'invalid_parameter_value';\n    END IF;\n    -- Two callers making one month\\: the second waits, then finds it.\n    PERFORM pg_advisory_xact_lock(hashtextextended('inference-partition\\:' || v_name, 0));\n    IF to_regclass('public.' || v_name) IS NOT NULL THEN\n        RETURN NULL;\n    END IF;\n    EXECUTE format(\n        'CREATE TABLE public.%I PARTITION OF public.inference_requests'\n        ' FOR VALUES FROM (%L) TO (%L)',\n        v_name, v_start AT TIME ZONE 'UTC', (v_start + interval '1 month') AT TIME ZONE 'UTC');\n    -- TRUNCATE triggers are not cloned onto partitions\\: each gets its own.\n    EXECUTE format(\n        'CREATE TRIGGER inference_requests_no_truncate BEFORE TRUNCATE ON public.%I'\n        ' FOR EACH STATEMENT EXECUTE FUNCTION public.inference_requests_append_only()',\n        v_name);\n    RETURN v_name;\nEND;\n$function$",
        ),
        function(
            "audit_events_ensure_partitions(p_at timestamp with time zone, p_months_ahead integer)",
            "returns integer\n LANGUAGE plpgsql\n SECURITY DEFINER\n SET search_path TO 'pg_catalog', 'public', 'pg_temp'\nAS $function$\nDECLARE\n    v_month timestamp := date_trunc('month', p_at AT TIME ZONE 'UTC');\n    v_lo text;\n    v_hi text;\n    v_name text;\n    v_created integer := 0;\nBEGIN\n    IF p_months_ahead IS NULL OR p_months_ahead < 0 OR p_months_ahead > 120 THEN\n        RAISE EXCEPTION 'months ahead must be between 0 and 120, not %', p_months_ahead\n            USING ERRCODE = 'invalid_parameter_value';\n    END IF;\n    -- Nothing to do (the common case)\\: no lock, no DDL.\n    IF to_regclass('public.audit_events_default') IS NOT NULL AND NOT EXISTS (\n        SELECT 1 FROM generate_series(0, p_months_ahead) AS i\n         WHERE to_regclass('public.audit_events_p'\n                           || to_char(v_month + make_interval(months => i), 'YYYYMM')) IS NULL\n    ) THEN\n        RETURN 0;\n    END IF;\n    -- Self-conflicting but not in the way of INSERTs; taking a relation lock also\n    -- reads the catalog changes of the caller that held it before (an advisory lock\n    -- would not\\: to_regclass could miss the partition it just made).\n    LOCK TABLE public.audit_events IN SHARE UPDATE EXCLUSIVE MODE;\n    IF to_regclass('public.audit_events_default') IS NULL THEN\n        CREATE TABLE public.audit_events_default PARTITION OF public.audit_events DEFAULT;\n        CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON public.audit_events_default\n            FOR EACH STATEMENT EXECUTE FUNCTION public.audit_events_immutable();\n        v_created := v_created + 1;\n    END IF;\n    FOR i IN 0 .. p_months_ahead LOOP\n        v_name := 'audit_events_p' || to_char(v_month + make_interval(months => i), 'YYYYMM');\n        CONTINUE WHEN to_regclass('public.' || v_name) IS NOT NULL;\n        v_lo := to_char(v_month + make_interval(months => i), 'YYYY-MM-DD') || ' 00\\:00\\:00+00';\n        v_hi := to_char(v_month + make_interval(months => i + 1), 'YYYY-MM-DD') || ' 00\\:00\\:00+00';\n        IF EXISTS (SELECT 1 FROM public.audit_events_default AS d\n                    WHERE d.occurred_at >= v_lo::timestamptz AND d.occurred_at < v_hi::timestamptz) THEN\n            EXECUTE format('CREATE TABLE public.%I (LIKE public.audit_events INCLUDING DEFAULTS'\n                           ' INCLUDING CONSTRAINTS)', v_name);\n            PERFORM set_config('automl.audit_maintenance', 'on', true);\n            EXECUTE format('WITH moved AS (DELETE FROM public.audit_events_default AS d'\n                           ' WHERE d.occurred_at >= %L AND d.occurred_at < %L RETURNING d.*)'\n                           ' INSERT INTO public.%I SELECT * FROM moved', v_lo, v_hi, v_name);\n            PERFORM set_config('automl.audit_maintenance', 'off', true);\n            EXECUTE format('ALTER TABLE public.audit_events ATTACH PARTITION public.%I'\n                           ' FOR VALUES FROM (%L) TO (%L)', v_name, v_lo, v_hi);\n        ELSE\n            EXECUTE format('CREATE TABLE public.%I PARTITION OF public.audit_events'\n                           ' FOR VALUES FROM (%L) TO (%L)', v_name, v_lo, v_hi);\n        END IF;\n        EXECUTE format('CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON public.%I'\n                       ' FOR EACH STATEMENT EXECUTE FUNCTION public.audit_events_immutable()',\n                       v_name);\n        v_created := v_created + 1;\n    END LOOP;\n    RETURN v_created;\nEND;\n$function$",
        ),
        function(
            "audit_redact_user(p_user_id uuid)",
            "returns bigint\n LANGUAGE plpgsql\n SECURITY DEFINER\n SET search_path TO 'pg_catalog', 'public', 'pg_temp'\nAS $function$\nDECLARE\n    v_count bigint;\nBEGIN\n    IF NOT EXISTS (SELECT 1 FROM public.users AS u\n                    WHERE u.id = p_user_id AND u.purged_at IS NOT NULL) THEN\n        RAISE EXCEPTION 'user % is not purged\\: the audit trail keeps their IP and user agent',\n                p_user_id\n            USING ERRCODE = 'ML107';\n    END IF;\n    PERFORM set_config('automl.audit_redact', 'on', true);\n    UPDATE public.audit_events AS e\n       SET client_ip = NULL, user_agent = NULL\n     WHERE e.actor_user_id = p_user_id\n       AND (e.client_ip IS NOT NULL OR e.user_agent IS NOT NULL);\n    GET DIAGNOSTICS v_count = ROW_COUNT;\n    PERFORM set_config('automl.audit_redact', 'off', true);\n    RETURN v_count;\nEND;\n$function$",
        ),
        function(
            "audit_events_immutable()",
            "returns trigger\n LANGUAGE plpgsql\nAS $function$\nBEGIN\n    -- Not SECURITY DEFINER\\: current_user is the role whose statement this is (the\n    -- owner only inside the owner's own SECURITY DEFINER functions, or as itself).\n    IF TG_OP = 'UPDATE' THEN\n        IF current_setting('automl.audit_redact', true) = 'on'\n           AND pg_has_role(current_user,\n                           (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = TG_RELID),\n                           'MEMBER')\n           AND NEW.client_ip IS NULL AND NEW.user_agent IS NULL\n           AND (to_jsonb(NEW) - 'client_ip' - 'user_agent') = (to_jsonb(OLD) - 'client_ip' - 'user_agent')\n        THEN\n            RETURN NEW;\n        END IF;\n    ELSIF TG_OP = 'DELETE' THEN\n        IF current_setting('automl.audit_maintenance', true) = 'on'\n           AND TG_TABLE_NAME = 'audit_events_default'\n           AND pg_has_role(current_user,\n                           (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = TG_RELID),\n                           'MEMBER')\n        THEN\n            RETURN OLD;\n        END IF;\n    END IF;\n    RAISE EXCEPTION 'audit_events is append-only\\: % is not allowed', TG_OP\n        USING ERRCODE = 'ML105',\n              HINT = 'old months leave by dropping whole partitions (automl-db clean --what audit)';\nEND;\n$function$",
        ),
    )
    # ### end Alembic commands ###
