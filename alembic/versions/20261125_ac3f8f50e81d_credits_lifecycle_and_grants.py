"""credits lifecycle and grants

Purchase rules (credit_purchase_rules: ML007-ML009), the logged repair path of the
derived users columns (users_repair_derived, derived_repairs, the guard's repair
branch), tombstones (users.purged_at, email nullable only once purged), the
idempotency key of adjustments, and EXECUTE revoked from PUBLIC on the SECURITY
DEFINER functions a client could call directly.

Revision ID: ac3f8f50e81d
Revises: dd52b6bdfc1e
Create Date: 2026-11-25 14:26:59.245180+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from database.migrations import create, drop, function, revoke_execute_from_public, trigger

revision: str = "ac3f8f50e81d"
down_revision: str | Sequence[str] | None = "dd52b6bdfc1e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


CREDIT_PURCHASE_RULES_FUNCTION = function(
    "credit_purchase_rules()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_active boolean;\n    v_credits integer;\n    v_restriction public.credit_tier_restriction;\n    v_name text;\n    v_tier public.user_tier;\nBEGIN\n    IF NEW.amount <= 0 THEN\n        RAISE EXCEPTION 'a purchase adds credits\\: amount % is not positive', NEW.amount\n            USING ERRCODE = 'check_violation',\n                  CONSTRAINT = 'ck_credit_transactions_amount_sign';\n    END IF;\n    IF NEW.package_id IS NULL THEN\n        RETURN NEW;\n    END IF;\n\n    SELECT p.is_active, p.credits, p.tier_restriction, p.name\n      INTO v_active, v_credits, v_restriction, v_name\n      FROM public.credit_packages AS p\n     WHERE p.id = NEW.package_id\n       FOR SHARE;\n    IF NOT FOUND THEN\n        RETURN NEW;  -- fk_credit_transactions_package_id_credit_packages refuses it\n    END IF;\n\n    IF NOT v_active THEN\n        RAISE EXCEPTION 'credit package \"%\" is not for sale', v_name\n            USING ERRCODE = 'ML007';\n    END IF;\n\n    IF v_restriction <> 'none' THEN\n        -- The lock credit_tx_before_insert takes next anyway\\: the tier cannot change\n        -- between this check and the commit.\n        SELECT u.tier INTO v_tier\n          FROM public.users AS u\n         WHERE u.id = NEW.user_id\n           FOR NO KEY UPDATE;\n        IF FOUND AND NOT (\n               (v_restriction = 'pro_only' AND v_tier IN ('pro', 'enterprise'))\n            OR (v_restriction = 'enterprise_only' AND v_tier = 'enterprise')) THEN\n            RAISE EXCEPTION 'credit package \"%\" is %, and the user is on the % tier',\n                v_name, v_restriction, v_tier\n                USING ERRCODE = 'ML008';\n        END IF;\n    END IF;\n\n    IF NEW.amount <> v_credits THEN\n        RAISE EXCEPTION 'a purchase of package \"%\" adds % credits, not %',\n            v_name, v_credits, NEW.amount\n            USING ERRCODE = 'ML009',\n                  DETAIL = format('credits=%s amount=%s', v_credits, NEW.amount);\n    END IF;\n    RETURN NEW;\nEND;\n$$",
)
USERS_REPAIR_DERIVED_FUNCTION = function(
    "users_repair_derived(p_user_id uuid)",
    "returns TABLE (column_name text, old_value bigint, new_value bigint)\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_old record;\n    v_datasets bigint;\n    v_workflows bigint;\n    v_models bigint;\n    v_storage bigint;\nBEGIN\n    -- The lock the counter triggers take\\: a concurrent insert either committed its\n    -- delta before this point (and its row is counted below, each statement taking\n    -- a new snapshot) or applies it after this transaction, on top of the repair.\n    SELECT u.dataset_count, u.workflow_count, u.model_count, u.storage_used_bytes\n      INTO v_old\n      FROM public.users AS u\n     WHERE u.id = p_user_id\n       FOR NO KEY UPDATE;\n    IF NOT FOUND THEN\n        RAISE EXCEPTION 'user % does not exist', p_user_id USING ERRCODE = 'no_data_found';\n    END IF;\n\n    SELECT count(*) INTO v_datasets FROM public.datasets AS d WHERE d.user_id = p_user_id;\n    SELECT count(*) INTO v_workflows\n      FROM public.workflows AS w WHERE w.user_id = p_user_id AND NOT w.is_deleted;\n    SELECT count(*) INTO v_models FROM public.models AS m WHERE m.user_id = p_user_id;\n    SELECT coalesce(sum(coalesce(v.original_size_bytes, 0) + coalesce(v.parquet_size_bytes, 0)), 0)\n      INTO v_storage\n      FROM public.dataset_versions AS v WHERE v.user_id = p_user_id;\n\n    IF (v_old.dataset_count, v_old.workflow_count, v_old.model_count, v_old.storage_used_bytes)\n       = (v_datasets, v_workflows, v_models, v_storage) THEN\n        RETURN;\n    END IF;\n\n    PERFORM set_config('automl.repair', 'on', true);\n    UPDATE public.users AS u\n       SET dataset_count = v_datasets,\n           workflow_count = v_workflows,\n           model_count = v_models,\n           storage_used_bytes = v_storage\n     WHERE u.id = p_user_id;\n    PERFORM set_config('automl.repair', 'off', true);\n\n    RETURN QUERY\n    SELECT c.col, c.was, c.fixed\n      FROM (VALUES ('dataset_count', v_old.dataset_count::bigint, v_datasets),\n                   ('workflow_count', v_old.workflow_count::bigint, v_workflows),\n                   ('model_count', v_old.model_count::bigint, v_models),\n                   ('storage_used_bytes', v_old.storage_used_bytes, v_storage))\n           AS c(col, was, fixed)\n     WHERE c.was <> c.fixed;\nEND;\n$$",
)
CREDIT_PURCHASE_RULES_TRIGGER = trigger(
    "credit_purchase_rules",
    "credit_transactions",
    "BEFORE INSERT ON public.credit_transactions FOR EACH ROW\nWHEN (NEW.type = 'purchase')\nEXECUTE FUNCTION public.credit_purchase_rules()",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # ### commands auto generated by Alembic - please adjust! ###
    create(
        CREDIT_PURCHASE_RULES_FUNCTION,
        USERS_REPAIR_DERIVED_FUNCTION,
    )

    op.replace_entity(
        function(
            "users_guard_derived()",
            "returns trigger\nLANGUAGE plpgsql\nAS $$\nDECLARE\n    v_columns text[] := ARRAY[]::text[];\nBEGIN\n    IF TG_OP = 'UPDATE'\n       AND current_setting('automl.repair', true) = 'on'\n       AND NEW.credit_balance = OLD.credit_balance THEN\n        INSERT INTO public.derived_repairs (user_id, column_name, old_value, new_value)\n        SELECT NEW.id, c.name, c.old_value, c.new_value\n          FROM (VALUES ('dataset_count', OLD.dataset_count::bigint, NEW.dataset_count::bigint),\n                       ('workflow_count', OLD.workflow_count::bigint, NEW.workflow_count::bigint),\n                       ('model_count', OLD.model_count::bigint, NEW.model_count::bigint),\n                       ('storage_used_bytes', OLD.storage_used_bytes, NEW.storage_used_bytes))\n               AS c(name, old_value, new_value)\n         WHERE c.old_value IS DISTINCT FROM c.new_value;\n        RETURN NEW;\n    END IF;\n    IF TG_OP = 'INSERT' THEN\n        IF NEW.credit_balance <> 0 THEN v_columns := array_append(v_columns, 'credit_balance'); END IF;\n        IF NEW.dataset_count <> 0 THEN v_columns := array_append(v_columns, 'dataset_count'); END IF;\n        IF NEW.workflow_count <> 0 THEN v_columns := array_append(v_columns, 'workflow_count'); END IF;\n        IF NEW.model_count <> 0 THEN v_columns := array_append(v_columns, 'model_count'); END IF;\n        IF NEW.storage_used_bytes <> 0 THEN v_columns := array_append(v_columns, 'storage_used_bytes'); END IF;\n    ELSE\n        IF NEW.credit_balance IS DISTINCT FROM OLD.credit_balance THEN\n            v_columns := array_append(v_columns, 'credit_balance'); END IF;\n        IF NEW.dataset_count IS DISTINCT FROM OLD.dataset_count THEN\n            v_columns := array_append(v_columns, 'dataset_count'); END IF;\n        IF NEW.workflow_count IS DISTINCT FROM OLD.workflow_count THEN\n            v_columns := array_append(v_columns, 'workflow_count'); END IF;\n        IF NEW.model_count IS DISTINCT FROM OLD.model_count THEN\n            v_columns := array_append(v_columns, 'model_count'); END IF;\n        IF NEW.storage_used_bytes IS DISTINCT FROM OLD.storage_used_bytes THEN\n            v_columns := array_append(v_columns, 'storage_used_bytes'); END IF;\n    END IF;\n    RAISE EXCEPTION 'users.% is maintained by the database and cannot be written directly',\n        array_to_string(v_columns, ', users.')\n        USING ERRCODE = 'ML003',\n              HINT = 'credits move through credit_transactions; counters and storage follow their tables';\nEND;\n$$",
        )
    )

    op.create_entity(CREDIT_PURCHASE_RULES_TRIGGER)

    op.create_table(
        "derived_repairs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("column_name", sa.Text(), nullable=False),
        sa.Column("old_value", sa.BigInteger(), nullable=False),
        sa.Column("new_value", sa.BigInteger(), nullable=False),
        sa.Column("repaired_by", sa.Text(), server_default=sa.text("session_user"), nullable=False),
        sa.Column(
            "repaired_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_derived_repairs_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_derived_repairs")),
    )
    op.create_index(
        "ix_derived_repairs_user_id_repaired_at",
        "derived_repairs",
        ["user_id", "repaired_at"],
        unique=False,
    )
    op.add_column("credit_transactions", sa.Column("idempotency_key", sa.Text(), nullable=True))
    op.create_index(
        "uq_credit_transactions_idempotency_key",
        "credit_transactions",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.add_column("users", sa.Column("purged_at", sa.TIMESTAMP(timezone=True), nullable=True))
    op.alter_column("users", "email", existing_type=sa.TEXT(), nullable=True)
    # ### end Alembic commands ###
    op.create_check_constraint(
        op.f("ck_users_purged_is_deleted"), "users", "purged_at IS NULL OR is_deleted"
    )
    op.create_check_constraint(
        op.f("ck_users_email_unless_purged"), "users", "email IS NOT NULL OR purged_at IS NOT NULL"
    )
    # Callable directly, so only the owner may: the repair, and the deltas the
    # counter triggers apply (automl-db grant revokes EXECUTE on every function).
    revoke_execute_from_public(
        "public.users_repair_derived(uuid)", "public.users_apply_deltas(text, uuid[], bigint[])"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute(
        "GRANT EXECUTE ON FUNCTION public.users_apply_deltas(text, uuid[], bigint[]) TO PUBLIC"
    )
    op.drop_constraint(op.f("ck_users_email_unless_purged"), "users", type_="check")
    op.drop_constraint(op.f("ck_users_purged_is_deleted"), "users", type_="check")
    # ### commands auto generated by Alembic - please adjust! ###
    # Fails once a user was purged: a tombstone's email is gone for good.
    op.alter_column("users", "email", existing_type=sa.TEXT(), nullable=False)
    op.drop_column("users", "purged_at")
    op.drop_index(
        "uq_credit_transactions_idempotency_key",
        table_name="credit_transactions",
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.drop_column("credit_transactions", "idempotency_key")
    op.drop_index("ix_derived_repairs_user_id_repaired_at", table_name="derived_repairs")
    op.drop_table("derived_repairs")
    op.drop_entity(CREDIT_PURCHASE_RULES_TRIGGER)

    op.replace_entity(
        function(
            "users_guard_derived()",
            "returns trigger\n LANGUAGE plpgsql\nAS $function$\nDECLARE\n    v_columns text[] := ARRAY[]::text[];\nBEGIN\n    IF TG_OP = 'INSERT' THEN\n        IF NEW.credit_balance <> 0 THEN v_columns := array_append(v_columns, 'credit_balance'); END IF;\n        IF NEW.dataset_count <> 0 THEN v_columns := array_append(v_columns, 'dataset_count'); END IF;\n        IF NEW.workflow_count <> 0 THEN v_columns := array_append(v_columns, 'workflow_count'); END IF;\n        IF NEW.model_count <> 0 THEN v_columns := array_append(v_columns, 'model_count'); END IF;\n        IF NEW.storage_used_bytes <> 0 THEN v_columns := array_append(v_columns, 'storage_used_bytes'); END IF;\n    ELSE\n        IF NEW.credit_balance IS DISTINCT FROM OLD.credit_balance THEN\n            v_columns := array_append(v_columns, 'credit_balance'); END IF;\n        IF NEW.dataset_count IS DISTINCT FROM OLD.dataset_count THEN\n            v_columns := array_append(v_columns, 'dataset_count'); END IF;\n        IF NEW.workflow_count IS DISTINCT FROM OLD.workflow_count THEN\n            v_columns := array_append(v_columns, 'workflow_count'); END IF;\n        IF NEW.model_count IS DISTINCT FROM OLD.model_count THEN\n            v_columns := array_append(v_columns, 'model_count'); END IF;\n        IF NEW.storage_used_bytes IS DISTINCT FROM OLD.storage_used_bytes THEN\n            v_columns := array_append(v_columns, 'storage_used_bytes'); END IF;\n    END IF;\n    RAISE EXCEPTION 'users.% is maintained by the database and cannot be written directly',\n        array_to_string(v_columns, ', users.')\n        USING ERRCODE = 'ML003',\n              HINT = 'credits move through credit_transactions; counters and storage follow their tables';\nEND;\n$function$",
        )
    )
    drop(
        USERS_REPAIR_DERIVED_FUNCTION,
        CREDIT_PURCHASE_RULES_FUNCTION,
    )

    # ### end Alembic commands ###
