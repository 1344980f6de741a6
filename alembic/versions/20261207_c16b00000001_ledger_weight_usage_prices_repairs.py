"""ledger weight usage prices repairs

Revision ID: c16b00000001
Revises: c15b00000001
Create Date: 2026-12-07 10:32:45.068940+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from database.migrations import create, drop, function, trigger

revision: str = "c16b00000001"
down_revision: str | Sequence[str] | None = "c15b00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


BILLING_ALERTS_CHECK_FUNCTION = function(
    "billing_alerts_check(p_user uuid, p_balance bigint, p_spent bigint)",
    "returns void\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    r record;\n    v_event uuid;\n    v_spend bigint;\n    v_now timestamptz := clock_timestamp();\n    v_month_start timestamptz := date_trunc('month', clock_timestamp(), 'UTC');\nBEGIN\n    -- Read without a lock\\: most charges change no alert. A transition is an UPDATE\n    -- that tests the state again under the alert's row lock (armed, fired_month), so\n    -- of two transactions that saw the same state only one fires; and one user's\n    -- entries are serialized by the user's row lock anyway.\n    FOR r IN\n        SELECT a.id, a.kind, a.threshold, a.armed, a.fired_month\n          FROM public.billing_alerts AS a\n         WHERE a.user_id = p_user AND a.active\n         ORDER BY a.id\n    LOOP\n        IF r.kind = 'balance_below' THEN\n            IF r.armed AND p_balance < r.threshold THEN\n                UPDATE public.billing_alerts SET armed = false WHERE id = r.id AND armed;\n                IF FOUND THEN\n                    v_event := gen_random_uuid();\n                    INSERT INTO public.billing_alert_events (id, alert_id, user_id, kind, threshold, value, payload)\n                    VALUES (v_event, r.id, p_user, r.kind, r.threshold, p_balance,\n                            jsonb_build_object('id', v_event, 'type', 'billing_alert.balance_below',\n                                               'alert_id', r.id, 'user_id', p_user,\n                                               'threshold', r.threshold, 'balance', p_balance,\n                                               'created', floor(extract(epoch FROM v_now))::bigint));\n                END IF;\n            ELSIF NOT r.armed AND p_balance >= r.threshold THEN\n                UPDATE public.billing_alerts SET armed = true WHERE id = r.id;\n            END IF;\n        ELSIF r.fired_month IS DISTINCT FROM v_month_start AND p_spent > 0 THEN  -- spend_above\n            SELECT coalesce(-sum(t.amount), 0) + p_spent INTO v_spend\n              FROM public.credit_transactions AS t\n             WHERE t.user_id = p_user\n               AND t.created_at >= v_month_start\n               AND t.type IN ('consumption', 'refund');\n            IF v_spend > r.threshold THEN\n                UPDATE public.billing_alerts SET fired_month = v_month_start\n                 WHERE id = r.id AND fired_month IS DISTINCT FROM v_month_start;\n                IF FOUND THEN\n                    v_event := gen_random_uuid();\n                    INSERT INTO public.billing_alert_events (id, alert_id, user_id, kind, threshold, value, payload)\n                    VALUES (v_event, r.id, p_user, r.kind, r.threshold, v_spend,\n                            jsonb_build_object('id', v_event, 'type', 'billing_alert.spend_above',\n                                               'alert_id', r.id, 'user_id', p_user,\n                                               'threshold', r.threshold, 'spend', v_spend,\n                                               'month', to_char(v_month_start AT TIME ZONE 'UTC', 'YYYY-MM'),\n                                               'created', floor(extract(epoch FROM v_now))::bigint));\n                END IF;\n            END IF;\n        END IF;\n    END LOOP;\nEND;\n$$",
)
BILLING_ALERTS_FLAG_FUNCTION = function(
    "billing_alerts_flag()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_user uuid;\nBEGIN\n    FOREACH v_user IN ARRAY ARRAY[CASE WHEN TG_OP <> 'INSERT' THEN OLD.user_id END,\n                                  CASE WHEN TG_OP <> 'DELETE' THEN NEW.user_id END] LOOP\n        CONTINUE WHEN v_user IS NULL;\n        UPDATE public.users AS u\n           SET billing_alerts_active = x.any_active\n          FROM (SELECT EXISTS (SELECT 1 FROM public.billing_alerts AS a\n                                WHERE a.user_id = v_user AND a.active) AS any_active) AS x\n         WHERE u.id = v_user AND u.billing_alerts_active IS DISTINCT FROM x.any_active;\n    END LOOP;\n    RETURN NULL;\nEND;\n$$",
)
BILLING_ALERTS_FLAG_TRIGGER = trigger(
    "billing_alerts_flag",
    "billing_alerts",
    "AFTER INSERT OR DELETE OR UPDATE OF active, user_id ON public.billing_alerts FOR EACH ROW EXECUTE FUNCTION public.billing_alerts_flag()",
)
BILLING_ALERTS_FIRE_TRIGGER = trigger(
    "billing_alerts_fire",
    "credit_transactions",
    "AFTER INSERT ON public.credit_transactions REFERENCING NEW TABLE AS new_entries FOR EACH STATEMENT EXECUTE FUNCTION billing_alerts_fire()",
)
BILLING_ALERTS_FIRE_FUNCTION = function(
    "billing_alerts_fire()",
    "returns trigger\n LANGUAGE plpgsql\n SECURITY DEFINER\n SET search_path TO 'pg_catalog', 'public', 'pg_temp'\nAS $function$\nDECLARE\n    r record;\n    v_event uuid;\n    v_spend bigint;\n    v_now timestamptz := clock_timestamp();\n    v_month_start timestamptz := date_trunc('month', clock_timestamp(), 'UTC');\nBEGIN\n    -- Nearly every statement ends here\\: one index probe per user of the statement.\n    IF NOT EXISTS (SELECT 1 FROM public.billing_alerts AS a\n                    WHERE a.active AND a.user_id IN (SELECT n.user_id FROM new_entries AS n)) THEN\n        RETURN NULL;\n    END IF;\n\n    -- Read without a lock\\: most charges change no alert. A transition is an UPDATE\n    -- that tests the state again under the alert's row lock (armed, fired_month), so\n    -- of two transactions that saw the same state only one fires; and one user's\n    -- charges are serialized by the user's row lock anyway (credit_tx_before_insert).\n    FOR r IN\n        SELECT a.id, a.user_id, a.kind, a.threshold, a.armed, a.fired_month, u.credit_balance\n          FROM public.billing_alerts AS a\n          JOIN public.users AS u ON u.id = a.user_id\n         WHERE a.active\n           AND a.user_id IN (SELECT n.user_id FROM new_entries AS n)\n         ORDER BY a.id\n    LOOP\n        IF r.kind = 'balance_below' THEN\n            IF r.armed AND r.credit_balance < r.threshold THEN\n                UPDATE public.billing_alerts SET armed = false WHERE id = r.id AND armed;\n                IF FOUND THEN\n                    v_event := gen_random_uuid();\n                    INSERT INTO public.billing_alert_events (id, alert_id, user_id, kind, threshold, value, payload)\n                    VALUES (v_event, r.id, r.user_id, r.kind, r.threshold, r.credit_balance,\n                            jsonb_build_object('id', v_event, 'type', 'billing_alert.balance_below',\n                                               'alert_id', r.id, 'user_id', r.user_id,\n                                               'threshold', r.threshold, 'balance', r.credit_balance,\n                                               'created', floor(extract(epoch FROM v_now))::bigint));\n                END IF;\n            ELSIF NOT r.armed AND r.credit_balance >= r.threshold THEN\n                UPDATE public.billing_alerts SET armed = true WHERE id = r.id;\n            END IF;\n        ELSIF r.fired_month IS DISTINCT FROM v_month_start THEN  -- spend_above\n            SELECT coalesce(-sum(t.amount), 0) INTO v_spend\n              FROM public.credit_transactions AS t\n             WHERE t.user_id = r.user_id\n               AND t.created_at >= v_month_start\n               AND t.type IN ('consumption', 'refund');\n            IF v_spend > r.threshold THEN\n                UPDATE public.billing_alerts SET fired_month = v_month_start\n                 WHERE id = r.id AND fired_month IS DISTINCT FROM v_month_start;\n                IF FOUND THEN\n                    v_event := gen_random_uuid();\n                    INSERT INTO public.billing_alert_events (id, alert_id, user_id, kind, threshold, value, payload)\n                    VALUES (v_event, r.id, r.user_id, r.kind, r.threshold, v_spend,\n                            jsonb_build_object('id', v_event, 'type', 'billing_alert.spend_above',\n                                               'alert_id', r.id, 'user_id', r.user_id,\n                                               'threshold', r.threshold, 'spend', v_spend,\n                                               'month', to_char(v_month_start AT TIME ZONE 'UTC', 'YYYY-MM'),\n                                               'created', floor(extract(epoch FROM v_now))::bigint));\n                END IF;\n            END IF;\n        END IF;\n    END LOOP;\n    RETURN NULL;\nEND;\n$function$",
)
BILLING_USAGE_PRICE_MICRO_FUNCTION = function(
    "billing_usage_price_micro(p_user uuid, p_sku text)",
    "returns bigint\nLANGUAGE plpgsql\nSTABLE\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_tier public.user_tier;\n    v_price bigint;\n    v_at timestamptz := clock_timestamp();\nBEGIN\n    SELECT u.tier INTO v_tier FROM public.users AS u WHERE u.id = p_user;\n    IF NOT FOUND THEN\n        RETURN NULL;  -- no such user\\: the row's foreign key refuses it\n    END IF;\n    SELECT i.credits_per_unit INTO v_price\n      FROM public.price_books AS b\n      JOIN public.price_items AS i ON i.price_book_id = b.id AND i.sku = p_sku\n     WHERE b.tier = v_tier\n       AND b.effective_from <= v_at\n       AND (b.effective_to IS NULL OR b.effective_to > v_at)\n     ORDER BY b.effective_from DESC\n     LIMIT 1;\n    IF v_price IS NULL THEN\n        RAISE EXCEPTION 'no % price book in force prices %', v_tier, p_sku\n            USING ERRCODE = 'ML093';\n    END IF;\n    RETURN v_price * 1000;\nEND;\n$$",
)
USAGE_EVENTS_APPLY_PRICE_FUNCTION = function(
    "usage_events_apply_price()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF NEW.user_id IS NOT NULL AND NEW.sku IS NOT NULL THEN\n        NEW.unit_price_micro := public.billing_usage_price_micro(NEW.user_id, NEW.sku::text);\n    END IF;\n    RETURN NEW;\nEND;\n$$",
)
USAGE_EVENTS_APPLY_PRICE_TRIGGER = trigger(
    "usage_events_apply_price",
    "usage_events",
    "BEFORE INSERT ON public.usage_events FOR EACH ROW EXECUTE FUNCTION public.usage_events_apply_price()",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column(
        "users",
        sa.Column(
            "billing_alerts_active", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
    )
    # The flag of the users who have an active alert already (by hand).
    op.execute(
        "UPDATE users SET billing_alerts_active = true"
        " WHERE id IN (SELECT user_id FROM billing_alerts WHERE active)"
    )
    create(
        BILLING_ALERTS_CHECK_FUNCTION,
        BILLING_ALERTS_FLAG_FUNCTION,
    )

    op.replace_entity(
        function(
            "credit_tx_before_insert()",
            "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_charged integer;\n    v_balance integer;\n    v_deleted boolean;\n    v_alerts boolean;\nBEGIN\n    -- A malformed row is refused by the constraint it breaks, before any balance\n    -- is read (BEFORE triggers run ahead of NOT NULL and CHECK constraints).\n    IF NEW.user_id IS NULL OR NEW.type IS NULL OR NEW.amount IS NULL THEN\n        RAISE EXCEPTION 'credit_transactions\\: user_id, type and amount are required'\n            USING ERRCODE = 'not_null_violation';\n    END IF;\n    IF NOT ((NEW.type = 'purchase' AND NEW.amount > 0) OR (NEW.type = 'consumption' AND NEW.amount < 0)\n            OR (NEW.type = 'refund' AND NEW.amount > 0) OR (NEW.type = 'adjustment' AND NEW.amount <> 0)) THEN\n        RAISE EXCEPTION 'a % of % credits has the wrong sign', NEW.type, NEW.amount\n            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_credit_transactions_amount_sign';\n    END IF;\n    -- A consumption charges a job, or usage (database.metering\\: no job, an\n    -- idempotency key per deployment and period).\n    IF (NEW.type = 'consumption' AND (NEW.job_id IS NULL) = (NEW.idempotency_key IS NULL))\n       OR (NEW.type = 'refund' AND NEW.job_id IS NULL)\n       OR (NEW.type NOT IN ('consumption', 'refund') AND NEW.job_id IS NOT NULL) THEN\n        RAISE EXCEPTION 'a % % a job', NEW.type,\n            CASE WHEN NEW.job_id IS NULL THEN 'needs' ELSE 'cannot name' END\n            USING ERRCODE = 'check_violation',\n                  CONSTRAINT = 'ck_credit_transactions_job_only_for_charges';\n    END IF;\n\n    -- Entries of one id, for whatever user, are applied one at a time\\: the lock is\n    -- held to the end of the transaction, and every statement below starts after it\n    -- was granted, so it sees an entry of this id that committed meanwhile. Without\n    -- it, two concurrent INSERT ... ON CONFLICT (id) DO NOTHING of one new id both\n    -- passed the id test (its snapshot predates the other's commit) and the second\n    -- moved the balance, then skipped its row on the conflict. Costs one statement\n    -- per entry (docs/performance.md).\n    PERFORM pg_advisory_xact_lock(hashtextextended('ledger-id\\:' || NEW.id::text, 0));\n\n    -- Duplicates are tested under the user's row lock, so one user's are checked one\n    -- at a time. A purchase with a payment id and a refund lock the row first; a\n    -- consumption (the common charge) tests its job after the balance UPDATE below,\n    -- which takes the same lock\\: one statement fewer per charge, and a duplicate\n    -- still raises before the INSERT goes on, undoing the UPDATE with it.\n    IF NEW.stripe_payment_id IS NOT NULL OR NEW.type = 'refund'\n       OR NEW.idempotency_key IS NOT NULL THEN\n        PERFORM 1 FROM public.users AS u WHERE u.id = NEW.user_id FOR NO KEY UPDATE;\n        IF NEW.idempotency_key IS NOT NULL THEN\n            -- Like a payment id\\: a key could be sent for two users, serialize on it.\n            PERFORM pg_advisory_xact_lock(hashtextextended('idem\\:' || NEW.idempotency_key, 0));\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.idempotency_key = NEW.idempotency_key) THEN\n                RAISE EXCEPTION 'idempotency key % was already used', NEW.idempotency_key\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_idempotency_key';\n            END IF;\n        END IF;\n        IF NEW.stripe_payment_id IS NOT NULL THEN\n            -- One payment id could be sent for two users\\: serialize on the id too.\n            PERFORM pg_advisory_xact_lock(hashtextextended('stripe\\:' || NEW.stripe_payment_id, 0));\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.stripe_payment_id = NEW.stripe_payment_id) THEN\n                RAISE EXCEPTION 'stripe payment % was already credited', NEW.stripe_payment_id\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_stripe_payment_id';\n            END IF;\n        END IF;\n        IF NEW.job_id IS NOT NULL THEN  -- a refund here (see the two IFs below)\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.job_id = NEW.job_id AND t.type = NEW.type) THEN\n                RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type\n                    USING ERRCODE = 'unique_violation', DETAIL = 'type=' || NEW.type::text,\n                          CONSTRAINT = 'uq_credit_transactions_job_id_user_id_type';\n            END IF;\n        END IF;\n    END IF;\n    -- An entry id that exists already is refused before the balance moves. For\n    -- every type but refunds that test is part of the balance UPDATE below (NOT\n    -- EXISTS, which sees every entry of this id committed before the id lock above\n    -- was granted)\\: as a statement of its own it cost a fifth of the trigger's time\n    -- per charge (docs/performance.md). A refund tests it first, as its rules come next.\n    IF NEW.type = 'refund' THEN\n        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id) THEN\n            RAISE EXCEPTION 'ledger entry % already exists and cannot be replaced', NEW.id\n                USING ERRCODE = 'ML002';\n        END IF;\n        SELECT -t.amount INTO v_charged\n          FROM public.credit_transactions AS t\n         WHERE t.job_id = NEW.job_id AND t.type = 'consumption';\n        IF v_charged IS NULL THEN\n            RAISE EXCEPTION 'job % was never charged, so it cannot be refunded', NEW.job_id\n                USING ERRCODE = 'ML004';\n        ELSIF NEW.amount > v_charged THEN\n            RAISE EXCEPTION 'refund of % credits exceeds the % charged for job %',\n                NEW.amount, v_charged, NEW.job_id\n                USING ERRCODE = 'ML004';\n        END IF;\n    END IF;\n\n    -- One statement takes the row lock, applies the rule and computes the balance.\n    UPDATE public.users AS u\n       SET credit_balance = u.credit_balance + NEW.amount\n     WHERE u.id = NEW.user_id\n       AND u.credit_balance + NEW.amount >= 0\n       AND NOT (u.is_deleted AND NEW.type = 'purchase')\n       AND NOT EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id)\n    RETURNING u.credit_balance, u.billing_alerts_active INTO NEW.balance_after, v_alerts;\n\n    IF NOT FOUND THEN\n        IF NEW.type = 'consumption' THEN\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.job_id = NEW.job_id AND t.type = 'consumption') THEN\n                RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type\n                    USING ERRCODE = 'unique_violation', DETAIL = 'type=consumption',\n                          CONSTRAINT = 'uq_credit_transactions_job_id_user_id_type';\n            END IF;\n        END IF;\n        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id) THEN\n            RAISE EXCEPTION 'ledger entry % already exists and cannot be replaced', NEW.id\n                USING ERRCODE = 'ML002';\n        END IF;\n        SELECT u.credit_balance, u.is_deleted INTO v_balance, v_deleted\n          FROM public.users AS u WHERE u.id = NEW.user_id;\n        IF NOT FOUND THEN\n            RAISE EXCEPTION 'user % does not exist', NEW.user_id\n                USING ERRCODE = 'foreign_key_violation',\n                      CONSTRAINT = 'fk_credit_transactions_user_id_users';\n        ELSIF v_deleted AND NEW.type = 'purchase' THEN\n            RAISE EXCEPTION 'user % is deleted and cannot buy credits', NEW.user_id\n                USING ERRCODE = 'ML005';\n        ELSE\n            RAISE EXCEPTION 'insufficient credits\\: balance %, % of %',\n                v_balance, NEW.type, NEW.amount\n                USING ERRCODE = 'ML001',\n                      DETAIL = format('balance=%s amount=%s', v_balance, NEW.amount);\n        END IF;\n    END IF;\n    -- The user's row is locked now (a new statement, a new snapshot)\\: a charge of\n    -- the same job that committed first is seen here. (Two IFs, not one with AND\\: a\n    -- condition holding a subquery is a query of its own, and one whose first half\n    -- folds to false for most rows is planned again on every call, the plan cache\n    -- finding each custom plan cheaper than a generic one.)\n    IF NEW.type = 'consumption' THEN\n        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                    WHERE t.job_id = NEW.job_id AND t.type = 'consumption') THEN\n            RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type\n                USING ERRCODE = 'unique_violation', DETAIL = 'type=consumption',\n                      CONSTRAINT = 'uq_credit_transactions_job_id_user_id_type';\n        END IF;\n    END IF;\n    -- Billing alerts (billing.sql), only for a user who has an active one\\: the flag\n    -- came back with the balance, so the others pay nothing for them.\n    IF v_alerts THEN\n        PERFORM public.billing_alerts_check(\n            NEW.user_id, NEW.balance_after,\n            CASE WHEN NEW.type IN ('consumption', 'refund') THEN -NEW.amount ELSE 0 END);\n    END IF;\n    NEW.created_at := clock_timestamp();\n    RETURN NEW;\nEND;\n$$",
        )
    )

    op.create_entity(BILLING_ALERTS_FLAG_TRIGGER)

    drop(
        BILLING_ALERTS_FIRE_TRIGGER,
        BILLING_ALERTS_FIRE_FUNCTION,
    )

    op.drop_index(
        op.f("ix_credit_transactions_job_id_user_id"),
        table_name="credit_transactions",
        postgresql_where="(job_id IS NOT NULL)",
    )
    op.drop_index(
        op.f("uq_credit_transactions_job_id_consumption"),
        table_name="credit_transactions",
        postgresql_where="(type = 'consumption'::transaction_type)",
    )
    op.drop_index(
        op.f("uq_credit_transactions_job_id_refund"),
        table_name="credit_transactions",
        postgresql_where="(type = 'refund'::transaction_type)",
    )
    op.drop_constraint(
        op.f("uq_credit_transactions_stripe_payment_id"), "credit_transactions", type_="unique"
    )
    op.create_index(
        "uq_credit_transactions_stripe_payment_id",
        "credit_transactions",
        ["stripe_payment_id"],
        unique=True,
        postgresql_where=sa.text("stripe_payment_id IS NOT NULL"),
    )
    op.create_index(
        "uq_credit_transactions_job_id_user_id_type",
        "credit_transactions",
        ["job_id", "user_id", "type"],
        unique=True,
        postgresql_where=sa.text("job_id IS NOT NULL"),
    )
    create(
        BILLING_USAGE_PRICE_MICRO_FUNCTION,
        USAGE_EVENTS_APPLY_PRICE_FUNCTION,
        USAGE_EVENTS_APPLY_PRICE_TRIGGER,
    )
    # Metering's skus in every book that is open (c16a's first books have them; a
    # book an operator made since keeps its items): added where missing, at the first
    # book's price (1 credit per 1,000 rows). By hand. Adding an item to a book in
    # force changes no price anything was charged at (nothing was priced with it).
    # An evaluation run's price (PRICING__EVALUATION_CREDITS' default, 2) joins them.
    for sku, unit, credits in (
        ("predicted_rows", "thousand_rows", 1),
        ("batch_rows", "thousand_rows", 1),
        ("evaluation", "job", 2),
    ):
        op.execute(
            "INSERT INTO price_items (price_book_id, sku, unit, credits_per_unit)"
            f" SELECT b.id, '{sku}', '{unit}', {credits} FROM price_books AS b"
            " WHERE b.effective_to IS NULL AND NOT EXISTS (SELECT 1 FROM price_items AS i"
            f" WHERE i.price_book_id = b.id AND i.sku = '{sku}')"
        )
    # Reconciliation adjustments name the row they changed, like derived_repairs.
    op.add_column(
        "reconciliation_adjustments",
        sa.Column("table_name", sa.Text(), server_default=sa.text("'users'"), nullable=False),
    )
    op.add_column("reconciliation_adjustments", sa.Column("row_id", sa.UUID(), nullable=True))
    # A registry repair recorded before: "download_count of model version <id>" (by hand).
    op.execute(
        "UPDATE reconciliation_adjustments AS a"
        " SET table_name = CASE m[2] WHEN 'model version' THEN 'model_versions'"
        " ELSE 'registered_models' END, row_id = m[3]::uuid, column_name = m[1]"
        " FROM (SELECT id, regexp_match(column_name,"
        " '^([a-z_]+) of (model version|registered model) ([0-9a-f-]{36})$') AS m"
        " FROM reconciliation_adjustments) AS x"
        " WHERE x.id = a.id AND x.m IS NOT NULL"
    )
    op.create_check_constraint(
        "table_name_known",
        "reconciliation_adjustments",
        "table_name IN ('users', 'model_versions', 'registered_models')",
    )
    op.create_check_constraint(
        "row_id_unless_users",
        "reconciliation_adjustments",
        "(table_name = 'users') = (row_id IS NULL)",
    )
    # By hand (autogenerate compares no server default): time-ordered entry ids.
    op.alter_column("credit_transactions", "id", server_default=sa.text("uuidv7()"))


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint("row_id_unless_users", "reconciliation_adjustments", type_="check")
    op.drop_constraint("table_name_known", "reconciliation_adjustments", type_="check")
    op.drop_column("reconciliation_adjustments", "row_id")
    op.drop_column("reconciliation_adjustments", "table_name")
    drop(
        USAGE_EVENTS_APPLY_PRICE_TRIGGER,
        USAGE_EVENTS_APPLY_PRICE_FUNCTION,
        BILLING_USAGE_PRICE_MICRO_FUNCTION,
    )
    op.alter_column("credit_transactions", "id", server_default=sa.text("gen_random_uuid()"))
    op.drop_index(
        "uq_credit_transactions_job_id_user_id_type",
        table_name="credit_transactions",
        postgresql_where=sa.text("job_id IS NOT NULL"),
    )
    op.drop_index(
        "uq_credit_transactions_stripe_payment_id",
        table_name="credit_transactions",
        postgresql_where=sa.text("stripe_payment_id IS NOT NULL"),
    )
    op.create_unique_constraint(
        op.f("uq_credit_transactions_stripe_payment_id"),
        "credit_transactions",
        ["stripe_payment_id"],
        postgresql_nulls_not_distinct=False,
    )
    op.create_index(
        op.f("uq_credit_transactions_job_id_refund"),
        "credit_transactions",
        ["job_id"],
        unique=True,
        postgresql_where="(type = 'refund'::transaction_type)",
    )
    op.create_index(
        op.f("uq_credit_transactions_job_id_consumption"),
        "credit_transactions",
        ["job_id"],
        unique=True,
        postgresql_where="(type = 'consumption'::transaction_type)",
    )
    op.create_index(
        op.f("ix_credit_transactions_job_id_user_id"),
        "credit_transactions",
        ["job_id", "user_id"],
        unique=False,
        postgresql_where="(job_id IS NOT NULL)",
    )

    create(
        BILLING_ALERTS_FIRE_FUNCTION,
        BILLING_ALERTS_FIRE_TRIGGER,
    )

    op.drop_entity(BILLING_ALERTS_FLAG_TRIGGER)

    op.replace_entity(
        function(
            "credit_tx_before_insert()",
            "returns trigger\n LANGUAGE plpgsql\n SECURITY DEFINER\n SET search_path TO 'pg_catalog', 'public', 'pg_temp'\nAS $function$\nDECLARE\n    v_charged integer;\n    v_balance integer;\n    v_deleted boolean;\nBEGIN\n    -- A malformed row is refused by the constraint it breaks, before any balance\n    -- is read (BEFORE triggers run ahead of NOT NULL and CHECK constraints).\n    IF NEW.user_id IS NULL OR NEW.type IS NULL OR NEW.amount IS NULL THEN\n        RAISE EXCEPTION 'credit_transactions\\: user_id, type and amount are required'\n            USING ERRCODE = 'not_null_violation';\n    END IF;\n    IF NOT ((NEW.type = 'purchase' AND NEW.amount > 0) OR (NEW.type = 'consumption' AND NEW.amount < 0)\n            OR (NEW.type = 'refund' AND NEW.amount > 0) OR (NEW.type = 'adjustment' AND NEW.amount <> 0)) THEN\n        RAISE EXCEPTION 'a % of % credits has the wrong sign', NEW.type, NEW.amount\n            USING ERRCODE = 'check_violation', CONSTRAINT = 'ck_credit_transactions_amount_sign';\n    END IF;\n    -- A consumption charges a job, or usage (database.metering\\: no job, an\n    -- idempotency key per deployment and period).\n    IF (NEW.type = 'consumption' AND (NEW.job_id IS NULL) = (NEW.idempotency_key IS NULL))\n       OR (NEW.type = 'refund' AND NEW.job_id IS NULL)\n       OR (NEW.type NOT IN ('consumption', 'refund') AND NEW.job_id IS NOT NULL) THEN\n        RAISE EXCEPTION 'a % % a job', NEW.type,\n            CASE WHEN NEW.job_id IS NULL THEN 'needs' ELSE 'cannot name' END\n            USING ERRCODE = 'check_violation',\n                  CONSTRAINT = 'ck_credit_transactions_job_only_for_charges';\n    END IF;\n\n    -- Entries of one id, for whatever user, are applied one at a time\\: the lock is\n    -- held to the end of the transaction, and every statement below starts after it\n    -- was granted, so it sees an entry of this id that committed meanwhile. Without\n    -- it, two concurrent INSERT ... ON CONFLICT (id) DO NOTHING of one new id both\n    -- passed the id test (its snapshot predates the other's commit) and the second\n    -- moved the balance, then skipped its row on the conflict. Costs one statement\n    -- per entry (docs/performance.md).\n    PERFORM pg_advisory_xact_lock(hashtextextended('ledger-id\\:' || NEW.id::text, 0));\n\n    -- Duplicates are tested under the user's row lock, so one user's are checked one\n    -- at a time. A purchase with a payment id and a refund lock the row first; a\n    -- consumption (the common charge) tests its job after the balance UPDATE below,\n    -- which takes the same lock\\: one statement fewer per charge, and a duplicate\n    -- still raises before the INSERT goes on, undoing the UPDATE with it.\n    IF NEW.stripe_payment_id IS NOT NULL OR NEW.type = 'refund'\n       OR NEW.idempotency_key IS NOT NULL THEN\n        PERFORM 1 FROM public.users AS u WHERE u.id = NEW.user_id FOR NO KEY UPDATE;\n        IF NEW.idempotency_key IS NOT NULL THEN\n            -- Like a payment id\\: a key could be sent for two users, serialize on it.\n            PERFORM pg_advisory_xact_lock(hashtextextended('idem\\:' || NEW.idempotency_key, 0));\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.idempotency_key = NEW.idempotency_key) THEN\n                RAISE EXCEPTION 'idempotency key % was already used', NEW.idempotency_key\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_idempotency_key';\n            END IF;\n        END IF;\n        IF NEW.stripe_payment_id IS NOT NULL THEN\n            -- One payment id could be sent for two users\\: serialize on the id too.\n            PERFORM pg_advisory_xact_lock(hashtextextended('stripe\\:' || NEW.stripe_payment_id, 0));\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.stripe_payment_id = NEW.stripe_payment_id) THEN\n                RAISE EXCEPTION 'stripe payment % was already credited', NEW.stripe_payment_id\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_stripe_payment_id';\n            END IF;\n        END IF;\n        IF NEW.job_id IS NOT NULL THEN  -- a refund here (see the two IFs below)\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.job_id = NEW.job_id AND t.type = NEW.type) THEN\n                RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_job_id_' || NEW.type::text;\n            END IF;\n        END IF;\n    END IF;\n    -- An entry id that exists already is refused before the balance moves. For\n    -- every type but refunds that test is part of the balance UPDATE below (NOT\n    -- EXISTS, which sees every entry of this id committed before the id lock above\n    -- was granted)\\: as a statement of its own it cost a fifth of the trigger's time\n    -- per charge (docs/performance.md). A refund tests it first, as its rules come next.\n    IF NEW.type = 'refund' THEN\n        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id) THEN\n            RAISE EXCEPTION 'ledger entry % already exists and cannot be replaced', NEW.id\n                USING ERRCODE = 'ML002';\n        END IF;\n        SELECT -t.amount INTO v_charged\n          FROM public.credit_transactions AS t\n         WHERE t.job_id = NEW.job_id AND t.type = 'consumption';\n        IF v_charged IS NULL THEN\n            RAISE EXCEPTION 'job % was never charged, so it cannot be refunded', NEW.job_id\n                USING ERRCODE = 'ML004';\n        ELSIF NEW.amount > v_charged THEN\n            RAISE EXCEPTION 'refund of % credits exceeds the % charged for job %',\n                NEW.amount, v_charged, NEW.job_id\n                USING ERRCODE = 'ML004';\n        END IF;\n    END IF;\n\n    -- One statement takes the row lock, applies the rule and computes the balance.\n    UPDATE public.users AS u\n       SET credit_balance = u.credit_balance + NEW.amount\n     WHERE u.id = NEW.user_id\n       AND u.credit_balance + NEW.amount >= 0\n       AND NOT (u.is_deleted AND NEW.type = 'purchase')\n       AND NOT EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id)\n    RETURNING u.credit_balance INTO NEW.balance_after;\n\n    IF NOT FOUND THEN\n        IF NEW.type = 'consumption' THEN\n            IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                        WHERE t.job_id = NEW.job_id AND t.type = 'consumption') THEN\n                RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type\n                    USING ERRCODE = 'unique_violation',\n                          CONSTRAINT = 'uq_credit_transactions_job_id_consumption';\n            END IF;\n        END IF;\n        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t WHERE t.id = NEW.id) THEN\n            RAISE EXCEPTION 'ledger entry % already exists and cannot be replaced', NEW.id\n                USING ERRCODE = 'ML002';\n        END IF;\n        SELECT u.credit_balance, u.is_deleted INTO v_balance, v_deleted\n          FROM public.users AS u WHERE u.id = NEW.user_id;\n        IF NOT FOUND THEN\n            RAISE EXCEPTION 'user % does not exist', NEW.user_id\n                USING ERRCODE = 'foreign_key_violation',\n                      CONSTRAINT = 'fk_credit_transactions_user_id_users';\n        ELSIF v_deleted AND NEW.type = 'purchase' THEN\n            RAISE EXCEPTION 'user % is deleted and cannot buy credits', NEW.user_id\n                USING ERRCODE = 'ML005';\n        ELSE\n            RAISE EXCEPTION 'insufficient credits\\: balance %, % of %',\n                v_balance, NEW.type, NEW.amount\n                USING ERRCODE = 'ML001',\n                      DETAIL = format('balance=%s amount=%s', v_balance, NEW.amount);\n        END IF;\n    END IF;\n    -- The user's row is locked now (a new statement, a new snapshot)\\: a charge of\n    -- the same job that committed first is seen here. (Two IFs, not one with AND\\: a\n    -- condition holding a subquery is a query of its own, and one whose first half\n    -- folds to false for most rows is planned again on every call, the plan cache\n    -- finding each custom plan cheaper than a generic one.)\n    IF NEW.type = 'consumption' THEN\n        IF EXISTS (SELECT 1 FROM public.credit_transactions AS t\n                    WHERE t.job_id = NEW.job_id AND t.type = 'consumption') THEN\n            RAISE EXCEPTION 'job % already has a %', NEW.job_id, NEW.type\n                USING ERRCODE = 'unique_violation',\n                      CONSTRAINT = 'uq_credit_transactions_job_id_consumption';\n        END IF;\n    END IF;\n    NEW.created_at := clock_timestamp();\n    RETURN NEW;\nEND;\n$function$",
        )
    )
    drop(
        BILLING_ALERTS_FLAG_FUNCTION,
        BILLING_ALERTS_CHECK_FUNCTION,
    )

    op.drop_column("users", "billing_alerts_active")
