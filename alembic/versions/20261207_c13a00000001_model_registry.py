"""model registry

Issue 13's database layer. Tables ``registered_models`` (name unique per owner, tags
as a jsonb object of strings, visibility, the version counter), ``model_versions``
(numbered 1, 2, 3... from that counter, one per trained model, signature,
environment, download_count), ``model_version_metrics`` (metric rows, index
``(metric, split, value)``), ``model_aliases`` (keyed ``(registered_model_id,
alias)``, pointing at a version of the same model), ``model_lineage`` (edges to one
parent), ``model_downloads`` (append-only) and ``registered_model_permissions``;
enums ``model_visibility``, ``model_version_status``, ``lineage_relation``,
``model_format``, ``model_permission``; the functions and triggers of
``sql/triggers/registry.sql`` (ML060-ML066), the triggers written by hand after their
tables and dropped before them. The downgrade drops all of it.

Revision ID: c13a00000001
Revises: c11c00000001
Create Date: 2026-12-07 06:18:47.823664+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from database.migrations import create, drop, function, trigger

revision: str = "c13a00000001"
down_revision: str | Sequence[str] | None = "c11c00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


MODEL_VERSIONS_NUMBER_FUNCTION = function(
    "model_versions_number()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    UPDATE public.registered_models AS r\n       SET last_version_number = r.last_version_number + 1\n     WHERE r.id = NEW.registered_model_id\n    RETURNING r.last_version_number, r.user_id INTO NEW.version, NEW.user_id;\n    IF NOT FOUND THEN\n        NEW.version := 1;  -- no such registered model\\: its foreign key refuses the row\n    END IF;\n    NEW.download_count := 0;\n    RETURN NEW;\nEND;\n$$",
)
REGISTERED_MODELS_OWNER_IMMUTABLE_FUNCTION = function(
    "registered_models_owner_immutable()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'registered model % may not change its owner', OLD.id\n        USING ERRCODE = 'ML066';\nEND;\n$$",
)
REGISTERED_MODELS_VERSION_COUNTER_GUARD_FUNCTION = function(
    "registered_models_version_counter_guard()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'the version counter of registered model % may not go down (% to %)',\n            OLD.id, OLD.last_version_number, NEW.last_version_number\n        USING ERRCODE = 'ML060';\nEND;\n$$",
)
MODEL_VERSIONS_IDENTITY_IMMUTABLE_FUNCTION = function(
    "model_versions_identity_immutable()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'model version % may not change its version, registered model, model or owner',\n            OLD.id\n        USING ERRCODE = 'ML061',\n              DETAIL = format('version=%s registered_model_id=%s', OLD.version,\n                              OLD.registered_model_id);\nEND;\n$$",
)
MODEL_DOWNLOADS_APPEND_ONLY_FUNCTION = function(
    "model_downloads_append_only()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'model_downloads is append-only\\: % refused', TG_OP\n        USING ERRCODE = 'ML062',\n              HINT = 'record a new download instead';\nEND;\n$$",
)
MODEL_DOWNLOADS_COUNT_FUNCTION = function(
    "model_downloads_count()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    UPDATE public.model_versions AS v\n       SET download_count = v.download_count + c.n\n      FROM (SELECT n.model_version_id, count(*) AS n\n              FROM new_rows AS n\n             WHERE n.granted\n             GROUP BY n.model_version_id) AS c\n     WHERE v.id = c.model_version_id;\n    RETURN NULL;\nEND;\n$$",
)
MODEL_VERSIONS_DOWNLOAD_COUNT_GUARD_FUNCTION = function(
    "model_versions_download_count_guard()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'model_versions.download_count is kept by the database (% to %)',\n            OLD.download_count, NEW.download_count\n        USING ERRCODE = 'ML063',\n              HINT = 'record a download in model_downloads';\nEND;\n$$",
)
REGISTERED_MODEL_PERMISSIONS_NOT_OWNER_FUNCTION = function(
    "registered_model_permissions_not_owner()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    IF EXISTS (SELECT 1 FROM public.registered_models AS r\n                WHERE r.id = NEW.registered_model_id AND r.user_id = NEW.user_id) THEN\n        RAISE EXCEPTION 'user % owns registered model %\\: the owner cannot be granted a permission',\n                NEW.user_id, NEW.registered_model_id\n            USING ERRCODE = 'ML064';\n    END IF;\n    RETURN NEW;\nEND;\n$$",
)
MODEL_LINEAGE_NO_CYCLE_FUNCTION = function(
    "model_lineage_no_cycle()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    PERFORM pg_advisory_xact_lock(7305065);\n    IF EXISTS (\n        WITH RECURSIVE up(id) AS (\n            SELECT NEW.parent_version_id\n            UNION\n            SELECT l.parent_version_id\n              FROM public.model_lineage AS l JOIN up ON l.child_version_id = up.id\n             WHERE l.parent_version_id IS NOT NULL\n        )\n        SELECT 1 FROM up WHERE up.id = NEW.child_version_id\n    ) THEN\n        RAISE EXCEPTION 'model version % descends from model version % already\\: the edge would make a cycle',\n                NEW.parent_version_id, NEW.child_version_id\n            USING ERRCODE = 'ML065';\n    END IF;\n    RETURN NEW;\nEND;\n$$",
)
MODEL_VERSIONS_NUMBER_TRIGGER = trigger(
    "model_versions_number",
    "model_versions",
    "BEFORE INSERT ON public.model_versions FOR EACH ROW\nEXECUTE FUNCTION public.model_versions_number()",
)
REGISTERED_MODELS_OWNER_IMMUTABLE_TRIGGER = trigger(
    "registered_models_owner_immutable",
    "registered_models",
    "BEFORE UPDATE OF user_id ON public.registered_models FOR EACH ROW\nWHEN (NEW.user_id IS DISTINCT FROM OLD.user_id)\nEXECUTE FUNCTION public.registered_models_owner_immutable()",
)
REGISTERED_MODELS_VERSION_COUNTER_GUARD_TRIGGER = trigger(
    "registered_models_version_counter_guard",
    "registered_models",
    "BEFORE UPDATE OF last_version_number ON public.registered_models FOR EACH ROW\nWHEN (NEW.last_version_number < OLD.last_version_number)\nEXECUTE FUNCTION public.registered_models_version_counter_guard()",
)
MODEL_VERSIONS_IDENTITY_IMMUTABLE_TRIGGER = trigger(
    "model_versions_identity_immutable",
    "model_versions",
    "BEFORE UPDATE OF version, registered_model_id, model_id, user_id ON public.model_versions FOR EACH ROW\nWHEN (NEW.version IS DISTINCT FROM OLD.version\n      OR NEW.registered_model_id IS DISTINCT FROM OLD.registered_model_id\n      OR NEW.model_id IS DISTINCT FROM OLD.model_id\n      OR NEW.user_id IS DISTINCT FROM OLD.user_id)\nEXECUTE FUNCTION public.model_versions_identity_immutable()",
)
MODEL_DOWNLOADS_APPEND_ONLY_TRIGGER = trigger(
    "model_downloads_append_only",
    "model_downloads",
    "BEFORE UPDATE OR DELETE ON public.model_downloads FOR EACH ROW\nWHEN (pg_trigger_depth() = 0)\nEXECUTE FUNCTION public.model_downloads_append_only()",
)
MODEL_DOWNLOADS_NO_TRUNCATE_TRIGGER = trigger(
    "model_downloads_no_truncate",
    "model_downloads",
    "BEFORE TRUNCATE ON public.model_downloads FOR EACH STATEMENT\nEXECUTE FUNCTION public.model_downloads_append_only()",
)
MODEL_DOWNLOADS_COUNT_TRIGGER = trigger(
    "model_downloads_count",
    "model_downloads",
    "AFTER INSERT ON public.model_downloads REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT\nEXECUTE FUNCTION public.model_downloads_count()",
)
MODEL_VERSIONS_DOWNLOAD_COUNT_GUARD_TRIGGER = trigger(
    "model_versions_download_count_guard",
    "model_versions",
    "BEFORE UPDATE OF download_count ON public.model_versions FOR EACH ROW\nWHEN (pg_trigger_depth() = 0 AND NEW.download_count IS DISTINCT FROM OLD.download_count)\nEXECUTE FUNCTION public.model_versions_download_count_guard()",
)
REGISTERED_MODEL_PERMISSIONS_NOT_OWNER_TRIGGER = trigger(
    "registered_model_permissions_not_owner",
    "registered_model_permissions",
    "BEFORE INSERT OR UPDATE OF user_id, registered_model_id ON public.registered_model_permissions FOR EACH ROW\nEXECUTE FUNCTION public.registered_model_permissions_not_owner()",
)
MODEL_LINEAGE_NO_CYCLE_TRIGGER = trigger(
    "model_lineage_no_cycle",
    "model_lineage",
    "BEFORE INSERT OR UPDATE OF parent_version_id, child_version_id ON public.model_lineage FOR EACH ROW\nWHEN (NEW.parent_version_id IS NOT NULL)\nEXECUTE FUNCTION public.model_lineage_no_cycle()",
)
SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "registered_models",
    "BEFORE UPDATE ON public.registered_models FOR EACH ROW\nWHEN (OLD.last_version_number IS NOT DISTINCT FROM NEW.last_version_number\n      AND OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
MODEL_VERSIONS_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "model_versions",
    "BEFORE UPDATE ON public.model_versions FOR EACH ROW\nWHEN (OLD.download_count IS NOT DISTINCT FROM NEW.download_count\n      AND OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)
MODEL_ALIASES_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at",
    "model_aliases",
    "BEFORE UPDATE ON public.model_aliases FOR EACH ROW\nWHEN (OLD.* IS DISTINCT FROM NEW.*)\nEXECUTE FUNCTION public.set_updated_at()",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    create(
        MODEL_VERSIONS_NUMBER_FUNCTION,
        REGISTERED_MODELS_OWNER_IMMUTABLE_FUNCTION,
        REGISTERED_MODELS_VERSION_COUNTER_GUARD_FUNCTION,
        MODEL_VERSIONS_IDENTITY_IMMUTABLE_FUNCTION,
        MODEL_DOWNLOADS_APPEND_ONLY_FUNCTION,
        MODEL_DOWNLOADS_COUNT_FUNCTION,
        MODEL_VERSIONS_DOWNLOAD_COUNT_GUARD_FUNCTION,
        REGISTERED_MODEL_PERMISSIONS_NOT_OWNER_FUNCTION,
        MODEL_LINEAGE_NO_CYCLE_FUNCTION,
    )

    op.create_table(
        "registered_models",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("model_card", sa.Text(), nullable=True),
        sa.Column("license", sa.Text(), nullable=True),
        sa.Column(
            "tags",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "visibility",
            sa.Enum("private", "shared", "public", name="model_visibility"),
            server_default="private",
            nullable=False,
        ),
        sa.Column("last_version_number", sa.Integer(), server_default=sa.text("0"), nullable=False),
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
            "char_length(name) BETWEEN 1 AND 200", name=op.f("ck_registered_models_name_length")
        ),
        sa.CheckConstraint(
            "description IS NULL OR char_length(description) <= 5000",
            name=op.f("ck_registered_models_description_length"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(tags) = 'object' AND NOT jsonb_path_exists(tags, '$.* ? (@.type() != \"string\")') AND char_length(tags::text) <= 8000",
            name=op.f("ck_registered_models_tags_shape"),
        ),
        sa.CheckConstraint(
            "last_version_number >= 0",
            name=op.f("ck_registered_models_last_version_number_nonnegative"),
        ),
        sa.CheckConstraint(
            "license IS NULL OR char_length(license) BETWEEN 1 AND 100",
            name=op.f("ck_registered_models_license_length"),
        ),
        sa.CheckConstraint(
            "model_card IS NULL OR char_length(model_card) <= 100000",
            name=op.f("ck_registered_models_model_card_length"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_registered_models_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registered_models")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_registered_models_user_id_name")),
    )
    op.create_index(
        "ix_registered_models_tags",
        "registered_models",
        ["tags"],
        unique=False,
        postgresql_using="gin",
    )
    op.create_table(
        "registered_model_permissions",
        sa.Column("registered_model_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column(
            "permission",
            sa.Enum("read", "download", "deploy", name="model_permission"),
            nullable=False,
        ),
        sa.Column("granted_by", sa.UUID(), nullable=True),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["granted_by"],
            ["users.id"],
            name=op.f("fk_registered_model_permissions_granted_by_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["registered_model_id"],
            ["registered_models.id"],
            name="fk_registered_model_permissions_registered_models",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_registered_model_permissions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "registered_model_id", "user_id", name=op.f("pk_registered_model_permissions")
        ),
    )
    op.create_index(
        "ix_registered_model_permissions_granted_by",
        "registered_model_permissions",
        ["granted_by"],
        unique=False,
    )
    op.create_index(
        "ix_registered_model_permissions_user_id",
        "registered_model_permissions",
        ["user_id"],
        unique=False,
    )
    op.create_table(
        "model_versions",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("registered_model_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), server_default=sa.FetchedValue(), nullable=False),
        sa.Column("version", sa.Integer(), server_default=sa.FetchedValue(), nullable=False),
        sa.Column("model_id", sa.UUID(), nullable=False),
        sa.Column(
            "status",
            sa.Enum("ready", "archived", name="model_version_status"),
            server_default="ready",
            nullable=False,
        ),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("primary_metric", sa.Text(), nullable=True),
        sa.Column(
            "signature",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("input_example", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "environment",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("download_count", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
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
            "input_example IS NULL OR (jsonb_typeof(input_example) = 'array' AND char_length(input_example::text) <= 100000)",
            name=op.f("ck_model_versions_input_example_shape"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(environment) = 'object' AND char_length(environment::text) <= 10000",
            name=op.f("ck_model_versions_environment_shape"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(signature) = 'object' AND char_length(signature::text) <= 100000",
            name=op.f("ck_model_versions_signature_shape"),
        ),
        sa.CheckConstraint(
            "description IS NULL OR char_length(description) <= 5000",
            name=op.f("ck_model_versions_description_length"),
        ),
        sa.CheckConstraint(
            "download_count >= 0", name=op.f("ck_model_versions_download_count_nonnegative")
        ),
        sa.CheckConstraint(
            "primary_metric IS NULL OR char_length(primary_metric) BETWEEN 1 AND 200",
            name=op.f("ck_model_versions_primary_metric_length"),
        ),
        sa.CheckConstraint("version >= 1", name=op.f("ck_model_versions_version_positive")),
        sa.ForeignKeyConstraint(
            ["model_id", "user_id"],
            ["models.id", "models.user_id"],
            name=op.f("fk_model_versions_model_id_user_id_models"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["registered_model_id"],
            ["registered_models.id"],
            name=op.f("fk_model_versions_registered_model_id_registered_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_versions")),
        sa.UniqueConstraint(
            "id", "registered_model_id", name=op.f("uq_model_versions_id_registered_model_id")
        ),
        sa.UniqueConstraint("model_id", "user_id", name=op.f("uq_model_versions_model_id_user_id")),
        sa.UniqueConstraint(
            "registered_model_id",
            "version",
            name=op.f("uq_model_versions_registered_model_id_version"),
        ),
    )
    op.create_table(
        "model_aliases",
        sa.Column("registered_model_id", sa.UUID(), nullable=False),
        sa.Column("alias", sa.Text(), nullable=False),
        sa.Column("model_version_id", sa.UUID(), nullable=False),
        sa.Column(
            "updated_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "alias ~ '^[a-z][a-z0-9_-]{0,62}$'", name=op.f("ck_model_aliases_alias_name")
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id", "registered_model_id"],
            ["model_versions.id", "model_versions.registered_model_id"],
            name="fk_model_aliases_model_version_id_model_versions",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["registered_model_id"],
            ["registered_models.id"],
            name=op.f("fk_model_aliases_registered_model_id_registered_models"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("registered_model_id", "alias", name=op.f("pk_model_aliases")),
    )
    op.create_index(
        "ix_model_aliases_model_version_id_registered_model_id",
        "model_aliases",
        ["model_version_id", "registered_model_id"],
        unique=False,
    )
    op.create_table(
        "model_downloads",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("model_version_id", sa.UUID(), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=True),
        sa.Column(
            "format",
            sa.Enum("joblib", "skops", "onnx", "mlflow", name="model_format"),
            nullable=False,
        ),
        sa.Column("ip", postgresql.INET(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("granted", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "reason IS NULL OR char_length(reason) BETWEEN 1 AND 500",
            name=op.f("ck_model_downloads_reason_length"),
        ),
        sa.CheckConstraint(
            "user_agent IS NULL OR char_length(user_agent) <= 512",
            name=op.f("ck_model_downloads_user_agent_length"),
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_downloads_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_model_downloads_user_id_users"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_downloads")),
    )
    op.create_index(
        "ix_model_downloads_model_version_id_created_at",
        "model_downloads",
        ["model_version_id", "created_at"],
        unique=False,
    )
    op.create_index(
        "ix_model_downloads_user_id_created_at",
        "model_downloads",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "model_lineage",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("child_version_id", sa.UUID(), nullable=False),
        sa.Column(
            "relation",
            sa.Enum(
                "trained_on",
                "evaluated_on",
                "produced_by",
                "retrained_from",
                "tuned_from",
                name="lineage_relation",
            ),
            nullable=False,
        ),
        sa.Column("parent_version_id", sa.UUID(), nullable=True),
        sa.Column("dataset_version_id", sa.UUID(), nullable=True),
        sa.Column("workflow_snapshot_id", sa.UUID(), nullable=True),
        sa.Column("job_id", sa.UUID(), nullable=True),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "CASE relation WHEN 'trained_on' THEN dataset_version_id IS NOT NULL WHEN 'evaluated_on' THEN dataset_version_id IS NOT NULL WHEN 'produced_by' THEN job_id IS NOT NULL OR workflow_snapshot_id IS NOT NULL ELSE parent_version_id IS NOT NULL END",
            name=op.f("ck_model_lineage_relation_parent"),
        ),
        sa.CheckConstraint(
            "num_nonnulls(parent_version_id, dataset_version_id, workflow_snapshot_id, job_id) = 1",
            name=op.f("ck_model_lineage_one_parent"),
        ),
        sa.CheckConstraint(
            "parent_version_id IS DISTINCT FROM child_version_id",
            name=op.f("ck_model_lineage_not_own_parent"),
        ),
        sa.ForeignKeyConstraint(
            ["child_version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_lineage_child_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["dataset_version_id"],
            ["dataset_versions.id"],
            name=op.f("fk_model_lineage_dataset_version_id_dataset_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_model_lineage_job_id_jobs"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["parent_version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_lineage_parent_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["workflow_snapshot_id"],
            ["workflow_snapshots.id"],
            name=op.f("fk_model_lineage_workflow_snapshot_id_workflow_snapshots"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_lineage")),
        sa.UniqueConstraint(
            "child_version_id",
            "relation",
            "parent_version_id",
            "dataset_version_id",
            "workflow_snapshot_id",
            "job_id",
            name="uq_model_lineage_edge",
            postgresql_nulls_not_distinct=True,
        ),
    )
    op.create_index(
        op.f("ix_model_lineage_dataset_version_id"),
        "model_lineage",
        ["dataset_version_id"],
        unique=False,
    )
    op.create_index(op.f("ix_model_lineage_job_id"), "model_lineage", ["job_id"], unique=False)
    op.create_index(
        op.f("ix_model_lineage_parent_version_id"),
        "model_lineage",
        ["parent_version_id"],
        unique=False,
    )
    op.create_index(
        op.f("ix_model_lineage_workflow_snapshot_id"),
        "model_lineage",
        ["workflow_snapshot_id"],
        unique=False,
    )
    op.create_table(
        "model_version_metrics",
        sa.Column("model_version_id", sa.UUID(), nullable=False),
        sa.Column("metric", sa.Text(), nullable=False),
        sa.Column("split", sa.Text(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.CheckConstraint(
            "metric ~ '^[A-Za-z][A-Za-z0-9_.-]{0,99}$'",
            name=op.f("ck_model_version_metrics_metric_name"),
        ),
        sa.CheckConstraint(
            "split ~ '^[a-z][a-z0-9_]{0,31}$'", name=op.f("ck_model_version_metrics_split_name")
        ),
        sa.CheckConstraint(
            "value <> 'NaN'::float8 AND value <> 'Infinity'::float8 AND value <> '-Infinity'::float8",
            name=op.f("ck_model_version_metrics_value_finite"),
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_version_metrics_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "model_version_id", "metric", "split", name=op.f("pk_model_version_metrics")
        ),
    )
    op.create_index(
        "ix_model_version_metrics_metric_split_value",
        "model_version_metrics",
        ["metric", "split", "value"],
        unique=False,
    )
    # Triggers, by hand, after the tables they are on.
    create(
        MODEL_VERSIONS_NUMBER_TRIGGER,
        REGISTERED_MODELS_OWNER_IMMUTABLE_TRIGGER,
        REGISTERED_MODELS_VERSION_COUNTER_GUARD_TRIGGER,
        MODEL_VERSIONS_IDENTITY_IMMUTABLE_TRIGGER,
        MODEL_DOWNLOADS_APPEND_ONLY_TRIGGER,
        MODEL_DOWNLOADS_NO_TRUNCATE_TRIGGER,
        MODEL_DOWNLOADS_COUNT_TRIGGER,
        MODEL_VERSIONS_DOWNLOAD_COUNT_GUARD_TRIGGER,
        REGISTERED_MODEL_PERMISSIONS_NOT_OWNER_TRIGGER,
        MODEL_LINEAGE_NO_CYCLE_TRIGGER,
        SET_UPDATED_AT_TRIGGER,
        MODEL_VERSIONS_SET_UPDATED_AT_TRIGGER,
        MODEL_ALIASES_SET_UPDATED_AT_TRIGGER,
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # Triggers first: drop_entity fails once their table is gone.
    drop(
        REGISTERED_MODELS_OWNER_IMMUTABLE_TRIGGER,
        MODEL_ALIASES_SET_UPDATED_AT_TRIGGER,
        MODEL_VERSIONS_SET_UPDATED_AT_TRIGGER,
        SET_UPDATED_AT_TRIGGER,
        MODEL_LINEAGE_NO_CYCLE_TRIGGER,
        REGISTERED_MODEL_PERMISSIONS_NOT_OWNER_TRIGGER,
        MODEL_VERSIONS_DOWNLOAD_COUNT_GUARD_TRIGGER,
        MODEL_DOWNLOADS_COUNT_TRIGGER,
        MODEL_DOWNLOADS_NO_TRUNCATE_TRIGGER,
        MODEL_DOWNLOADS_APPEND_ONLY_TRIGGER,
        MODEL_VERSIONS_IDENTITY_IMMUTABLE_TRIGGER,
        REGISTERED_MODELS_VERSION_COUNTER_GUARD_TRIGGER,
        MODEL_VERSIONS_NUMBER_TRIGGER,
    )

    op.drop_index("ix_model_version_metrics_metric_split_value", table_name="model_version_metrics")
    op.drop_table("model_version_metrics")
    op.drop_index(op.f("ix_model_lineage_workflow_snapshot_id"), table_name="model_lineage")
    op.drop_index(op.f("ix_model_lineage_parent_version_id"), table_name="model_lineage")
    op.drop_index(op.f("ix_model_lineage_job_id"), table_name="model_lineage")
    op.drop_index(op.f("ix_model_lineage_dataset_version_id"), table_name="model_lineage")
    op.drop_table("model_lineage")
    op.drop_index("ix_model_downloads_user_id_created_at", table_name="model_downloads")
    op.drop_index("ix_model_downloads_model_version_id_created_at", table_name="model_downloads")
    op.drop_table("model_downloads")
    op.drop_index(
        "ix_model_aliases_model_version_id_registered_model_id", table_name="model_aliases"
    )
    op.drop_table("model_aliases")
    op.drop_table("model_versions")
    op.drop_index(
        "ix_registered_model_permissions_user_id", table_name="registered_model_permissions"
    )
    op.drop_index(
        "ix_registered_model_permissions_granted_by", table_name="registered_model_permissions"
    )
    op.drop_table("registered_model_permissions")
    op.drop_index(
        "ix_registered_models_tags", table_name="registered_models", postgresql_using="gin"
    )
    op.drop_table("registered_models")
    for enum_name in (
        "model_permission",
        "model_format",
        "lineage_relation",
        "model_version_status",
        "model_visibility",
    ):
        sa.Enum(name=enum_name).drop(op.get_bind())
    drop(
        MODEL_LINEAGE_NO_CYCLE_FUNCTION,
        REGISTERED_MODEL_PERMISSIONS_NOT_OWNER_FUNCTION,
        MODEL_VERSIONS_DOWNLOAD_COUNT_GUARD_FUNCTION,
        MODEL_DOWNLOADS_COUNT_FUNCTION,
        MODEL_DOWNLOADS_APPEND_ONLY_FUNCTION,
        MODEL_VERSIONS_IDENTITY_IMMUTABLE_FUNCTION,
        REGISTERED_MODELS_VERSION_COUNTER_GUARD_FUNCTION,
        MODEL_VERSIONS_NUMBER_FUNCTION,
        REGISTERED_MODELS_OWNER_IMMUTABLE_FUNCTION,
    )
