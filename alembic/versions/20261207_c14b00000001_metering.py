"""metering

Issue 14's metering half. Tables ``inference_requests`` (append-only, partitioned by
RANGE (created_at), monthly, UTC; this month's and the next two partitions are made
here), ``usage_events`` (append-only), ``usage_charges`` (append-only),
``usage_meters``, ``usage_holds``, ``api_key_usage_windows``; columns
``api_keys.rate_limit_per_minute`` and ``api_keys.monthly_row_quota``; enums
``inference_status``, ``usage_sku``, ``quota_window``; the functions and triggers of
``sql/triggers/metering.sql`` (ML085, ML086; the triggers written by hand after their
tables and dropped before them; EXECUTE on the partition functions revoked from
PUBLIC); ``credit_tx_before_insert()`` and ``ck_credit_transactions_job_only_for_charges``
let a consumption name no job when it carries an idempotency key (a usage charge).
The downgrade drops all of it (the partitions with their table).

Revision ID: c14b00000001
Revises: c17a00000001
Create Date: 2026-12-07 07:37:23.009886+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic_utils.pg_trigger import PGTrigger

from alembic import op
from database.migrations import create, drop, function, revoke_execute_from_public, trigger

revision: str = "c14b00000001"
down_revision: str | Sequence[str] | None = "c17a00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


INFERENCE_REQUESTS_APPEND_ONLY_FUNCTION = function(
    "inference_requests_append_only()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'inference_requests is append-only\\: % refused', TG_OP\n        USING ERRCODE = 'ML085',\n              HINT = 'old months are dropped whole (automl-db inference-retention)';\nEND;\n$$",
)
USAGE_APPEND_ONLY_FUNCTION = function(
    "usage_append_only()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION '% is append-only\\: % refused', TG_TABLE_NAME, TG_OP\n        USING ERRCODE = 'ML086',\n              HINT = 'usage is corrected by a new entry in the ledger (an adjustment)';\nEND;\n$$",
)
USAGE_EVENTS_BEFORE_INSERT_FUNCTION = function(
    "usage_events_before_insert()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF NEW.user_id IS NULL OR NEW.quantity IS NULL OR NEW.unit_price_micro IS NULL\n       OR NEW.idempotency_key IS NULL THEN\n        RETURN NEW;  -- the NOT NULL constraints refuse the row\n    END IF;\n    -- The meter's row lock\\: events of one user are applied one at a time, and an\n    -- aggregation holding it sees every event dated before it.\n    INSERT INTO public.usage_meters AS m (user_id, charged_through, pending_micro)\n    VALUES (NEW.user_id, date_trunc('hour', clock_timestamp(), 'UTC'),\n            NEW.quantity * NEW.unit_price_micro)\n    ON CONFLICT (user_id) DO UPDATE\n        SET pending_micro = m.pending_micro + EXCLUDED.pending_micro;\n    IF EXISTS (SELECT 1 FROM public.usage_events AS e\n                WHERE e.idempotency_key = NEW.idempotency_key) THEN\n        RAISE EXCEPTION 'usage % was already recorded', NEW.idempotency_key\n            USING ERRCODE = 'unique_violation',\n                  CONSTRAINT = 'uq_usage_events_idempotency_key';\n    END IF;\n    NEW.created_at := clock_timestamp();\n    RETURN NEW;\nEND;\n$$",
)
INFERENCE_REQUESTS_PARTITION_FOR_FUNCTION = function(
    "inference_requests_partition_for(p_at timestamptz)",
    "returns text\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_start timestamp := date_trunc('month', p_at AT TIME ZONE 'UTC');\n    v_name text := 'inference_requests_p' || to_char(v_start, 'YYYYMM');\nBEGIN\n    IF p_at IS NULL OR NOT isfinite(p_at) THEN\n        RAISE EXCEPTION 'a partition needs a finite instant, not %', p_at\n            USING ERRCODE = 'invalid_parameter_value';\n    END IF;\n    -- Two callers making one month\\: the second waits, then finds it.\n    PERFORM pg_advisory_xact_lock(hashtextextended('inference-partition\\:' || v_name, 0));\n    IF to_regclass('public.' || v_name) IS NOT NULL THEN\n        RETURN NULL;\n    END IF;\n    EXECUTE format(\n        'CREATE TABLE public.%I PARTITION OF public.inference_requests'\n        ' FOR VALUES FROM (%L) TO (%L)',\n        v_name, v_start AT TIME ZONE 'UTC', (v_start + interval '1 month') AT TIME ZONE 'UTC');\n    -- TRUNCATE triggers are not cloned onto partitions\\: each gets its own.\n    EXECUTE format(\n        'CREATE TRIGGER inference_requests_no_truncate BEFORE TRUNCATE ON public.%I'\n        ' FOR EACH STATEMENT EXECUTE FUNCTION public.inference_requests_append_only()',\n        v_name);\n    RETURN v_name;\nEND;\n$$",
)
INFERENCE_REQUESTS_ENSURE_PARTITIONS_FUNCTION = function(
    "inference_requests_ensure_partitions(p_months_ahead integer)",
    "returns SETOF text\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_month timestamp := date_trunc('month', now() AT TIME ZONE 'UTC');\n    v_made text;\nBEGIN\n    IF p_months_ahead IS NULL OR p_months_ahead < 0 OR p_months_ahead > 120 THEN\n        RAISE EXCEPTION 'months ahead must be between 0 and 120, not %', p_months_ahead\n            USING ERRCODE = 'invalid_parameter_value';\n    END IF;\n    FOR i IN 0..p_months_ahead LOOP\n        v_made := public.inference_requests_partition_for(\n            (v_month + make_interval(months => i)) AT TIME ZONE 'UTC');\n        IF v_made IS NOT NULL THEN\n            RETURN NEXT v_made;\n        END IF;\n    END LOOP;\nEND;\n$$",
)
USAGE_ADMIT_FUNCTION = function(
    "usage_admit(p_user uuid, p_key uuid, p_deployment uuid, p_rows bigint, p_amount bigint, p_request_id text, p_hold_seconds integer)",
    "returns void\nLANGUAGE plpgsql\nAS $$\nDECLARE\n    v_now timestamptz := now();\n    v_rl integer;\n    v_mq bigint;\n    v_start timestamptz;\n    v_available bigint;\nBEGIN\n    IF p_key IS NOT NULL THEN\n        SELECT k.rate_limit_per_minute, k.monthly_row_quota INTO v_rl, v_mq\n          FROM public.api_keys AS k WHERE k.id = p_key;\n        IF v_rl IS NOT NULL THEN\n            v_start := date_trunc('minute', v_now);\n            INSERT INTO public.api_key_usage_windows AS w (api_key_id, period, window_start, used)\n            VALUES (p_key, 'minute', v_start, 1)\n            ON CONFLICT (api_key_id, period, window_start) DO UPDATE SET used = w.used + 1\n             WHERE w.used + 1 <= v_rl;\n            IF NOT FOUND THEN\n                RAISE EXCEPTION 'API key rate limit of % requests per minute reached', v_rl\n                    USING ERRCODE = 'ML088',\n                          DETAIL = format('quota=rate_limit_per_minute limit=%s retry_after=%s', v_rl,\n                                          ceil(extract(epoch FROM v_start + interval '1 minute' - v_now))::int);\n            END IF;\n        END IF;\n        IF v_mq IS NOT NULL AND p_rows > 0 THEN\n            v_start := date_trunc('month', v_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';\n            IF p_rows <= v_mq THEN\n                INSERT INTO public.api_key_usage_windows AS w (api_key_id, period, window_start, used)\n                VALUES (p_key, 'month', v_start, p_rows)\n                ON CONFLICT (api_key_id, period, window_start) DO UPDATE SET used = w.used + p_rows\n                 WHERE w.used + p_rows <= v_mq;\n            END IF;\n            IF p_rows > v_mq OR NOT FOUND THEN\n                RAISE EXCEPTION 'API key monthly quota of % rows reached (this request\\: % rows)', v_mq, p_rows\n                    USING ERRCODE = 'ML088',\n                          DETAIL = format('quota=monthly_row_quota limit=%s retry_after=%s', v_mq,\n                                          ceil(extract(epoch FROM\n                                               ((v_start AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'\n                                               - v_now))::int);\n            END IF;\n        END IF;\n    END IF;\n    IF p_amount <= 0 THEN\n        RETURN;\n    END IF;\n    -- A hold need not survive a crash of the server (it only stands for a request in\n    -- flight)\\: its commit does not wait for the WAL flush.\n    PERFORM set_config('synchronous_commit', 'off', true);\n    PERFORM 1 FROM public.users AS u WHERE u.id = p_user FOR NO KEY UPDATE;\n    IF NOT FOUND THEN\n        RAISE EXCEPTION 'user % does not exist', p_user USING ERRCODE = 'ML089';\n    END IF;\n    INSERT INTO public.usage_holds (user_id, deployment_id, rows, amount_micro, request_id, expires_at)\n    SELECT p_user, p_deployment, p_rows, p_amount, p_request_id,\n           v_now + make_interval(secs => p_hold_seconds)\n      FROM public.users AS u\n     WHERE u.id = p_user\n       AND u.credit_balance::bigint * 1000000\n           - coalesce((SELECT m.pending_micro FROM public.usage_meters AS m\n                        WHERE m.user_id = p_user), 0)\n           - coalesce((SELECT sum(h.amount_micro) FROM public.usage_holds AS h\n                        WHERE h.user_id = p_user AND h.expires_at > v_now), 0)\n           >= p_amount;\n    IF NOT FOUND THEN\n        SELECT u.credit_balance::bigint * 1000000\n               - coalesce((SELECT m.pending_micro FROM public.usage_meters AS m\n                            WHERE m.user_id = p_user), 0)\n               - coalesce((SELECT sum(h.amount_micro) FROM public.usage_holds AS h\n                            WHERE h.user_id = p_user AND h.expires_at > v_now), 0)\n          INTO v_available\n          FROM public.users AS u WHERE u.id = p_user;\n        RAISE EXCEPTION 'insufficient credits for % rows\\: they cost % micro-credits, % available',\n                p_rows, p_amount, greatest(v_available, 0)\n            USING ERRCODE = 'ML087',\n                  DETAIL = format('needed=%s available=%s', p_amount, v_available);\n    END IF;\nEND;\n$$",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # ### commands auto generated by Alembic - please adjust! ###
    op.replace_entity(
        function(
            "credit_tx_before_insert()",
            "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_charged integer;\n    v_balance integer;\n    v_deleted boolean;\nBEGIN\n    -- A malformed row is refused by the constraint it breaks, before any balance\n    -- is read (BEFORE triggers run ahead of NOT NULL and CHECK constraints).\n    IF NEW.user_id IS NULL OR NEW.type IS NULL OR NEW.amount IS NULL THEN\n        RAISE EXCEPTION 'credit_transactions\\: user_id, type and amount are required'\n            USING ERRCODE = 'not_null_violation';\n    END IF;\n    IF NOT ((NEW.type = 'purchase' AND NEW.amount > 0) OR (NEW.type = 'consumption' AND NEW.amount < 0)\n            OR (NEW.type = 'refund' AND NEW.amount > 0) OR (NEW.type = 'adjustment' AND NEW.amount <> 0)) THEN\n        RAISE EXCEPTION 'a % of % credits has the wrong sign', NEW.type, NEW.amount\n            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_credit_transactions_amount_sign';\n    END IF;\n    -- A consumption charges a job, or usage (database.metering\\: no job, an\n    -- idempotency key per deployment and period).\n    IF (NEW.type = 'consumption' AND (NEW.job_id IS NULL) = (NEW.idempotency_key IS NULL))\n       OR (NEW.type = 'refund' AND NEW.job_id IS NULL)\n       OR (NEW.type NOT IN ('consumption', 'refund') AND NEW.job_id IS NOT NULL) THEN\n        RAISE EXCEPTION 'a % % a job', NEW.type,\n            CASE WHEN NEW.job_id IS NULL THEN 'needs' ELSE 'cannot name' END\n            USING ERRCODE = 'check_violation',\n                  CONSTRAINT = 'ck_credit_transactions_job_only_for_charges';\n    END IF;\n\n    -- Entries of one id, for whatever user, are applied one at a time\\: the lock is\n    -- held to the end of the transaction, and every statement below starts after it\n    -- was granted, so it sees an entry of this id that committed meanwhile. Without\n    -- it, two concurrent INSERT ... ON CONFLICT (id) DO NOTHING of one new id both\n    -- passed the id test (its snapshot predates the other's commit) and the second\n    -- moved the balance, then skipped its row on the conflict. Costs one statement\n    -- per entry (docs/performance.md).\n    PERFORM pg_advisory_xact_lock(hashtextextended('ledger-id\\:' || NEW.id::text, 0));\n\n    -- Duplicates are tested under the user's row lock, so one user's are checked one\n    -- at a time. A purchase with a payment id and a refund lock the row first; a\n    -- consumption (the common charge) tests its job after the balance UPDATE below,\n    -- which takes the same lock\\: one statement fewer per charge, and a duplicate\n    -- still raises before the INSERT goes on, undoing the UPDATE with it.\n    IF NEW.stripe_payment_id IS NOT NULL OR NEW.type = 'refund'\n       OR NEW.idempotency_key IS NOT NULL THEN\n        PERFORM 1 FROM public.users AS u WHERE u.id = NEW.user_id FOR NO KEY UPDATE;\n        IF NEW.idempotency_key IS NOT NULL THEN\n            -- Like a payment id\\: a key could be sent for two users, serialize on it.\n            PERFORM pg_advisory_xact_lock(hashtextextended('idem\\:' || NEW.idempotency_key, 0));\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.idempotency_key = NEW.idempotency_key) THEN\n                RAISE EXCEPTION 'idempotency key % was already used', NEW.idempotency_key\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_idempotency_key';\n            END IF;\n        END IF;\n        IF NEW.stripe_payment_id IS NOT NULL THEN\n            -- One payment id could be sent for two users\\: serialize on the id too.\n            PERFORM pg_advisory_xact_lock(hashtextextended('stripe\\:' || NEW.stripe_payment_id, 0));\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.stripe_payment_id = NEW.stripe_payment_id) THEN\n                RAISE EXCEPTION 'stripe payment % was already credited', NEW.stripe_payment_id\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_stripe_payment_id';\n            END IF;\n        END IF;\n        IF NEW.job_id IS NOT NULL THEN  -- a refund here (see the two IFs below)\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.job_id = NEW.job_id AND t.type = NEW.type) THEN\n                RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_job_id_' || NEW.type::text;\n            END IF;\n        END IF;\n    END IF;\n    -- An entry id that exists already is refused before the balance moves. For\n    -- every type but refunds that test is part of the balance UPDATE below (NOT\n    -- EXISTS, which sees every entry of this id committed before the id lock above\n    -- was granted)\\: as a statement of its own it cost a fifth of the trigger's time\n    -- per charge (docs/performance.md). A refund tests it first, as its rules come next.\n    IF NEW.type = 'refund' THEN\n        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id) THEN\n            RAISE EXCEPTION 'ledger entry % already exists and cannot be replaced', NEW.id\n                USING ERRCODE = 'ML002';\n        END IF;\n        SELECT -t.amount INTO v_charged\n          FROM public.credit_transactions AS t\n         WHERE t.job_id = NEW.job_id AND t.type = 'consumption';\n        IF v_charged IS NULL THEN\n            RAISE EXCEPTION 'job % was never charged, so it cannot be refunded', NEW.job_id\n                USING ERRCODE = 'ML004';\n        ELSIF NEW.amount > v_charged THEN\n            RAISE EXCEPTION 'refund of % credits exceeds the % charged for job %',\n                NEW.amount, v_charged, NEW.job_id\n                USING ERRCODE = 'ML004';\n        END IF;\n    END IF;\n\n    -- One statement takes the row lock, applies the rule and computes the balance.\n    UPDATE public.users AS u\n       SET credit_balance = u.credit_balance + NEW.amount\n     WHERE u.id = NEW.user_id\n       AND u.credit_balance + NEW.amount >= 0\n       AND NOT (u.is_deleted AND NEW.type = 'purchase')\n       AND NOT EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id)\n    RETURNING u.credit_balance INTO NEW.balance_after;\n\n    IF NOT FOUND THEN\n        IF NEW.type = 'consumption' THEN\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.job_id = NEW.job_id AND t.type = 'consumption') THEN\n                RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_job_id_consumption';\n            END IF;\n        END IF;\n        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id) THEN\n            RAISE EXCEPTION 'ledger entry % already exists and cannot be replaced', NEW.id\n                USING ERRCODE = 'ML002';\n        END IF;\n        SELECT u.credit_balance, u.is_deleted INTO v_balance, v_deleted\n          FROM public.users AS u WHERE u.id = NEW.user_id;\n        IF NOT FOUND THEN\n            RAISE EXCEPTION 'user % does not exist', NEW.user_id\n                USING ERRCODE = 'foreign_key_violation',\n                      CONSTRAINT = 'fk_credit_transactions_user_id_users';\n        ELSIF v_deleted AND NEW.type = 'purchase' THEN\n            RAISE EXCEPTION 'user % is deleted and cannot buy credits', NEW.user_id\n                USING ERRCODE = 'ML005';\n        ELSE\n            RAISE EXCEPTION 'insufficient credits\\: balance %, % of %',\n                v_balance, NEW.type, NEW.amount\n                USING ERRCODE = 'ML001',\n                      DETAIL = format('balance=%s amount=%s', v_balance, NEW.amount);\n        END IF;\n    END IF;\n    -- The user's row is locked now (a new statement, a new snapshot)\\: a charge of\n    -- the same job that committed first is seen here. (Two IFs, not one with AND\\: a\n    -- condition holding a subquery is a query of its own, and one whose first half\n    -- folds to false for most rows is planned again on every call, the plan cache\n    -- finding each custom plan cheaper than a generic one.)\n    IF NEW.type = 'consumption' THEN\n        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                    WHERE t.job_id = NEW.job_id AND t.type = 'consumption') THEN\n            RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type\n                USING ERRCODE = 'unique_violation',\n                      CONSTRAINT = 'uq_credit_transactions_job_id_consumption';\n        END IF;\n    END IF;\n    NEW.created_at := clock_timestamp();\n    RETURN NEW;\nEND;\n$$",
        )
    )

    create(
        INFERENCE_REQUESTS_APPEND_ONLY_FUNCTION,
        USAGE_APPEND_ONLY_FUNCTION,
        USAGE_EVENTS_BEFORE_INSERT_FUNCTION,
        INFERENCE_REQUESTS_PARTITION_FOR_FUNCTION,
        INFERENCE_REQUESTS_ENSURE_PARTITIONS_FUNCTION,
        USAGE_ADMIT_FUNCTION,
    )

    op.create_table(
        "inference_requests",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("deployment_id", sa.UUID(), nullable=False),
        sa.Column("model_version_id", sa.UUID(), nullable=True),
        sa.Column("api_key_id", sa.UUID(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("latency_ms", sa.Integer(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "ok", "client_error", "refused", "server_error", "timeout", name="inference_status"
            ),
            nullable=False,
        ),
        sa.Column("error_class", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "error_class IS NULL OR char_length(error_class) BETWEEN 1 AND 200",
            name=op.f("ck_inference_requests_error_class_length"),
        ),
        sa.CheckConstraint(
            "latency_ms >= 0", name=op.f("ck_inference_requests_latency_nonnegative")
        ),
        sa.CheckConstraint(
            "request_id IS NULL OR char_length(request_id) BETWEEN 1 AND 200",
            name=op.f("ck_inference_requests_request_id_length"),
        ),
        sa.CheckConstraint("rows >= 0", name=op.f("ck_inference_requests_rows_nonnegative")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_inference_requests_user_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", "created_at", name=op.f("pk_inference_requests")),
        postgresql_partition_by="RANGE (created_at)",
    )
    op.create_index(
        "ix_inference_requests_deployment_id_created_at_id",
        "inference_requests",
        ["deployment_id", "created_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_inference_requests_user_id_created_at",
        "inference_requests",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "usage_events",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("deployment_id", sa.UUID(), nullable=True),
        sa.Column("api_key_id", sa.UUID(), nullable=True),
        sa.Column("sku", sa.Enum("predicted_rows", "batch_rows", name="usage_sku"), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("unit_price_micro", sa.BigInteger(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "char_length(idempotency_key) BETWEEN 1 AND 200",
            name=op.f("ck_usage_events_idempotency_key_length"),
        ),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_usage_events_quantity_positive")),
        sa.CheckConstraint(
            "unit_price_micro >= 0", name=op.f("ck_usage_events_unit_price_nonnegative")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_usage_events_user_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_events")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_usage_events_idempotency_key")),
    )
    op.create_index(
        "ix_usage_events_user_id_created_at",
        "usage_events",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "usage_holds",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("deployment_id", sa.UUID(), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("expires_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("amount_micro >= 0", name=op.f("ck_usage_holds_amount_nonnegative")),
        sa.CheckConstraint("rows > 0", name=op.f("ck_usage_holds_rows_positive")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_usage_holds_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_holds")),
    )
    op.create_index(
        "ix_usage_holds_user_id_expires_at", "usage_holds", ["user_id", "expires_at"], unique=False
    )
    op.create_table(
        "usage_meters",
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("charged_through", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("pending_micro", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.CheckConstraint("pending_micro >= 0", name=op.f("ck_usage_meters_pending_nonnegative")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_usage_meters_user_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_usage_meters")),
    )
    op.create_table(
        "api_key_usage_windows",
        sa.Column("api_key_id", sa.UUID(), nullable=False),
        sa.Column("period", sa.Enum("minute", "month", name="quota_window"), nullable=False),
        sa.Column("window_start", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("used", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("used >= 0", name=op.f("ck_api_key_usage_windows_used_nonnegative")),
        sa.ForeignKeyConstraint(
            ["api_key_id"],
            ["api_keys.id"],
            name=op.f("fk_api_key_usage_windows_api_key_id_api_keys"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "api_key_id", "period", "window_start", name=op.f("pk_api_key_usage_windows")
        ),
    )
    op.create_table(
        "usage_charges",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("deployment_id", sa.UUID(), nullable=True),
        sa.Column("sku", sa.Enum("predicted_rows", "batch_rows", name="usage_sku"), nullable=False),
        sa.Column("period_start", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("period_end", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("quantity", sa.BigInteger(), nullable=False),
        sa.Column("amount_micro", sa.BigInteger(), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("ledger_entry_id", sa.UUID(), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(credits = 0) = (ledger_entry_id IS NULL)",
            name=op.f("ck_usage_charges_ledger_entry_iff_credits"),
        ),
        sa.CheckConstraint("amount_micro >= 0", name=op.f("ck_usage_charges_amount_nonnegative")),
        sa.CheckConstraint("credits >= 0", name=op.f("ck_usage_charges_credits_nonnegative")),
        sa.CheckConstraint("period_end > period_start", name=op.f("ck_usage_charges_period_order")),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_usage_charges_quantity_positive")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_usage_charges_user_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_charges")),
        sa.UniqueConstraint("idempotency_key", name=op.f("uq_usage_charges_idempotency_key")),
        sa.UniqueConstraint("ledger_entry_id", name=op.f("uq_usage_charges_ledger_entry_id")),
    )
    op.create_index(
        "ix_usage_charges_user_id_period_start",
        "usage_charges",
        ["user_id", "period_start"],
        unique=False,
    )
    op.add_column("api_keys", sa.Column("rate_limit_per_minute", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("monthly_row_quota", sa.BigInteger(), nullable=True))
    # ### end Alembic commands ###
    op.create_check_constraint(
        op.f("ck_api_keys_rate_limit_positive"),
        "api_keys",
        "rate_limit_per_minute IS NULL OR rate_limit_per_minute > 0",
    )
    op.create_check_constraint(
        op.f("ck_api_keys_monthly_row_quota_positive"),
        "api_keys",
        "monthly_row_quota IS NULL OR monthly_row_quota > 0",
    )
    op.drop_constraint(
        op.f("ck_credit_transactions_job_only_for_charges"), "credit_transactions", type_="check"
    )
    op.create_check_constraint(
        op.f("ck_credit_transactions_job_only_for_charges"),
        "credit_transactions",
        "CASE type WHEN 'consumption' THEN (job_id IS NOT NULL) <> (idempotency_key IS NOT NULL)"
        " WHEN 'refund' THEN job_id IS NOT NULL ELSE job_id IS NULL END",
    )
    create(*_triggers())
    revoke_execute_from_public(*_PRIVATE_FUNCTIONS)
    # This month's partition and the next two (the worker keeps making them ahead).
    op.execute("SELECT public.inference_requests_ensure_partitions(2)")


_PRIVATE_FUNCTIONS = (
    "public.inference_requests_partition_for(timestamptz)",
    "public.inference_requests_ensure_partitions(integer)",
    "public.usage_admit(uuid, uuid, uuid, bigint, bigint, text, integer)",
)

_TRIGGERS = {
    "inference_requests_no_update_delete": (
        "inference_requests",
        "BEFORE UPDATE OR DELETE ON public.inference_requests FOR EACH ROW\n"
        "EXECUTE FUNCTION public.inference_requests_append_only()",
    ),
    "inference_requests_no_truncate": (
        "inference_requests",
        "BEFORE TRUNCATE ON public.inference_requests FOR EACH STATEMENT\n"
        "EXECUTE FUNCTION public.inference_requests_append_only()",
    ),
    "usage_events_before_insert": (
        "usage_events",
        "BEFORE INSERT ON public.usage_events FOR EACH ROW\n"
        "EXECUTE FUNCTION public.usage_events_before_insert()",
    ),
    "usage_events_no_update_delete": (
        "usage_events",
        "BEFORE UPDATE OR DELETE ON public.usage_events FOR EACH ROW\n"
        "EXECUTE FUNCTION public.usage_append_only()",
    ),
    "usage_events_no_truncate": (
        "usage_events",
        "BEFORE TRUNCATE ON public.usage_events FOR EACH STATEMENT\n"
        "EXECUTE FUNCTION public.usage_append_only()",
    ),
    "usage_charges_no_update_delete": (
        "usage_charges",
        "BEFORE UPDATE OR DELETE ON public.usage_charges FOR EACH ROW\n"
        "EXECUTE FUNCTION public.usage_append_only()",
    ),
    "usage_charges_no_truncate": (
        "usage_charges",
        "BEFORE TRUNCATE ON public.usage_charges FOR EACH STATEMENT\n"
        "EXECUTE FUNCTION public.usage_append_only()",
    ),
}


def _triggers() -> list[PGTrigger]:
    return [trigger(name, table, definition) for name, (table, definition) in _TRIGGERS.items()]


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    drop(*reversed(_triggers()))
    op.drop_constraint(
        op.f("ck_credit_transactions_job_only_for_charges"), "credit_transactions", type_="check"
    )
    op.create_check_constraint(
        op.f("ck_credit_transactions_job_only_for_charges"),
        "credit_transactions",
        "(type IN ('consumption', 'refund')) = (job_id IS NOT NULL)",
    )
    op.drop_constraint(op.f("ck_api_keys_monthly_row_quota_positive"), "api_keys", type_="check")
    op.drop_constraint(op.f("ck_api_keys_rate_limit_positive"), "api_keys", type_="check")
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_column("api_keys", "monthly_row_quota")
    op.drop_column("api_keys", "rate_limit_per_minute")
    op.drop_index("ix_usage_charges_user_id_period_start", table_name="usage_charges")
    op.drop_table("usage_charges")
    op.drop_table("api_key_usage_windows")
    op.drop_table("usage_meters")
    op.drop_index("ix_usage_holds_user_id_expires_at", table_name="usage_holds")
    op.drop_table("usage_holds")
    op.drop_index("ix_usage_events_user_id_created_at", table_name="usage_events")
    op.drop_table("usage_events")
    op.drop_index("ix_inference_requests_user_id_created_at", table_name="inference_requests")
    op.drop_index(
        "ix_inference_requests_deployment_id_created_at_id", table_name="inference_requests"
    )
    op.drop_table("inference_requests")
    drop(
        INFERENCE_REQUESTS_ENSURE_PARTITIONS_FUNCTION,
        USAGE_ADMIT_FUNCTION,
        INFERENCE_REQUESTS_PARTITION_FOR_FUNCTION,
        USAGE_EVENTS_BEFORE_INSERT_FUNCTION,
        USAGE_APPEND_ONLY_FUNCTION,
        INFERENCE_REQUESTS_APPEND_ONLY_FUNCTION,
    )

    op.replace_entity(
        function(
            "credit_tx_before_insert()",
            "returns trigger\n LANGUAGE plpgsql\n SECURITY DEFINER\n SET search_path TO 'pg_catalog', 'public', 'pg_temp'\nAS $function$\nDECLARE\n    v_charged integer;\n    v_balance integer;\n    v_deleted boolean;\nBEGIN\n    -- A malformed row is refused by the constraint it breaks, before any balance\n    -- is read (BEFORE triggers run ahead of NOT NULL and CHECK constraints).\n    IF NEW.user_id IS NULL OR NEW.type IS NULL OR NEW.amount IS NULL THEN\n        RAISE EXCEPTION 'credit_transactions\\: user_id, type and amount are required'\n            USING ERRCODE = 'not_null_violation';\n    END IF;\n    IF NOT ((NEW.type = 'purchase' AND NEW.amount > 0) OR (NEW.type = 'consumption' AND NEW.amount < 0)\n            OR (NEW.type = 'refund' AND NEW.amount > 0) OR (NEW.type = 'adjustment' AND NEW.amount <> 0)) THEN\n        RAISE EXCEPTION 'a % of % credits has the wrong sign', NEW.type, NEW.amount\n            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_credit_transactions_amount_sign';\n    END IF;\n    IF (NEW.type IN ('consumption', 'refund')) <> (NEW.job_id IS NOT NULL) THEN\n        RAISE EXCEPTION 'a % % a job', NEW.type,\n            CASE WHEN NEW.job_id IS NULL THEN 'needs' ELSE 'cannot name' END\n            USING ERRCODE = 'check_violation',\n                  CONSTRAINT = 'ck_credit_transactions_job_only_for_charges';\n    END IF;\n\n    -- Entries of one id, for whatever user, are applied one at a time\\: the lock is\n    -- held to the end of the transaction, and every statement below starts after it\n    -- was granted, so it sees an entry of this id that committed meanwhile. Without\n    -- it, two concurrent INSERT ... ON CONFLICT (id) DO NOTHING of one new id both\n    -- passed the id test (its snapshot predates the other's commit) and the second\n    -- moved the balance, then skipped its row on the conflict. Costs one statement\n    -- per entry (docs/performance.md).\n    PERFORM pg_advisory_xact_lock(hashtextextended('ledger-id\\:' || NEW.id::text, 0));\n\n    -- Duplicates are tested under the user's row lock, so one user's are checked one\n    -- at a time. A purchase with a payment id and a refund lock the row first; a\n    -- consumption (the common charge) tests its job after the balance UPDATE below,\n    -- which takes the same lock\\: one statement fewer per charge, and a duplicate\n    -- still raises before the INSERT goes on, undoing the UPDATE with it.\n    IF NEW.stripe_payment_id IS NOT NULL OR NEW.type = 'refund'\n       OR NEW.idempotency_key IS NOT NULL THEN\n        PERFORM 1 FROM public.users AS u WHERE u.id = NEW.user_id FOR NO KEY UPDATE;\n        IF NEW.idempotency_key IS NOT NULL THEN\n            -- Like a payment id\\: a key could be sent for two users, serialize on it.\n            PERFORM pg_advisory_xact_lock(hashtextextended('idem\\:' || NEW.idempotency_key, 0));\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.idempotency_key = NEW.idempotency_key) THEN\n                RAISE EXCEPTION 'idempotency key % was already used', NEW.idempotency_key\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_idempotency_key';\n            END IF;\n        END IF;\n        IF NEW.stripe_payment_id IS NOT NULL THEN\n            -- One payment id could be sent for two users\\: serialize on the id too.\n            PERFORM pg_advisory_xact_lock(hashtextextended('stripe\\:' || NEW.stripe_payment_id, 0));\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.stripe_payment_id = NEW.stripe_payment_id) THEN\n                RAISE EXCEPTION 'stripe payment % was already credited', NEW.stripe_payment_id\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_stripe_payment_id';\n            END IF;\n        END IF;\n        IF NEW.job_id IS NOT NULL THEN  -- a refund here (see the two IFs below)\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.job_id = NEW.job_id AND t.type = NEW.type) THEN\n                RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_job_id_' || NEW.type::text;\n            END IF;\n        END IF;\n    END IF;\n    -- An entry id that exists already is refused before the balance moves. For\n    -- every type but refunds that test is part of the balance UPDATE below (NOT\n    -- EXISTS, which sees every entry of this id committed before the id lock above\n    -- was granted)\\: as a statement of its own it cost a fifth of the trigger's time\n    -- per charge (docs/performance.md). A refund tests it first, as its rules come next.\n    IF NEW.type = 'refund' THEN\n        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id) THEN\n            RAISE EXCEPTION 'ledger entry % already exists and cannot be replaced', NEW.id\n                USING ERRCODE = 'ML002';\n        END IF;\n        SELECT -t.amount INTO v_charged\n          FROM public.credit_transactions AS t\n         WHERE t.job_id = NEW.job_id AND t.type = 'consumption';\n        IF v_charged IS NULL THEN\n            RAISE EXCEPTION 'job % was never charged, so it cannot be refunded', NEW.job_id\n                USING ERRCODE = 'ML004';\n        ELSIF NEW.amount > v_charged THEN\n            RAISE EXCEPTION 'refund of % credits exceeds the % charged for job %',\n                NEW.amount, v_charged, NEW.job_id\n                USING ERRCODE = 'ML004';\n        END IF;\n    END IF;\n\n    -- One statement takes the row lock, applies the rule and computes the balance.\n    UPDATE public.users AS u\n       SET credit_balance = u.credit_balance + NEW.amount\n     WHERE u.id = NEW.user_id\n       AND u.credit_balance + NEW.amount >= 0\n       AND NOT (u.is_deleted AND NEW.type = 'purchase')\n       AND NOT EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id)\n    RETURNING u.credit_balance INTO NEW.balance_after;\n\n    IF NOT FOUND THEN\n        IF NEW.type = 'consumption' THEN\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.job_id = NEW.job_id AND t.type = 'consumption') THEN\n                RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_job_id_consumption';\n            END IF;\n        END IF;\n        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id) THEN\n            RAISE EXCEPTION 'ledger entry % already exists and cannot be replaced', NEW.id\n                USING ERRCODE = 'ML002';\n        END IF;\n        SELECT u.credit_balance, u.is_deleted INTO v_balance, v_deleted\n          FROM public.users AS u WHERE u.id = NEW.user_id;\n        IF NOT FOUND THEN\n            RAISE EXCEPTION 'user % does not exist', NEW.user_id\n                USING ERRCODE = 'foreign_key_violation',\n                      CONSTRAINT = 'fk_credit_transactions_user_id_users';\n        ELSIF v_deleted AND NEW.type = 'purchase' THEN\n            RAISE EXCEPTION 'user % is deleted and cannot buy credits', NEW.user_id\n                USING ERRCODE = 'ML005';\n        ELSE\n            RAISE EXCEPTION 'insufficient credits\\: balance %, % of %',\n                v_balance, NEW.type, NEW.amount\n                USING ERRCODE = 'ML001',\n                      DETAIL = format('balance=%s amount=%s', v_balance, NEW.amount);\n        END IF;\n    END IF;\n    -- The user's row is locked now (a new statement, a new snapshot)\\: a charge of\n    -- the same job that committed first is seen here. (Two IFs, not one with AND\\: a\n    -- condition holding a subquery is a query of its own, and one whose first half\n    -- folds to false for most rows is planned again on every call, the plan cache\n    -- finding each custom plan cheaper than a generic one.)\n    IF NEW.type = 'consumption' THEN\n        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                    WHERE t.job_id = NEW.job_id AND t.type = 'consumption') THEN\n            RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type\n                USING ERRCODE = 'unique_violation',\n                      CONSTRAINT = 'uq_credit_transactions_job_id_consumption';\n        END IF;\n    END IF;\n    NEW.created_at := clock_timestamp();\n    RETURN NEW;\nEND;\n$function$",
        )
    )
    # ### end Alembic commands ###
    sa.Enum(name="quota_window").drop(op.get_bind(), checkfirst=False)
    sa.Enum(name="usage_sku").drop(op.get_bind(), checkfirst=False)
    sa.Enum(name="inference_status").drop(op.get_bind(), checkfirst=False)
