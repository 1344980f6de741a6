"""billing

Issue 16. Tables ``price_books`` (per tier, currency, effective span; an exclusion
constraint per tier refuses two overlapping books, written by hand) and
``price_items`` (sku, unit, credits per unit), seeded with today's ``PRICING``
defaults as the first book of each tier; ``job_price_items`` (the items a job was
priced with); ``billing_invoices``; ``billing_alerts``, ``billing_alert_events``
(the outbox) and ``billing_alert_deliveries``; ``reconciliation_runs`` and
``reconciliation_adjustments``; enums ``price_unit``, ``invoice_status``,
``billing_alert_kind``, ``alert_event_status``, ``reconciliation_kind`` (created
first, dropped last). The functions and triggers of ``sql/triggers/billing.sql``
(ML090-ML092; the triggers on the new tables written by hand after them). The
ledger's slimming: ``ix_credit_transactions_job_id_user_id`` and
``ix_credit_transactions_package_id`` become partial (``WHERE col IS NOT NULL``;
by hand: autogenerate does not compare predicates).

Revision ID: c16a00000001
Revises: c14a00000001
Create Date: 2026-12-07 07:33:25.808069+00:00
"""

import json
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from database.migrations import create, drop, function, trigger

revision: str = "c16a00000001"
down_revision: str | Sequence[str] | None = "c14a00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


ENUMS = {
    "price_unit": ("job", "node", "thousand_rows", "gb_month", "minute"),
    "invoice_status": ("draft", "open", "paid", "void", "uncollectible"),
    "billing_alert_kind": ("balance_below", "spend_above"),
    "alert_event_status": ("pending", "delivered", "failed"),
    "reconciliation_kind": ("verify", "repair"),
}
TIERS = ("free", "pro", "enterprise")
#: Today's PRICING defaults (api.settings.Pricing) and the prices issue 16 adds:
#: (sku, unit, credits per unit). The first book of every tier.
FIRST_BOOK = (
    ("job", "job", 1),
    ("dataset", "node", 0),
    ("preprocess", "node", 1),
    ("model", "node", 10),
    ("visualize", "node", 1),
    ("save", "node", 1),
    # The automl node (issue 15): a node's price plus each started minute of its budget.
    ("automl", "node", 10),
    ("automl_minute", "minute", 10),
    ("predicted_rows", "thousand_rows", 1),
    ("batch_rows", "thousand_rows", 1),
    ("storage_gb_month", "gb_month", 1),
)
FIRST_BOOK_FROM = "2025-01-01 00:00:00+00"
HAND_TRIGGERS = (
    (
        "price_items_immutable",
        "price_items",
        "BEFORE UPDATE OR DELETE ON public.price_items FOR EACH ROW"
        " EXECUTE FUNCTION public.price_items_immutable()",
    ),
    (
        "price_books_guard",
        "price_books",
        "BEFORE UPDATE OR DELETE ON public.price_books FOR EACH ROW"
        " EXECUTE FUNCTION public.price_books_guard()",
    ),
    (
        "job_price_items_fill",
        "job_price_items",
        "BEFORE INSERT OR UPDATE ON public.job_price_items FOR EACH ROW"
        " EXECUTE FUNCTION public.job_price_items_fill()",
    ),
    (
        "set_updated_at",
        "billing_invoices",
        "BEFORE UPDATE ON public.billing_invoices FOR EACH ROW"
        " WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION public.set_updated_at()",
    ),
)


