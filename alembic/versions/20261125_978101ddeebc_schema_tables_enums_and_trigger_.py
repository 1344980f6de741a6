"""schema: tables, enums and trigger functions

Revision ID: 978101ddeebc
Revises:
Create Date: 2026-11-25 14:10:31.440592+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from database.migrations import create, drop, function

revision: str = "978101ddeebc"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


USERS_APPLY_DELTAS_FUNCTION = function(
    "users_apply_deltas(p_column text, p_user_ids uuid[], p_deltas bigint[])",
    "returns void\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF p_column NOT IN ('dataset_count', 'workflow_count', 'model_count', 'storage_used_bytes') THEN\n        RAISE EXCEPTION 'users_apply_deltas\\: unknown column %', p_column\n            USING ERRCODE = 'invalid_parameter_value';\n    END IF;\n    WITH delta AS (\n        SELECT d.user_id, d.n\n          FROM unnest(p_user_ids, p_deltas) AS d(user_id, n)\n         WHERE d.n <> 0\n    ), locked AS (\n        SELECT u.id\n          FROM public.users AS u JOIN delta ON delta.user_id = u.id\n         ORDER BY u.id\n           FOR NO KEY UPDATE OF u\n    )\n    UPDATE public.users AS u\n       SET dataset_count = u.dataset_count\n               + CASE WHEN p_column = 'dataset_count' THEN delta.n::integer ELSE 0 END,\n           workflow_count = u.workflow_count\n               + CASE WHEN p_column = 'workflow_count' THEN delta.n::integer ELSE 0 END,\n           model_count = u.model_count\n               + CASE WHEN p_column = 'model_count' THEN delta.n::integer ELSE 0 END,\n           storage_used_bytes = u.storage_used_bytes\n               + CASE WHEN p_column = 'storage_used_bytes' THEN delta.n ELSE 0 END\n      FROM delta JOIN locked ON locked.id = delta.user_id\n     WHERE u.id = delta.user_id;\nEND;\n$$",
)
USERS_COUNT_DATASETS_FUNCTION = function(
    "users_count_datasets()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_ids uuid[];\n    v_deltas bigint[];\nBEGIN\n    IF TG_OP = 'INSERT' THEN\n        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas\n          FROM (SELECT r.user_id, count(*) AS n FROM new_rows AS r GROUP BY r.user_id) AS s;\n    ELSIF TG_OP = 'DELETE' THEN\n        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas\n          FROM (SELECT r.user_id, -count(*) AS n FROM old_rows AS r GROUP BY r.user_id) AS s;\n    ELSE\n        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas\n          FROM (SELECT c.user_id, sum(c.n) AS n\n                  FROM (SELECT r.user_id, 1 AS n FROM new_rows AS r\n                        UNION ALL\n                        SELECT r.user_id, -1 AS n FROM old_rows AS r) AS c\n                 GROUP BY c.user_id) AS s;\n    END IF;\n    PERFORM public.users_apply_deltas('dataset_count', v_ids, v_deltas);\n    RETURN NULL;\nEND;\n$$",
)
USERS_COUNT_WORKFLOWS_FUNCTION = function(
    "users_count_workflows()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_ids uuid[];\n    v_deltas bigint[];\nBEGIN\n    IF TG_OP = 'INSERT' THEN\n        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas\n          FROM (SELECT r.user_id, count(*) AS n FROM new_rows AS r\n                 WHERE NOT r.is_deleted GROUP BY r.user_id) AS s;\n    ELSIF TG_OP = 'DELETE' THEN\n        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas\n          FROM (SELECT r.user_id, -count(*) AS n FROM old_rows AS r\n                 WHERE NOT r.is_deleted GROUP BY r.user_id) AS s;\n    ELSE\n        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas\n          FROM (SELECT c.user_id, sum(c.n) AS n\n                  FROM (SELECT r.user_id, 1 AS n FROM new_rows AS r WHERE NOT r.is_deleted\n                        UNION ALL\n                        SELECT r.user_id, -1 AS n FROM old_rows AS r WHERE NOT r.is_deleted) AS c\n                 GROUP BY c.user_id) AS s;\n    END IF;\n    PERFORM public.users_apply_deltas('workflow_count', v_ids, v_deltas);\n    RETURN NULL;\nEND;\n$$",
)
USERS_COUNT_MODELS_FUNCTION = function(
    "users_count_models()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_ids uuid[];\n    v_deltas bigint[];\nBEGIN\n    IF TG_OP = 'INSERT' THEN\n        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas\n          FROM (SELECT r.user_id, count(*) AS n FROM new_rows AS r GROUP BY r.user_id) AS s;\n    ELSIF TG_OP = 'DELETE' THEN\n        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas\n          FROM (SELECT r.user_id, -count(*) AS n FROM old_rows AS r GROUP BY r.user_id) AS s;\n    ELSE\n        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas\n          FROM (SELECT c.user_id, sum(c.n) AS n\n                  FROM (SELECT r.user_id, 1 AS n FROM new_rows AS r\n                        UNION ALL\n                        SELECT r.user_id, -1 AS n FROM old_rows AS r) AS c\n                 GROUP BY c.user_id) AS s;\n    END IF;\n    PERFORM public.users_apply_deltas('model_count', v_ids, v_deltas);\n    RETURN NULL;\nEND;\n$$",
)
CREDIT_TX_BEFORE_INSERT_FUNCTION = function(
    "credit_tx_before_insert()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_charged integer;\n    v_balance integer;\n    v_deleted boolean;\nBEGIN\n    IF NEW.type = 'refund' THEN\n        SELECT -t.amount INTO v_charged\n          FROM public.credit_transactions AS t\n         WHERE t.job_id = NEW.job_id AND t.type = 'consumption';\n        IF v_charged IS NULL THEN\n            RAISE EXCEPTION 'job % was never charged, so it cannot be refunded', NEW.job_id\n                USING ERRCODE = 'ML004';\n        ELSIF NEW.amount > v_charged THEN\n            RAISE EXCEPTION 'refund of % credits exceeds the % charged for job %',\n                NEW.amount, v_charged, NEW.job_id\n                USING ERRCODE = 'ML004';\n        END IF;\n    END IF;\n\n    -- One statement takes the row lock, applies the rule and computes the balance.\n    UPDATE public.users AS u\n       SET credit_balance = u.credit_balance + NEW.amount\n     WHERE u.id = NEW.user_id\n       AND u.credit_balance + NEW.amount >= 0\n       AND NOT (u.is_deleted AND NEW.type = 'purchase')\n    RETURNING u.credit_balance INTO NEW.balance_after;\n\n    IF NOT FOUND THEN\n        SELECT u.credit_balance, u.is_deleted INTO v_balance, v_deleted\n          FROM public.users AS u WHERE u.id = NEW.user_id;\n        IF NOT FOUND THEN\n            RAISE EXCEPTION 'user % does not exist', NEW.user_id\n                USING ERRCODE = 'foreign_key_violation',\n                      CONSTRAINT = 'fk_credit_transactions_user_id_users';\n        ELSIF v_deleted AND NEW.type = 'purchase' THEN\n            RAISE EXCEPTION 'user % is deleted and cannot buy credits', NEW.user_id\n                USING ERRCODE = 'ML005';\n        ELSE\n            RAISE EXCEPTION 'insufficient credits\\: balance %, % of %',\n                v_balance, NEW.type, NEW.amount\n                USING ERRCODE = 'ML001',\n                      DETAIL = format('balance=%s amount=%s', v_balance, NEW.amount);\n        END IF;\n    END IF;\n    RETURN NEW;\nEND;\n$$",
)
CREDIT_TX_IMMUTABLE_FUNCTION = function(
    "credit_tx_immutable()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'credit_transactions is an append-only ledger\\: % is not allowed', TG_OP\n        USING ERRCODE = 'ML002',\n              HINT = 'correct a mistake with a new entry (a refund or an adjustment)';\nEND;\n$$",
)
DATASET_VERSIONS_NUMBER_FUNCTION = function(
    "dataset_versions_number()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    PERFORM 1 FROM public.datasets AS d WHERE d.id = NEW.dataset_id FOR NO KEY UPDATE;\n    SELECT coalesce(max(v.version_number), 0) + 1 INTO NEW.version_number\n      FROM public.dataset_versions AS v\n     WHERE v.dataset_id = NEW.dataset_id;\n    RETURN NEW;\nEND;\n$$",
)
USERS_ADJUST_STORAGE_FUNCTION = function(
    "users_adjust_storage()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_ids uuid[];\n    v_deltas bigint[];\nBEGIN\n    IF TG_OP = 'INSERT' THEN\n        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas\n          FROM (SELECT r.user_id,\n                       sum(coalesce(r.original_size_bytes, 0) + coalesce(r.parquet_size_bytes, 0)) AS n\n                  FROM new_rows AS r GROUP BY r.user_id) AS s;\n    ELSIF TG_OP = 'DELETE' THEN\n        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas\n          FROM (SELECT r.user_id,\n                       -sum(coalesce(r.original_size_bytes, 0) + coalesce(r.parquet_size_bytes, 0)) AS n\n                  FROM old_rows AS r GROUP BY r.user_id) AS s;\n    ELSE\n        SELECT array_agg(s.user_id), array_agg(s.n) INTO v_ids, v_deltas\n          FROM (SELECT c.user_id, sum(c.n) AS n\n                  FROM (SELECT r.user_id,\n                               coalesce(r.original_size_bytes, 0) + coalesce(r.parquet_size_bytes, 0) AS n\n                          FROM new_rows AS r\n                        UNION ALL\n                        SELECT r.user_id,\n                               -(coalesce(r.original_size_bytes, 0) + coalesce(r.parquet_size_bytes, 0))\n                          FROM old_rows AS r) AS c\n                 GROUP BY c.user_id) AS s;\n    END IF;\n    PERFORM public.users_apply_deltas('storage_used_bytes', v_ids, v_deltas);\n    RETURN NULL;\nEND;\n$$",
)
SET_UPDATED_AT_FUNCTION = function(
    "set_updated_at()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    NEW.updated_at := now();\n    RETURN NEW;\nEND;\n$$",
)
USERS_GUARD_DERIVED_FUNCTION = function(
    "users_guard_derived()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nDECLARE\n    v_columns text[] := ARRAY[]::text[];\nBEGIN\n    IF TG_OP = 'INSERT' THEN\n        IF NEW.credit_balance <> 0 THEN v_columns := array_append(v_columns, 'credit_balance'); END IF;\n        IF NEW.dataset_count <> 0 THEN v_columns := array_append(v_columns, 'dataset_count'); END IF;\n        IF NEW.workflow_count <> 0 THEN v_columns := array_append(v_columns, 'workflow_count'); END IF;\n        IF NEW.model_count <> 0 THEN v_columns := array_append(v_columns, 'model_count'); END IF;\n        IF NEW.storage_used_bytes <> 0 THEN v_columns := array_append(v_columns, 'storage_used_bytes'); END IF;\n    ELSE\n        IF NEW.credit_balance IS DISTINCT FROM OLD.credit_balance THEN\n            v_columns := array_append(v_columns, 'credit_balance'); END IF;\n        IF NEW.dataset_count IS DISTINCT FROM OLD.dataset_count THEN\n            v_columns := array_append(v_columns, 'dataset_count'); END IF;\n        IF NEW.workflow_count IS DISTINCT FROM OLD.workflow_count THEN\n            v_columns := array_append(v_columns, 'workflow_count'); END IF;\n        IF NEW.model_count IS DISTINCT FROM OLD.model_count THEN\n            v_columns := array_append(v_columns, 'model_count'); END IF;\n        IF NEW.storage_used_bytes IS DISTINCT FROM OLD.storage_used_bytes THEN\n            v_columns := array_append(v_columns, 'storage_used_bytes'); END IF;\n    END IF;\n    RAISE EXCEPTION 'users.% is maintained by the database and cannot be written directly',\n        array_to_string(v_columns, ', users.')\n        USING ERRCODE = 'ML003',\n              HINT = 'credits move through credit_transactions; counters and storage follow their tables';\nEND;\n$$",
)
WORKFLOW_SNAPSHOTS_IMMUTABLE_FUNCTION = function(
    "workflow_snapshots_immutable()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    IF NEW.workflow_id IS NULL\n       AND (NEW.id, NEW.user_id, NEW.snapshot_data, NEW.created_at)\n           IS NOT DISTINCT FROM (OLD.id, OLD.user_id, OLD.snapshot_data, OLD.created_at) THEN\n        RETURN NEW;\n    END IF;\n    RAISE EXCEPTION 'workflow snapshot % is immutable', OLD.id\n        USING ERRCODE = 'ML006',\n              HINT = 'create a new snapshot from the workflow instead';\nEND;\n$$",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # ### commands auto generated by Alembic - please adjust! ###
    create(
        USERS_APPLY_DELTAS_FUNCTION,
        USERS_COUNT_DATASETS_FUNCTION,
        USERS_COUNT_WORKFLOWS_FUNCTION,
        USERS_COUNT_MODELS_FUNCTION,
        CREDIT_TX_BEFORE_INSERT_FUNCTION,
        CREDIT_TX_IMMUTABLE_FUNCTION,
        DATASET_VERSIONS_NUMBER_FUNCTION,
        USERS_ADJUST_STORAGE_FUNCTION,
        SET_UPDATED_AT_FUNCTION,
        USERS_GUARD_DERIVED_FUNCTION,
        WORKFLOW_SNAPSHOTS_IMMUTABLE_FUNCTION,
    )

    op.create_table(
        "credit_packages",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("credits", sa.Integer(), nullable=False),
        sa.Column("price_cents", sa.Integer(), nullable=False),
        sa.Column("stripe_price_id", sa.Text(), nullable=True),
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
        sa.Column(
            "tier_restriction",
            sa.Enum("none", "pro_only", "enterprise_only", name="credit_tier_restriction"),
            server_default="none",
            nullable=False,
        ),
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
        sa.CheckConstraint("credits > 0", name=op.f("ck_credit_packages_credits_positive")),
        sa.CheckConstraint("price_cents >= 0", name=op.f("ck_credit_packages_price_nonnegative")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_packages")),
        sa.UniqueConstraint("name", name=op.f("uq_credit_packages_name")),
        sa.UniqueConstraint("stripe_price_id", name=op.f("uq_credit_packages_stripe_price_id")),
    )
    op.create_table(
        "tutorials",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("title", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "difficulty",
            sa.Enum("beginner", "intermediate", "advanced", name="tutorial_difficulty"),
            server_default="beginner",
            nullable=False,
        ),
        sa.Column(
            "steps",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("estimated_minutes", sa.Integer(), nullable=True),
        sa.Column("sort_order", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("is_published", sa.Boolean(), server_default=sa.text("true"), nullable=False),
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
            "jsonb_typeof(steps) = 'array'", name=op.f("ck_tutorials_steps_is_array")
        ),
        sa.CheckConstraint(
            "estimated_minutes IS NULL OR estimated_minutes > 0",
            name=op.f("ck_tutorials_estimated_minutes_positive"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tutorials")),
        sa.UniqueConstraint("slug", name=op.f("uq_tutorials_slug")),
    )
    op.create_index("ix_tutorials_sort_order", "tutorials", ["sort_order"], unique=False)
    op.create_table(
        "users",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("full_name", sa.Text(), nullable=True),
        sa.Column(
            "oauth_provider", sa.Enum("google", "github", name="oauth_provider"), nullable=True
        ),
        sa.Column("oauth_id", sa.Text(), nullable=True),
        sa.Column(
            "tier",
            sa.Enum("free", "pro", "enterprise", name="user_tier"),
            server_default="free",
            nullable=False,
        ),
        sa.Column("email_verified", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("is_deleted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("deleted_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("credit_balance", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("dataset_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("workflow_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("model_count", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "storage_used_bytes", sa.BigInteger(), server_default=sa.text("0"), nullable=False
        ),
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
            "email = lower(btrim(email)) AND email LIKE '%%_@_%%'",
            name=op.f("ck_users_email_format"),
        ),
        sa.CheckConstraint(
            "(oauth_provider IS NULL) = (oauth_id IS NULL)", name=op.f("ck_users_oauth_pair")
        ),
        sa.CheckConstraint("credit_balance >= 0", name=op.f("ck_users_credit_balance_nonnegative")),
        sa.CheckConstraint(
            "dataset_count >= 0 AND workflow_count >= 0 AND model_count >= 0 AND storage_used_bytes >= 0",
            name=op.f("ck_users_counters_nonnegative"),
        ),
        sa.CheckConstraint(
            "is_deleted = (deleted_at IS NOT NULL)", name=op.f("ck_users_soft_delete_consistent")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("email", name=op.f("uq_users_email")),
        sa.UniqueConstraint(
            "oauth_provider", "oauth_id", name=op.f("uq_users_oauth_provider_oauth_id")
        ),
    )
    op.create_index(
        "ix_users_deleted_at",
        "users",
        ["deleted_at"],
        unique=False,
        postgresql_where=sa.text("is_deleted"),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "problem_type",
            sa.Enum("classification", "regression", "clustering", "other", name="problem_type"),
            nullable=True,
        ),
        sa.Column("target_column", sa.Text(), nullable=True),
        sa.Column("current_version_id", sa.UUID(), nullable=True),
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
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_datasets_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_datasets")),
        sa.UniqueConstraint("id", "user_id", name=op.f("uq_datasets_id_user_id")),
    )
    op.create_index(
        "ix_datasets_user_id_created_at", "datasets", ["user_id", "created_at"], unique=False
    )
    op.create_table(
        "user_tutorial_progress",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("tutorial_id", sa.UUID(), nullable=False),
        sa.Column("current_step", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "completed_steps",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column("is_completed", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column(
            "started_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("completed_at", sa.TIMESTAMP(timezone=True), nullable=True),
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
            "jsonb_typeof(completed_steps) = 'array'",
            name=op.f("ck_user_tutorial_progress_completed_steps_is_array"),
        ),
        sa.CheckConstraint(
            "current_step >= 0", name=op.f("ck_user_tutorial_progress_current_step_nonnegative")
        ),
        sa.CheckConstraint(
            "is_completed = (completed_at IS NOT NULL)",
            name=op.f("ck_user_tutorial_progress_completion_consistent"),
        ),
        sa.ForeignKeyConstraint(
            ["tutorial_id"],
            ["tutorials.id"],
            name=op.f("fk_user_tutorial_progress_tutorial_id_tutorials"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_tutorial_progress_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_tutorial_progress")),
        sa.UniqueConstraint(
            "user_id", "tutorial_id", name=op.f("uq_user_tutorial_progress_user_id_tutorial_id")
        ),
    )
    op.create_index(
        "ix_user_tutorial_progress_tutorial_id",
        "user_tutorial_progress",
        ["tutorial_id"],
        unique=False,
    )
    op.create_table(
        "workflows",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "definition",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text('\'{"nodes": [], "edges": []}\'::jsonb'),
            nullable=False,
        ),
        sa.Column("is_deleted", sa.Boolean(), server_default=sa.text("false"), nullable=False),
        sa.Column("deleted_at", sa.TIMESTAMP(timezone=True), nullable=True),
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
            "jsonb_typeof(definition) = 'object'", name=op.f("ck_workflows_definition_is_object")
        ),
        sa.CheckConstraint(
            "is_deleted = (deleted_at IS NOT NULL)",
            name=op.f("ck_workflows_soft_delete_consistent"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_workflows_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflows")),
    )
    op.create_index(
        "ix_workflows_deleted_at",
        "workflows",
        ["deleted_at"],
        unique=False,
        postgresql_where=sa.text("is_deleted"),
    )
    op.create_index(
        "ix_workflows_user_id_created_at", "workflows", ["user_id", "created_at"], unique=False
    )
    op.create_table(
        "dataset_versions",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("dataset_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("upload_id", sa.UUID(), nullable=True),
        sa.Column("version_number", sa.Integer(), server_default=sa.FetchedValue(), nullable=False),
        sa.Column("version_label", sa.Text(), nullable=True),
        sa.Column("original_filename", sa.Text(), nullable=True),
        sa.Column(
            "original_format",
            sa.Enum("csv", "json", "parquet", "excel", "unknown", name="file_format"),
            server_default="unknown",
            nullable=False,
        ),
        sa.Column("original_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("s3_path", sa.Text(), nullable=True),
        sa.Column("parquet_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("row_count", sa.BigInteger(), nullable=True),
        sa.Column("column_count", sa.Integer(), nullable=True),
        sa.Column("columns_metadata", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "status",
            sa.Enum("pending", "processing", "completed", "failed", name="ingestion_status"),
            server_default="pending",
            nullable=False,
        ),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("processed_at", sa.TIMESTAMP(timezone=True), nullable=True),
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
            "(original_size_bytes IS NULL OR original_size_bytes >= 0) AND (parquet_size_bytes IS NULL OR parquet_size_bytes >= 0)",
            name=op.f("ck_dataset_versions_sizes_nonnegative"),
        ),
        sa.CheckConstraint(
            "(row_count IS NULL OR row_count >= 0) AND (column_count IS NULL OR column_count >= 0)",
            name=op.f("ck_dataset_versions_shape_nonnegative"),
        ),
        sa.CheckConstraint(
            "version_number > 0", name=op.f("ck_dataset_versions_version_number_positive")
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id", "user_id"],
            ["datasets.id", "datasets.user_id"],
            name=op.f("fk_dataset_versions_dataset_id_user_id_datasets"),
            onupdate="CASCADE",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_versions")),
        sa.UniqueConstraint("dataset_id", "id", name=op.f("uq_dataset_versions_dataset_id_id")),
        sa.UniqueConstraint(
            "dataset_id",
            "version_number",
            name=op.f("uq_dataset_versions_dataset_id_version_number"),
        ),
        sa.UniqueConstraint("id", "user_id", name=op.f("uq_dataset_versions_id_user_id")),
    )
    op.create_index(
        "ix_dataset_versions_user_id_dataset_id",
        "dataset_versions",
        ["user_id", "dataset_id"],
        unique=False,
    )
    op.create_table(
        "experiments",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column(
            "problem_type",
            sa.Enum("classification", "regression", "clustering", "other", name="problem_type"),
            nullable=True,
        ),
        sa.Column("dataset_id", sa.UUID(), nullable=True),
        sa.Column("primary_metric", sa.Text(), nullable=True),
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
        sa.ForeignKeyConstraint(
            ["dataset_id"],
            ["datasets.id"],
            name=op.f("fk_experiments_dataset_id_datasets"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_experiments_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiments")),
        sa.UniqueConstraint("id", "user_id", name=op.f("uq_experiments_id_user_id")),
    )
    op.create_index("ix_experiments_dataset_id", "experiments", ["dataset_id"], unique=False)
    op.create_index(
        "ix_experiments_user_id_created_at", "experiments", ["user_id", "created_at"], unique=False
    )
    op.create_table(
        "workflow_snapshots",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("workflow_id", sa.UUID(), nullable=True),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("snapshot_data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_workflow_snapshots_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workflow_id"],
            ["workflows.id"],
            name=op.f("fk_workflow_snapshots_workflow_id_workflows"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_snapshots")),
        sa.UniqueConstraint("id", "user_id", name=op.f("uq_workflow_snapshots_id_user_id")),
    )
    op.create_index(
        "ix_workflow_snapshots_user_id_created_at",
        "workflow_snapshots",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_workflow_snapshots_workflow_id", "workflow_snapshots", ["workflow_id"], unique=False
    )
    op.create_table(
        "dataset_profiles",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("dataset_version_id", sa.UUID(), nullable=False),
        sa.Column("row_count", sa.BigInteger(), nullable=False),
        sa.Column("column_count", sa.Integer(), nullable=False),
        sa.Column("missing_cells", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("duplicate_rows", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("memory_bytes", sa.BigInteger(), nullable=True),
        sa.Column(
            "column_stats",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("correlations", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "warnings",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
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
            "row_count >= 0 AND column_count >= 0 AND missing_cells >= 0 AND duplicate_rows >= 0",
            name=op.f("ck_dataset_profiles_counts_nonnegative"),
        ),
        sa.ForeignKeyConstraint(
            ["dataset_version_id"],
            ["dataset_versions.id"],
            name=op.f("fk_dataset_profiles_dataset_version_id_dataset_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dataset_profiles")),
        sa.UniqueConstraint(
            "dataset_version_id", name=op.f("uq_dataset_profiles_dataset_version_id")
        ),
    )
    op.create_table(
        "ingestion_jobs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("dataset_version_id", sa.UUID(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("pending", "processing", "completed", "failed", name="ingestion_status"),
            server_default="pending",
            nullable=False,
        ),
        sa.Column("source_path", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("started_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("completed_at", sa.TIMESTAMP(timezone=True), nullable=True),
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
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_ingestion_jobs_attempts_nonnegative")),
        sa.ForeignKeyConstraint(
            ["dataset_version_id", "user_id"],
            ["dataset_versions.id", "dataset_versions.user_id"],
            name=op.f("fk_ingestion_jobs_dataset_version_id_user_id_dataset_versions"),
            onupdate="CASCADE",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ingestion_jobs")),
    )
    op.create_index(
        "ix_ingestion_jobs_dataset_version_id_user_id",
        "ingestion_jobs",
        ["dataset_version_id", "user_id"],
        unique=False,
    )
    op.create_index(
        "ix_ingestion_jobs_pending_created_at",
        "ingestion_jobs",
        ["created_at"],
        unique=False,
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.create_index(
        "ix_ingestion_jobs_user_id_created_at",
        "ingestion_jobs",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("workflow_snapshot_id", sa.UUID(), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "pending",
                "queued",
                "running",
                "completed",
                "failed",
                "cancelled",
                name="job_status",
            ),
            server_default="pending",
            nullable=False,
        ),
        sa.Column("credit_cost", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("celery_task_id", sa.Text(), nullable=True),
        sa.Column("results", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("error_traceback", sa.Text(), nullable=True),
        sa.Column("started_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("completed_at", sa.TIMESTAMP(timezone=True), nullable=True),
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
            "completed_at IS NULL OR started_at IS NULL OR completed_at >= started_at",
            name=op.f("ck_jobs_completed_after_started"),
        ),
        sa.CheckConstraint("credit_cost >= 0", name=op.f("ck_jobs_credit_cost_nonnegative")),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_jobs_user_id_users"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["workflow_snapshot_id", "user_id"],
            ["workflow_snapshots.id", "workflow_snapshots.user_id"],
            name=op.f("fk_jobs_workflow_snapshot_id_user_id_workflow_snapshots"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("id", "user_id", name=op.f("uq_jobs_id_user_id")),
    )
    op.create_index(
        "ix_jobs_queue",
        "jobs",
        [sa.literal_column("priority DESC"), "created_at"],
        unique=False,
        postgresql_where=sa.text("status = 'queued'"),
    )
    op.create_index("ix_jobs_user_id_created_at", "jobs", ["user_id", "created_at"], unique=False)
    op.create_index(
        "ix_jobs_user_id_status_created_at",
        "jobs",
        ["user_id", "status", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_jobs_workflow_snapshot_id_user_id",
        "jobs",
        ["workflow_snapshot_id", "user_id"],
        unique=False,
    )
    op.create_table(
        "credit_transactions",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column(
            "type",
            sa.Enum("purchase", "consumption", "refund", "adjustment", name="transaction_type"),
            nullable=False,
        ),
        sa.Column("amount", sa.Integer(), nullable=False),
        sa.Column("balance_after", sa.Integer(), server_default=sa.FetchedValue(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("job_id", sa.UUID(), nullable=True),
        sa.Column("package_id", sa.UUID(), nullable=True),
        sa.Column("stripe_payment_id", sa.Text(), nullable=True),
        sa.Column("actor", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "(type = 'purchase' AND amount > 0) OR (type = 'consumption' AND amount < 0) OR (type = 'refund' AND amount > 0) OR (type = 'adjustment' AND amount <> 0)",
            name=op.f("ck_credit_transactions_amount_sign"),
        ),
        sa.CheckConstraint(
            "(type IN ('consumption', 'refund')) = (job_id IS NOT NULL)",
            name=op.f("ck_credit_transactions_job_only_for_charges"),
        ),
        sa.CheckConstraint(
            "type <> 'adjustment' OR (actor IS NOT NULL AND description IS NOT NULL)",
            name=op.f("ck_credit_transactions_adjustment_has_actor_and_reason"),
        ),
        sa.CheckConstraint(
            "type = 'purchase' OR (package_id IS NULL AND stripe_payment_id IS NULL)",
            name=op.f("ck_credit_transactions_payment_only_for_purchases"),
        ),
        sa.CheckConstraint(
            "balance_after >= 0", name=op.f("ck_credit_transactions_balance_after_nonnegative")
        ),
        sa.ForeignKeyConstraint(
            ["job_id", "user_id"],
            ["jobs.id", "jobs.user_id"],
            name=op.f("fk_credit_transactions_job_id_user_id_jobs"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["package_id"],
            ["credit_packages.id"],
            name=op.f("fk_credit_transactions_package_id_credit_packages"),
            ondelete="RESTRICT",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_credit_transactions_user_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_credit_transactions")),
        sa.UniqueConstraint(
            "stripe_payment_id", name=op.f("uq_credit_transactions_stripe_payment_id")
        ),
    )
    op.create_index(
        "ix_credit_transactions_job_id_user_id",
        "credit_transactions",
        ["job_id", "user_id"],
        unique=False,
    )
    op.create_index(
        "ix_credit_transactions_package_id", "credit_transactions", ["package_id"], unique=False
    )
    op.create_index(
        "ix_credit_transactions_user_id_created_at",
        "credit_transactions",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "uq_credit_transactions_job_id_consumption",
        "credit_transactions",
        ["job_id"],
        unique=True,
        postgresql_where=sa.text("type = 'consumption'"),
    )
    op.create_index(
        "uq_credit_transactions_job_id_refund",
        "credit_transactions",
        ["job_id"],
        unique=True,
        postgresql_where=sa.text("type = 'refund'"),
    )
    op.create_table(
        "job_nodes",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("node_id", sa.Text(), nullable=False),
        sa.Column(
            "node_type",
            sa.Enum("dataset", "preprocess", "model", "visualize", "save", name="node_type"),
            nullable=False,
        ),
        sa.Column(
            "status",
            sa.Enum("pending", "running", "success", "failed", "skipped", name="node_status"),
            server_default="pending",
            nullable=False,
        ),
        sa.Column("output_data", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("started_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column("completed_at", sa.TIMESTAMP(timezone=True), nullable=True),
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
        sa.ForeignKeyConstraint(
            ["job_id", "user_id"],
            ["jobs.id", "jobs.user_id"],
            name=op.f("fk_job_nodes_job_id_user_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_job_nodes")),
        sa.UniqueConstraint("job_id", "node_id", name=op.f("uq_job_nodes_job_id_node_id")),
    )
    op.create_index("ix_job_nodes_user_id_job_id", "job_nodes", ["user_id", "job_id"], unique=False)
    op.create_table(
        "models",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("algorithm", sa.Text(), nullable=False),
        sa.Column(
            "problem_type",
            sa.Enum("classification", "regression", "clustering", "other", name="problem_type"),
            nullable=False,
        ),
        sa.Column(
            "metrics",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "hyperparameters",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("s3_path", sa.Text(), nullable=True),
        sa.Column("is_deployed", sa.Boolean(), server_default=sa.text("false"), nullable=False),
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
        sa.ForeignKeyConstraint(
            ["job_id", "user_id"],
            ["jobs.id", "jobs.user_id"],
            name=op.f("fk_models_job_id_user_id_jobs"),
            ondelete="SET NULL (job_id)",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_models_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
        sa.UniqueConstraint("id", "user_id", name=op.f("uq_models_id_user_id")),
    )
    op.create_index("ix_models_job_id_user_id", "models", ["job_id", "user_id"], unique=False)
    op.create_index(
        "ix_models_user_id_created_at", "models", ["user_id", "created_at"], unique=False
    )
    op.create_table(
        "experiment_runs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("experiment_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=True),
        sa.Column("model_id", sa.UUID(), nullable=True),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("notes", sa.Text(), nullable=True),
        sa.Column("metrics", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["experiment_id", "user_id"],
            ["experiments.id", "experiments.user_id"],
            name=op.f("fk_experiment_runs_experiment_id_user_id_experiments"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id", "user_id"],
            ["jobs.id", "jobs.user_id"],
            name=op.f("fk_experiment_runs_job_id_user_id_jobs"),
            ondelete="SET NULL (job_id)",
        ),
        sa.ForeignKeyConstraint(
            ["model_id", "user_id"],
            ["models.id", "models.user_id"],
            name=op.f("fk_experiment_runs_model_id_user_id_models"),
            ondelete="SET NULL (model_id)",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_experiment_runs")),
        sa.UniqueConstraint(
            "experiment_id", "model_id", name=op.f("uq_experiment_runs_experiment_id_model_id")
        ),
    )
    op.create_index(
        "ix_experiment_runs_experiment_id_user_id",
        "experiment_runs",
        ["experiment_id", "user_id"],
        unique=False,
    )
    op.create_index(
        "ix_experiment_runs_job_id_user_id", "experiment_runs", ["job_id", "user_id"], unique=False
    )
    op.create_index(
        "ix_experiment_runs_model_id_user_id",
        "experiment_runs",
        ["model_id", "user_id"],
        unique=False,
    )
    # datasets <-> dataset_versions is circular: the current-version key comes last.
    op.create_foreign_key(
        "fk_datasets_current_version_id_dataset_versions",
        "datasets",
        "dataset_versions",
        ["id", "current_version_id"],
        ["dataset_id", "id"],
        ondelete="SET NULL (current_version_id)",
    )
    # ### end Alembic commands ###


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_constraint(
        "fk_datasets_current_version_id_dataset_versions", "datasets", type_="foreignkey"
    )
    op.drop_index("ix_experiment_runs_model_id_user_id", table_name="experiment_runs")
    op.drop_index("ix_experiment_runs_job_id_user_id", table_name="experiment_runs")
    op.drop_index("ix_experiment_runs_experiment_id_user_id", table_name="experiment_runs")
    op.drop_table("experiment_runs")
    op.drop_index("ix_models_user_id_created_at", table_name="models")
    op.drop_index("ix_models_job_id_user_id", table_name="models")
    op.drop_table("models")
    op.drop_index("ix_job_nodes_user_id_job_id", table_name="job_nodes")
    op.drop_table("job_nodes")
    op.drop_index(
        "uq_credit_transactions_job_id_refund",
        table_name="credit_transactions",
        postgresql_where=sa.text("type = 'refund'"),
    )
    op.drop_index(
        "uq_credit_transactions_job_id_consumption",
        table_name="credit_transactions",
        postgresql_where=sa.text("type = 'consumption'"),
    )
    op.drop_index("ix_credit_transactions_user_id_created_at", table_name="credit_transactions")
    op.drop_index("ix_credit_transactions_package_id", table_name="credit_transactions")
    op.drop_index("ix_credit_transactions_job_id_user_id", table_name="credit_transactions")
    op.drop_table("credit_transactions")
    op.drop_index("ix_jobs_workflow_snapshot_id_user_id", table_name="jobs")
    op.drop_index("ix_jobs_user_id_status_created_at", table_name="jobs")
    op.drop_index("ix_jobs_user_id_created_at", table_name="jobs")
    op.drop_index("ix_jobs_queue", table_name="jobs", postgresql_where=sa.text("status = 'queued'"))
    op.drop_table("jobs")
    op.drop_index("ix_ingestion_jobs_user_id_created_at", table_name="ingestion_jobs")
    op.drop_index(
        "ix_ingestion_jobs_pending_created_at",
        table_name="ingestion_jobs",
        postgresql_where=sa.text("status = 'pending'"),
    )
    op.drop_index("ix_ingestion_jobs_dataset_version_id_user_id", table_name="ingestion_jobs")
    op.drop_table("ingestion_jobs")
    op.drop_table("dataset_profiles")
    op.drop_index("ix_workflow_snapshots_workflow_id", table_name="workflow_snapshots")
    op.drop_index("ix_workflow_snapshots_user_id_created_at", table_name="workflow_snapshots")
    op.drop_table("workflow_snapshots")
    op.drop_index("ix_experiments_user_id_created_at", table_name="experiments")
    op.drop_index("ix_experiments_dataset_id", table_name="experiments")
    op.drop_table("experiments")
    op.drop_index("ix_dataset_versions_user_id_dataset_id", table_name="dataset_versions")
    op.drop_table("dataset_versions")
    op.drop_index("ix_workflows_user_id_created_at", table_name="workflows")
    op.drop_index(
        "ix_workflows_deleted_at", table_name="workflows", postgresql_where=sa.text("is_deleted")
    )
    op.drop_table("workflows")
    op.drop_index("ix_user_tutorial_progress_tutorial_id", table_name="user_tutorial_progress")
    op.drop_table("user_tutorial_progress")
    op.drop_index("ix_datasets_user_id_created_at", table_name="datasets")
    op.drop_table("datasets")
    op.drop_index("ix_users_deleted_at", table_name="users", postgresql_where=sa.text("is_deleted"))
    op.drop_table("users")
    op.drop_index("ix_tutorials_sort_order", table_name="tutorials")
    op.drop_table("tutorials")
    op.drop_table("credit_packages")
    drop(
        WORKFLOW_SNAPSHOTS_IMMUTABLE_FUNCTION,
        USERS_GUARD_DERIVED_FUNCTION,
        SET_UPDATED_AT_FUNCTION,
        USERS_ADJUST_STORAGE_FUNCTION,
        DATASET_VERSIONS_NUMBER_FUNCTION,
        CREDIT_TX_IMMUTABLE_FUNCTION,
        CREDIT_TX_BEFORE_INSERT_FUNCTION,
        USERS_COUNT_MODELS_FUNCTION,
        USERS_COUNT_WORKFLOWS_FUNCTION,
        USERS_COUNT_DATASETS_FUNCTION,
        USERS_APPLY_DELTAS_FUNCTION,
    )

    # drop_table leaves enum types behind.
    for name in [
        "user_tier",
        "oauth_provider",
        "file_format",
        "problem_type",
        "ingestion_status",
        "job_status",
        "node_type",
        "node_status",
        "transaction_type",
        "tutorial_difficulty",
        "credit_tier_restriction",
    ]:
        sa.Enum(name=name).drop(op.get_bind(), checkfirst=False)
    # ### end Alembic commands ###
