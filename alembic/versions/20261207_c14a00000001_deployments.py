"""deployments

Issue 14's database layer: table ``deployments`` (a user's named endpoint serving a
model version, or following an alias of a registered model; name unique per user;
exactly one target, ``ck_deployments_one_target``; ``config`` checked; status enum
``deployment_status``); label ``batch_prediction`` of ``job_kind``; the functions and
triggers of ``sql/triggers/deployments.sql``: ``models.is_deployed`` kept from the
active deployments and the aliases they follow (``models_refresh_deployed()``,
``deployment_model_id()``, ``deployments_is_deployed()``,
``model_aliases_is_deployed()``), refused to clients (``models_guard_is_deployed()``,
ML080), the status life (``deployments_status_transition()``, ML081) and the fixed
target (``deployments_target_immutable()``, ML082). The triggers on ``deployments``
are written by hand after the table and dropped before it. The downgrade leaves the
``job_kind`` label (PostgreSQL cannot drop one: docs/enums.md).

Revision ID: c14a00000001
Revises: c14b00000001
Create Date: 2026-12-07 07:32:23.393038+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from database.migrations import create, drop, function, revoke_execute_from_public, trigger

revision: str = "c14a00000001"
down_revision: str | Sequence[str] | None = "c14b00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


DEPLOYMENTS_IS_DEPLOYED_TRIGGER = (
    "AFTER INSERT OR DELETE OR UPDATE OF status ON public.deployments FOR EACH ROW"
    " EXECUTE FUNCTION public.deployments_is_deployed()"
)
DEPLOYMENTS_STATUS_TRANSITION_TRIGGER = (
    "BEFORE UPDATE OF status ON public.deployments FOR EACH ROW"
    " WHEN (NEW.status IS DISTINCT FROM OLD.status)"
    " EXECUTE FUNCTION public.deployments_status_transition()"
)
DEPLOYMENTS_TARGET_IMMUTABLE_TRIGGER = (
    "BEFORE UPDATE OF user_id, model_version_id, registered_model_id, alias"
    " ON public.deployments FOR EACH ROW"
    " WHEN (NEW.user_id IS DISTINCT FROM OLD.user_id"
    " OR NEW.model_version_id IS DISTINCT FROM OLD.model_version_id"
    " OR NEW.registered_model_id IS DISTINCT FROM OLD.registered_model_id"
    " OR NEW.alias IS DISTINCT FROM OLD.alias)"
    " EXECUTE FUNCTION public.deployments_target_immutable()"
)
SET_UPDATED_AT_TRIGGER = (
    "BEFORE UPDATE ON public.deployments FOR EACH ROW"
    " WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION public.set_updated_at()"
)


MODEL_VERSIONS_IS_DEPLOYED = (
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\n"
    "SET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n"
    "    PERFORM public.models_refresh_deployed("
    "ARRAY(SELECT DISTINCT o.model_id FROM old_rows AS o));\n"
    "    RETURN NULL;\nEND;\n$$"
)


DEPLOYMENT_MODEL_ID_FUNCTION = function(
    "deployment_model_id( p_model_version_id uuid, p_registered_model_id uuid, p_alias text)",
    "returns uuid\nLANGUAGE sql\nSTABLE\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\n    SELECT v.model_id\n      FROM public.model_versions AS v\n     WHERE v.id = COALESCE(p_model_version_id,\n                           (SELECT a.model_version_id FROM public.model_aliases AS a\n                             WHERE a.registered_model_id = p_registered_model_id\n                               AND a.alias = p_alias));\n$$",
)
MODEL_ALIASES_IS_DEPLOYED_FUNCTION = function(
    "model_aliases_is_deployed()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_ids uuid[] := ARRAY[]::uuid[];\n    v_rm uuid;\n    v_alias text;\nBEGIN\n    IF TG_OP = 'DELETE' THEN\n        v_rm := OLD.registered_model_id; v_alias := OLD.alias;\n    ELSE\n        v_rm := NEW.registered_model_id; v_alias := NEW.alias;\n    END IF;\n    IF NOT EXISTS (SELECT 1 FROM public.deployments AS d\n                    WHERE d.registered_model_id = v_rm AND d.alias = v_alias\n                      AND d.status = 'active') THEN\n        RETURN NULL;\n    END IF;\n    IF TG_OP IN ('UPDATE', 'DELETE') THEN\n        v_ids := v_ids || (SELECT v.model_id FROM public.model_versions AS v\n                            WHERE v.id = OLD.model_version_id);\n    END IF;\n    IF TG_OP IN ('INSERT', 'UPDATE') THEN\n        v_ids := v_ids || (SELECT v.model_id FROM public.model_versions AS v\n                            WHERE v.id = NEW.model_version_id);\n    END IF;\n    PERFORM public.models_refresh_deployed(v_ids);\n    RETURN NULL;\nEND;\n$$",
)
MODELS_GUARD_IS_DEPLOYED_FUNCTION = function(
    "models_guard_is_deployed()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'models.is_deployed is maintained by the database and cannot be written directly'\n        USING ERRCODE = 'ML080',\n              HINT = 'create or stop a deployment instead';\nEND;\n$$",
)
DEPLOYMENTS_STATUS_TRANSITION_FUNCTION = function(
    "deployments_status_transition()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    IF (OLD.status = 'pending' AND NEW.status IN ('active', 'failed', 'stopped'))\n       OR (OLD.status = 'active' AND NEW.status IN ('stopped', 'failed')) THEN\n        RETURN NEW;\n    END IF;\n    RAISE EXCEPTION 'deployment % may not go from % to %', OLD.id, OLD.status, NEW.status\n        USING ERRCODE = 'ML081',\n              DETAIL = format('table=deployments from=%s to=%s', OLD.status, NEW.status);\nEND;\n$$",
)
DEPLOYMENTS_TARGET_IMMUTABLE_FUNCTION = function(
    "deployments_target_immutable()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'deployment % may not change its owner, version, registered model or alias',\n            OLD.id\n        USING ERRCODE = 'ML082';\nEND;\n$$",
)
MODEL_VERSIONS_IS_DEPLOYED_FUNCTION = function(
    "model_versions_is_deployed()", MODEL_VERSIONS_IS_DEPLOYED
)
MODEL_VERSIONS_IS_DEPLOYED_TRIGGER = trigger(
    "model_versions_is_deployed",
    "model_versions",
    "AFTER DELETE ON public.model_versions REFERENCING OLD TABLE AS old_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION public.model_versions_is_deployed()",
)
MODEL_ALIASES_IS_DEPLOYED_TRIGGER = trigger(
    "model_aliases_is_deployed",
    "model_aliases",
    "AFTER INSERT OR DELETE OR UPDATE OF model_version_id ON public.model_aliases FOR EACH ROW\nEXECUTE FUNCTION public.model_aliases_is_deployed()",
)
MODELS_GUARD_IS_DEPLOYED_INSERT_TRIGGER = trigger(
    "models_guard_is_deployed_insert",
    "models",
    "BEFORE INSERT ON public.models FOR EACH ROW\nWHEN (NEW.is_deployed)\nEXECUTE FUNCTION public.models_guard_is_deployed()",
)
MODELS_GUARD_IS_DEPLOYED_UPDATE_TRIGGER = trigger(
    "models_guard_is_deployed_update",
    "models",
    "BEFORE UPDATE OF is_deployed ON public.models FOR EACH ROW\nWHEN (pg_trigger_depth() = 0 AND NEW.is_deployed IS DISTINCT FROM OLD.is_deployed)\nEXECUTE FUNCTION public.models_guard_is_deployed()",
)
DEPLOYMENTS_DEPLOYMENTS_IS_DEPLOYED_TRIGGER = trigger(
    "deployments_is_deployed", "deployments", DEPLOYMENTS_IS_DEPLOYED_TRIGGER
)
DEPLOYMENTS_DEPLOYMENTS_STATUS_TRANSITION_TRIGGER = trigger(
    "deployments_status_transition", "deployments", DEPLOYMENTS_STATUS_TRANSITION_TRIGGER
)
DEPLOYMENTS_DEPLOYMENTS_TARGET_IMMUTABLE_TRIGGER = trigger(
    "deployments_target_immutable", "deployments", DEPLOYMENTS_TARGET_IMMUTABLE_TRIGGER
)
DEPLOYMENTS_SET_UPDATED_AT_TRIGGER = trigger(
    "set_updated_at", "deployments", SET_UPDATED_AT_TRIGGER
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.execute("ALTER TYPE job_kind ADD VALUE IF NOT EXISTS 'batch_prediction'")
    create(
        function(
            "models_refresh_deployed(p_model_ids uuid[])",
            "returns void\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    PERFORM 1 FROM public.models AS m WHERE m.id = ANY (p_model_ids) ORDER BY m.id FOR UPDATE;\n    UPDATE public.models AS m\n       SET is_deployed = c.deployed\n      FROM (SELECT ids.id,\n                   EXISTS (\n                       SELECT 1\n                         FROM public.model_versions AS v\n                         JOIN public.deployments AS d\n                           ON d.status = 'active'\n                          AND (d.model_version_id = v.id\n                               OR EXISTS (SELECT 1 FROM public.model_aliases AS a\n                                           WHERE a.registered_model_id = d.registered_model_id\n                                             AND a.alias = d.alias\n                                             AND a.model_version_id = v.id))\n                        WHERE v.model_id = ids.id) AS deployed\n              FROM (SELECT DISTINCT unnest(p_model_ids) AS id) AS ids\n             WHERE ids.id IS NOT NULL) AS c\n     WHERE m.id = c.id AND m.is_deployed IS DISTINCT FROM c.deployed;\nEND;\n$$",
        ),
        DEPLOYMENT_MODEL_ID_FUNCTION,
        function(
            "deployments_is_deployed()",
            "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_ids uuid[] := ARRAY[]::uuid[];\n    v_rm uuid;\n    v_alias text;\nBEGIN\n    IF TG_OP = 'DELETE' THEN\n        v_rm := OLD.registered_model_id; v_alias := OLD.alias;\n    ELSE\n        v_rm := NEW.registered_model_id; v_alias := NEW.alias;\n    END IF;\n    IF v_rm IS NOT NULL THEN\n        PERFORM 1 FROM public.model_aliases AS a\n         WHERE a.registered_model_id = v_rm AND a.alias = v_alias FOR SHARE;\n    END IF;\n    IF TG_OP IN ('UPDATE', 'DELETE') THEN\n        v_ids := v_ids || public.deployment_model_id(OLD.model_version_id,\n                                                     OLD.registered_model_id, OLD.alias);\n    END IF;\n    IF TG_OP IN ('INSERT', 'UPDATE') THEN\n        v_ids := v_ids || public.deployment_model_id(NEW.model_version_id,\n                                                     NEW.registered_model_id, NEW.alias);\n    END IF;\n    PERFORM public.models_refresh_deployed(v_ids);\n    RETURN NULL;\nEND;\n$$",
        ),
        MODEL_ALIASES_IS_DEPLOYED_FUNCTION,
        MODELS_GUARD_IS_DEPLOYED_FUNCTION,
        DEPLOYMENTS_STATUS_TRANSITION_FUNCTION,
        DEPLOYMENTS_TARGET_IMMUTABLE_FUNCTION,
        MODEL_VERSIONS_IS_DEPLOYED_FUNCTION,
        MODEL_VERSIONS_IS_DEPLOYED_TRIGGER,
        MODEL_ALIASES_IS_DEPLOYED_TRIGGER,
        MODELS_GUARD_IS_DEPLOYED_INSERT_TRIGGER,
        MODELS_GUARD_IS_DEPLOYED_UPDATE_TRIGGER,
    )

    op.create_table(
        "deployments",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("model_version_id", sa.UUID(), nullable=True),
        sa.Column("registered_model_id", sa.UUID(), nullable=True),
        sa.Column("alias", sa.Text(), nullable=True),
        sa.Column(
            "status",
            sa.Enum("pending", "active", "stopped", "failed", name="deployment_status"),
            server_default="pending",
            nullable=False,
        ),
        sa.Column(
            "config",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.Column("error_message", sa.Text(), nullable=True),
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
            "alias IS NULL OR alias ~ '^[a-z][a-z0-9_-]{0,62}$'",
            name=op.f("ck_deployments_alias_name"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(config) = 'object' AND (config - 'max_batch_rows' - 'timeout_ms') = '{}'::jsonb AND CASE WHEN NOT config ? 'max_batch_rows' THEN true WHEN jsonb_typeof((config->'max_batch_rows')) <> 'number' THEN false ELSE (config->'max_batch_rows')::numeric BETWEEN 1 AND 100000 AND trunc((config->'max_batch_rows')::numeric) = (config->'max_batch_rows')::numeric END AND CASE WHEN NOT config ? 'timeout_ms' THEN true WHEN jsonb_typeof((config->'timeout_ms')) <> 'number' THEN false ELSE (config->'timeout_ms')::numeric BETWEEN 1 AND 600000 AND trunc((config->'timeout_ms')::numeric) = (config->'timeout_ms')::numeric END",
            name=op.f("ck_deployments_config_shape"),
        ),
        sa.CheckConstraint(
            "(model_version_id IS NOT NULL AND registered_model_id IS NULL AND alias IS NULL) OR (model_version_id IS NULL AND registered_model_id IS NOT NULL AND alias IS NOT NULL)",
            name=op.f("ck_deployments_one_target"),
        ),
        sa.CheckConstraint(
            "char_length(name) BETWEEN 1 AND 200", name=op.f("ck_deployments_name_length")
        ),
        sa.CheckConstraint(
            "error_message IS NULL OR char_length(error_message) <= 2000",
            name=op.f("ck_deployments_error_message_length"),
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_deployments_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["registered_model_id"],
            ["registered_models.id"],
            name="fk_deployments_registered_model_id_registered_models",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_deployments_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deployments")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_deployments_user_id_name")),
    )
    op.create_index(
        "ix_deployments_model_version_id", "deployments", ["model_version_id"], unique=False
    )
    op.create_index(
        "ix_deployments_registered_model_id_alias",
        "deployments",
        ["registered_model_id", "alias"],
        unique=False,
    )

    # Triggers on the new table, by hand, after it.
    create(
        DEPLOYMENTS_DEPLOYMENTS_IS_DEPLOYED_TRIGGER,
        DEPLOYMENTS_DEPLOYMENTS_STATUS_TRANSITION_TRIGGER,
        DEPLOYMENTS_DEPLOYMENTS_TARGET_IMMUTABLE_TRIGGER,
        DEPLOYMENTS_SET_UPDATED_AT_TRIGGER,
    )
    revoke_execute_from_public(
        "public.models_refresh_deployed(uuid[])", "public.deployment_model_id(uuid, uuid, text)"
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # Triggers first: drop_entity fails once their table is gone.
    drop(
        DEPLOYMENTS_SET_UPDATED_AT_TRIGGER,
        DEPLOYMENTS_DEPLOYMENTS_TARGET_IMMUTABLE_TRIGGER,
        DEPLOYMENTS_DEPLOYMENTS_STATUS_TRANSITION_TRIGGER,
        DEPLOYMENTS_DEPLOYMENTS_IS_DEPLOYED_TRIGGER,
    )
    op.drop_index("ix_deployments_registered_model_id_alias", table_name="deployments")
    op.drop_index("ix_deployments_model_version_id", table_name="deployments")
    op.drop_table("deployments")
    sa.Enum(name="deployment_status").drop(op.get_bind())
    drop(
        MODELS_GUARD_IS_DEPLOYED_UPDATE_TRIGGER,
        MODEL_VERSIONS_IS_DEPLOYED_TRIGGER,
        MODEL_VERSIONS_IS_DEPLOYED_FUNCTION,
        MODELS_GUARD_IS_DEPLOYED_INSERT_TRIGGER,
        MODEL_ALIASES_IS_DEPLOYED_TRIGGER,
        DEPLOYMENTS_TARGET_IMMUTABLE_FUNCTION,
        DEPLOYMENTS_STATUS_TRANSITION_FUNCTION,
        MODELS_GUARD_IS_DEPLOYED_FUNCTION,
        MODEL_ALIASES_IS_DEPLOYED_FUNCTION,
        function(
            "deployments_is_deployed()",
            "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_ids uuid[] := ARRAY[]::uuid[];\nBEGIN\n    IF TG_OP IN ('UPDATE', 'DELETE') THEN\n        v_ids := v_ids || public.deployment_model_id(OLD.model_version_id,\n                                                     OLD.registered_model_id, OLD.alias);\n    END IF;\n    IF TG_OP IN ('INSERT', 'UPDATE') THEN\n        v_ids := v_ids || public.deployment_model_id(NEW.model_version_id,\n                                                     NEW.registered_model_id, NEW.alias);\n    END IF;\n    PERFORM public.models_refresh_deployed(v_ids);\n    RETURN NULL;\nEND;\n$$",
        ),
        DEPLOYMENT_MODEL_ID_FUNCTION,
        function(
            "models_refresh_deployed(p_model_ids uuid[])",
            "returns void\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    UPDATE public.models AS m\n       SET is_deployed = c.deployed\n      FROM (SELECT ids.id,\n                   EXISTS (\n                       SELECT 1\n                         FROM public.model_versions AS v\n                         JOIN public.deployments AS d\n                           ON d.status = 'active'\n                          AND (d.model_version_id = v.id\n                               OR EXISTS (SELECT 1 FROM public.model_aliases AS a\n                                           WHERE a.registered_model_id = d.registered_model_id\n                                             AND a.alias = d.alias\n                                             AND a.model_version_id = v.id))\n                        WHERE v.model_id = ids.id) AS deployed\n              FROM (SELECT DISTINCT unnest(p_model_ids) AS id) AS ids\n             WHERE ids.id IS NOT NULL) AS c\n     WHERE m.id = c.id AND m.is_deployed IS DISTINCT FROM c.deployed;\nEND;\n$$",
        ),
    )