PRICE_ITEMS_IMMUTABLE_FUNCTION = function(
    "price_items_immutable()",
    "returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_from timestamptz;\nBEGIN\n    SELECT b.effective_from INTO v_from FROM public.price_books AS b WHERE b.id = OLD.price_book_id;\n    IF v_from IS NOT NULL AND v_from <= now() THEN\n        RAISE EXCEPTION 'price item % (%) belongs to a price book in force since %\\: % refused',\n                OLD.id, OLD.sku, v_from, TG_OP\n            USING ERRCODE = 'ML090',\n                  HINT = 'change prices with a new price book (automl-db prices set)';\n    END IF;\n    IF TG_OP = 'DELETE' THEN\n        RETURN OLD;\n    END IF;\n    RETURN NEW;\nEND;\n$$",
)
PRICE_BOOKS_GUARD_FUNCTION = function(
    "price_books_guard()",
    "returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF OLD.effective_from > now() THEN\n        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;  -- not in force yet\n    END IF;\n    IF TG_OP = 'DELETE' THEN\n        RAISE EXCEPTION 'price book % has been in force since %\\: it cannot be deleted',\n                OLD.id, OLD.effective_from\n            USING ERRCODE = 'ML091';\n    END IF;\n    IF (NEW.tier, NEW.currency, NEW.effective_from, NEW.id)\n       IS DISTINCT FROM (OLD.tier, OLD.currency, OLD.effective_from, OLD.id) THEN\n        RAISE EXCEPTION 'price book % has been in force since %\\: its tier, currency and start are history',\n                OLD.id, OLD.effective_from\n            USING ERRCODE = 'ML091',\n                  HINT = 'close it (effective_to from now on) and start a new book';\n    END IF;\n    IF NEW.effective_to IS DISTINCT FROM OLD.effective_to THEN\n        IF (OLD.effective_to IS NOT NULL AND OLD.effective_to <= now())\n           OR (NEW.effective_to IS NOT NULL AND NEW.effective_to < now()) THEN\n            RAISE EXCEPTION 'price book %\\: its end can change only from now on (% to %)',\n                    OLD.id, OLD.effective_to, NEW.effective_to\n                USING ERRCODE = 'ML091';\n        END IF;\n    END IF;\n    RETURN NEW;\nEND;\n$$",
)
JOB_PRICE_ITEMS_FILL_FUNCTION = function(
    "job_price_items_fill()",
    "returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF TG_OP = 'UPDATE' THEN\n        RAISE EXCEPTION 'the price lines of job % are what it cost\\: UPDATE refused', OLD.job_id\n            USING ERRCODE = 'ML092';\n    END IF;\n    SELECT NEW.quantity * i.credits_per_unit INTO NEW.credits\n      FROM public.price_items AS i WHERE i.id = NEW.price_item_id;\n    IF NEW.credits IS NULL THEN\n        NEW.credits := 0;  -- no such item\\: its foreign key refuses the row\n    END IF;\n    RETURN NEW;\nEND;\n$$",
)
BILLING_ALERTS_FIRE_FUNCTION = function(
    "billing_alerts_fire()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    r record;\n    v_event uuid;\n    v_spend bigint;\n    v_now timestamptz := clock_timestamp();\n    v_month_start timestamptz := date_trunc('month', clock_timestamp(), 'UTC');\nBEGIN\n    -- Nearly every statement ends here\\: one index probe per user of the statement.\n    IF NOT EXISTS (SELECT 1 FROM public.billing_alerts AS a\n                    WHERE a.active AND a.user_id IN (SELECT n.user_id FROM new_entries AS n)) THEN\n        RETURN NULL;\n    END IF;\n\n    -- Read without a lock\\: most charges change no alert. A transition is an UPDATE\n    -- that tests the state again under the alert's row lock (armed, fired_month), so\n    -- of two transactions that saw the same state only one fires; and one user's\n    -- charges are serialized by the user's row lock anyway (credit_tx_before_insert).\n    FOR r IN\n        SELECT a.id, a.user_id, a.kind, a.threshold, a.armed, a.fired_month, u.credit_balance\n          FROM public.billing_alerts AS a\n          JOIN public.users AS u ON u.id = a.user_id\n         WHERE a.active\n           AND a.user_id IN (SELECT n.user_id FROM new_entries AS n)\n         ORDER BY a.id\n    LOOP\n        IF r.kind = 'balance_below' THEN\n            IF r.armed AND r.credit_balance < r.threshold THEN\n                UPDATE public.billing_alerts SET armed = false WHERE id = r.id AND armed;\n                IF FOUND THEN\n                    v_event := gen_random_uuid();\n                    INSERT INTO public.billing_alert_events (id, alert_id, user_id, kind, threshold, value, payload)\n                    VALUES (v_event, r.id, r.user_id, r.kind, r.threshold, r.credit_balance,\n                            jsonb_build_object('id', v_event, 'type', 'billing_alert.balance_below',\n                                               'alert_id', r.id, 'user_id', r.user_id,\n                                               'threshold', r.threshold, 'balance', r.credit_balance,\n                                               'created', floor(extract(epoch FROM v_now))::bigint));\n                END IF;\n            ELSIF NOT r.armed AND r.credit_balance >= r.threshold THEN\n                UPDATE public.billing_alerts SET armed = true WHERE id = r.id;\n            END IF;\n        ELSIF r.fired_month IS DISTINCT FROM v_month_start THEN  -- spend_above\n            SELECT coalesce(-sum(t.amount), 0) INTO v_spend\n              FROM public.credit_transactions AS t\n             WHERE t.user_id = r.user_id\n               AND t.created_at >= v_month_start\n               AND t.type IN ('consumption', 'refund');\n            IF v_spend > r.threshold THEN\n                UPDATE public.billing_alerts SET fired_month = v_month_start\n                 WHERE id = r.id AND fired_month IS DISTINCT FROM v_month_start;\n                IF FOUND THEN\n                    v_event := gen_random_uuid();\n                    INSERT INTO public.billing_alert_events (id, alert_id, user_id, kind, threshold, value, payload)\n                    VALUES (v_event, r.id, r.user_id, r.kind, r.threshold, v_spend,\n                            jsonb_build_object('id', v_event, 'type', 'billing_alert.spend_above',\n                                               'alert_id', r.id, 'user_id', r.user_id,\n                                               'threshold', r.threshold, 'spend', v_spend,\n                                               'month', to_char(v_month_start AT TIME ZONE 'UTC', 'YYYY-MM'),\n                                               'created', floor(extract(epoch FROM v_now))::bigint));\n                END IF;\n            END IF;\n        END IF;\n    END LOOP;\n    RETURN NULL;\nEND;\n$$",
)
BILLING_ALERTS_FIRE_TRIGGER = trigger(
    "billing_alerts_fire",
    "credit_transactions",
    "AFTER INSERT ON public.credit_transactions REFERENCING NEW TABLE AS new_entries\nFOR EACH STATEMENT EXECUTE FUNCTION public.billing_alerts_fire()",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    for name, labels in ENUMS.items():
        postgresql.ENUM(*labels, name=name).create(op.get_bind())
    # ### commands auto generated by Alembic - please adjust! ###
    create(
        PRICE_ITEMS_IMMUTABLE_FUNCTION,
        PRICE_BOOKS_GUARD_FUNCTION,
        JOB_PRICE_ITEMS_FILL_FUNCTION,
        BILLING_ALERTS_FIRE_FUNCTION,
        BILLING_ALERTS_FIRE_TRIGGER,
    )

    op.create_table(
        "price_books",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("tier", postgresql.ENUM(name="user_tier", create_type=False), nullable=False),
        sa.Column("currency", sa.Text(), server_default=sa.text("'usd'"), nullable=False),
        sa.Column("effective_from", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("effective_to", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Text(), server_default=sa.text("session_user"), nullable=False),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint("currency ~ '^[a-z]{3}$'", name=op.f("ck_price_books_currency_iso")),
        sa.CheckConstraint(
            "effective_to IS NULL OR effective_to > effective_from",
            name=op.f("ck_price_books_effective_span"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_books")),
    )
    op.create_index(
        "ix_price_books_tier_effective_from",
        "price_books",
        ["tier", "effective_from"],
        unique=False,
    )
    op.create_table(
        "reconciliation_runs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column(
            "kind", postgresql.ENUM(name="reconciliation_kind", create_type=False), nullable=False
        ),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("run_by", sa.Text(), server_default=sa.text("session_user"), nullable=False),
        sa.Column(
            "started_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("users_checked", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("drift_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("unproduced_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("repaired_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=True),
        sa.Column(
            "findings",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_runs")),
    )
    op.create_index(
        "ix_reconciliation_runs_started_at", "reconciliation_runs", ["started_at"], unique=False
    )
    op.create_table(
        "billing_alerts",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column(
            "kind",
            postgresql.ENUM(name="billing_alert_kind", create_type=False),
            nullable=False,
        ),
        sa.Column("threshold", sa.BigInteger(), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=False),
        sa.Column("secret", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("armed", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column("fired_month", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "webhook_url ~ '^https?://[^[:space:]]+$' AND length(webhook_url) <= 2048",
            name=op.f("ck_billing_alerts_webhook_url_http"),
        ),
        sa.CheckConstraint("length(secret) >= 32", name=op.f("ck_billing_alerts_secret_long")),
        sa.CheckConstraint("threshold >= 0", name=op.f("ck_billing_alerts_threshold_nonnegative")),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_billing_alerts_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_alerts")),
    )
    op.create_index(
        "ix_billing_alerts_user_id",
        "billing_alerts",
        ["user_id"],
        unique=False,
        postgresql_where=sa.text("active"),
    )
    op.create_index(
        "ix_billing_alerts_user_id_created_at",
        "billing_alerts",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "price_items",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("price_book_id", sa.UUID(), nullable=False),
        sa.Column("sku", sa.Text(), nullable=False),
        sa.Column(
            "unit",
            postgresql.ENUM(name="price_unit", create_type=False),
            nullable=False,
        ),
        sa.Column("credits_per_unit", sa.Integer(), nullable=False),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "sku ~ '^[a-z][a-z0-9_]{0,62}$'", name=op.f("ck_price_items_sku_format")
        ),
        sa.CheckConstraint(
            "credits_per_unit >= 0", name=op.f("ck_price_items_credits_nonnegative")
        ),
        sa.ForeignKeyConstraint(
            ["price_book_id"],
            ["price_books.id"],
            name=op.f("fk_price_items_price_book_id_price_books"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_price_items")),
        sa.UniqueConstraint("price_book_id", "sku", name=op.f("uq_price_items_price_book_id_sku")),
    )
    op.create_table(
        "reconciliation_adjustments",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("run_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("column_name", sa.Text(), nullable=False),
        sa.Column("old_value", sa.BigInteger(), nullable=False),
        sa.Column("new_value", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["reconciliation_runs.id"],
            name=op.f("fk_reconciliation_adjustments_run_id_reconciliation_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_reconciliation_adjustments_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reconciliation_adjustments")),
    )
    op.create_index(
        "ix_reconciliation_adjustments_run_id",
        "reconciliation_adjustments",
        ["run_id"],
        unique=False,
    )
    op.create_index(
        "ix_reconciliation_adjustments_user_id",
        "reconciliation_adjustments",
        ["user_id"],
        unique=False,
    )
    op.create_table(
        "billing_alert_events",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("alert_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column(
            "kind",
            postgresql.ENUM(name="billing_alert_kind", create_type=False),
            nullable=False,
        ),
        sa.Column("threshold", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "status",
            postgresql.ENUM(name="alert_event_status", create_type=False),
            server_default="pending",
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "next_attempt_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("delivered_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["alert_id"],
            ["billing_alerts.id"],
            name=op.f("fk_billing_alert_events_alert_id_billing_alerts"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_alert_events")),
    )
    op.create_index(
        "ix_billing_alert_events_alert_id_created_at",
        "billing_alert_events",
        ["alert_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_billing_alert_events_next_attempt_at",
        "billing_alert_events",
        ["next_attempt_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_table(
        "billing_alert_deliveries",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("event_id", sa.UUID(), nullable=False),
        sa.Column("alert_id", sa.UUID(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("succeeded", sa.Boolean(), nullable=False),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["alert_id"],
            ["billing_alerts.id"],
            name=op.f("fk_billing_alert_deliveries_alert_id_billing_alerts"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["billing_alert_events.id"],
            name=op.f("fk_billing_alert_deliveries_event_id_billing_alert_events"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_alert_deliveries")),
    )
    op.create_index(
        "ix_billing_alert_deliveries_alert_id_created_at",
        "billing_alert_deliveries",
        ["alert_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_billing_alert_deliveries_event_id",
        "billing_alert_deliveries",
        ["event_id"],
        unique=False,
    )
    op.create_table(
        "job_price_items",
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("price_item_id", sa.UUID(), nullable=False),
        sa.Column("quantity", sa.Integer(), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.CheckConstraint("credits >= 0", name=op.f("ck_job_price_items_credits_nonnegative")),
        sa.CheckConstraint("quantity > 0", name=op.f("ck_job_price_items_quantity_positive")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_job_price_items_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["price_item_id"],
            ["price_items.id"],
            name=op.f("fk_job_price_items_price_item_id_price_items"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("job_id", "price_item_id", name=op.f("pk_job_price_items")),
    )
    op.create_index(
        "ix_job_price_items_price_item_id", "job_price_items", ["price_item_id"], unique=False
    )
    op.create_table(
        "billing_invoices",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("stripe_id", sa.Text(), nullable=False),
        sa.Column("checkout_session_id", sa.Text(), nullable=True),
        sa.Column("number", sa.Text(), nullable=True),
        sa.Column("amount_cents", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column(
            "status",
            postgresql.ENUM(name="invoice_status", create_type=False),
            nullable=False,
        ),
        sa.Column("period_start", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("period_end", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("hosted_url", sa.Text(), nullable=True),
        sa.Column("credit_transaction_id", sa.UUID(), nullable=True),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "currency ~ '^[a-z]{3}$'", name=op.f("ck_billing_invoices_currency_iso")
        ),
        sa.CheckConstraint(
            "amount_cents >= 0", name=op.f("ck_billing_invoices_amount_nonnegative")
        ),
        sa.CheckConstraint(
            "period_end IS NULL OR period_start IS NULL OR period_end >= period_start",
            name=op.f("ck_billing_invoices_period_span"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_billing_invoices_user_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_billing_invoices")),
        sa.UniqueConstraint("stripe_id", name=op.f("uq_billing_invoices_stripe_id")),
    )
    op.create_index(
        "ix_billing_invoices_checkout_session_id",
        "billing_invoices",
        ["checkout_session_id"],
        unique=True,
        postgresql_where="checkout_session_id IS NOT NULL",
    )
    op.create_index(
        "ix_billing_invoices_credit_transaction_id",
        "billing_invoices",
        ["credit_transaction_id"],
        unique=False,
        postgresql_where="credit_transaction_id IS NOT NULL",
    )
    op.create_index(
        "ix_billing_invoices_user_id_created_at",
        "billing_invoices",
        ["user_id", "created_at"],
        unique=False,
    )
    # The ledger's weight (issue 16): the sparse columns' indexes hold only the rows
    # that have a value (the foreign keys' checks, col = value, still use them).
    op.drop_index("ix_credit_transactions_job_id_user_id", table_name="credit_transactions")
    op.create_index(
        "ix_credit_transactions_job_id_user_id",
        "credit_transactions",
        ["job_id", "user_id"],
        postgresql_where=sa.text("job_id IS NOT NULL"),
    )
    op.drop_index("ix_credit_transactions_package_id", table_name="credit_transactions")
    op.create_index(
        "ix_credit_transactions_package_id",
        "credit_transactions",
        ["package_id"],
        postgresql_where=sa.text("package_id IS NOT NULL"),
    )
    # No two books of one tier overlap. One constraint per tier: the embedded
    # PostgreSQL ships no btree_gist, which the tier's equality in one constraint needs.
    for tier in TIERS:
        op.execute(
            f"ALTER TABLE public.price_books ADD CONSTRAINT ex_price_books_{tier}_span"
            " EXCLUDE USING gist (tstzrange(effective_from, effective_to, '[)') WITH &&)"
            f" WHERE (tier = '{tier}')"
        )
    create(*(trigger(name, table, definition) for name, table, definition in HAND_TRIGGERS))
    # The first price book of each tier: today's defaults.
    for tier in TIERS:
        op.execute(
            sa.text(
                "WITH b AS (INSERT INTO public.price_books (tier, currency, effective_from, description)"
                " VALUES (CAST(:tier AS user_tier), 'usd', CAST(:start AS timestamptz),"
                " 'the PRICING defaults, moved from the environment (migration c16a00000001)')"
                " RETURNING id)"
                " INSERT INTO public.price_items (price_book_id, sku, unit, credits_per_unit)"
                " SELECT b.id, i.sku, CAST(i.unit AS price_unit), i.credits FROM b,"
                " jsonb_to_recordset(CAST(:items AS jsonb)) AS i(sku text, unit text, credits int)"
            ).bindparams(
                tier=tier,
                start=FIRST_BOOK_FROM,
                items=json.dumps([{"sku": s, "unit": u, "credits": c} for s, u, c in FIRST_BOOK]),
            )
        )
    # ### end Alembic commands ###


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    drop(*(trigger(name, table, definition) for name, table, definition in HAND_TRIGGERS))
    op.drop_index("ix_credit_transactions_package_id", table_name="credit_transactions")
    op.create_index("ix_credit_transactions_package_id", "credit_transactions", ["package_id"])
    op.drop_index("ix_credit_transactions_job_id_user_id", table_name="credit_transactions")
    op.create_index(
        "ix_credit_transactions_job_id_user_id", "credit_transactions", ["job_id", "user_id"]
    )
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_index("ix_billing_invoices_user_id_created_at", table_name="billing_invoices")
    op.drop_index(
        "ix_billing_invoices_credit_transaction_id",
        table_name="billing_invoices",
        postgresql_where="credit_transaction_id IS NOT NULL",
    )
    op.drop_index(
        "ix_billing_invoices_checkout_session_id",
        table_name="billing_invoices",
        postgresql_where="checkout_session_id IS NOT NULL",
    )
    op.drop_table("billing_invoices")
    op.drop_index("ix_job_price_items_price_item_id", table_name="job_price_items")
    op.drop_table("job_price_items")
    op.drop_index("ix_billing_alert_deliveries_event_id", table_name="billing_alert_deliveries")
    op.drop_index(
        "ix_billing_alert_deliveries_alert_id_created_at", table_name="billing_alert_deliveries"
    )
    op.drop_table("billing_alert_deliveries")
    op.drop_index(
        "ix_billing_alert_events_next_attempt_at",
        table_name="billing_alert_events",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index("ix_billing_alert_events_alert_id_created_at", table_name="billing_alert_events")
    op.drop_table("billing_alert_events")
    op.drop_index("ix_reconciliation_adjustments_user_id", table_name="reconciliation_adjustments")
    op.drop_index("ix_reconciliation_adjustments_run_id", table_name="reconciliation_adjustments")
    op.drop_table("reconciliation_adjustments")
    op.drop_table("price_items")
    op.drop_index("ix_billing_alerts_user_id_created_at", table_name="billing_alerts")
    op.drop_index(
        "ix_billing_alerts_user_id", table_name="billing_alerts", postgresql_where=sa.text("active")
    )
    op.drop_table("billing_alerts")
    op.drop_index("ix_reconciliation_runs_started_at", table_name="reconciliation_runs")
    op.drop_table("reconciliation_runs")
    op.drop_index("ix_price_books_tier_effective_from", table_name="price_books")
    op.drop_table("price_books")
    drop(
        BILLING_ALERTS_FIRE_TRIGGER,
        BILLING_ALERTS_FIRE_FUNCTION,
        JOB_PRICE_ITEMS_FILL_FUNCTION,
        PRICE_BOOKS_GUARD_FUNCTION,
        PRICE_ITEMS_IMMUTABLE_FUNCTION,
    )

    # ### end Alembic commands ###
    for name in ENUMS:
        postgresql.ENUM(name=name).drop(op.get_bind())
