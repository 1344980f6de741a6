"""audit trail

Issue 17, the audit half. Table ``audit_events`` (partitioned by month on
``occurred_at``; the migration makes this month, the next three and the DEFAULT
partition through ``audit_events_ensure_partitions``), enum ``audit_outcome``, the
functions and triggers of ``sql/triggers/audit.sql`` (ML105-ML107): append-only
refusals on the new table (written by hand after it, dropped with it), and the
audit triggers on ``api_keys``, ``users``, ``registered_model_permissions`` and
``registered_models`` (after the table they write to; dropped before it). The
downgrade drops all of it, the partitions with the table.

Revision ID: c17b00000001
Revises: c16a00000001
Create Date: 2026-12-07 07:50:46.610760+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from database.migrations import create, drop, function, trigger

revision: str = "c17b00000001"
down_revision: str | Sequence[str] | None = "c16a00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


AUDIT_SETTING_UUID_FUNCTION = function(
    "audit_setting_uuid(p_name text)",
    "returns uuid\nLANGUAGE plpgsql\nSTABLE\nAS $$\nDECLARE\n    v text := NULLIF(current_setting(p_name, true), '');\nBEGIN\n    IF v IS NULL THEN\n        RETURN NULL;\n    END IF;\n    IF v !~* '^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$' THEN\n        RAISE EXCEPTION 'the setting % is not a UUID', p_name\n            USING ERRCODE = 'ML106', DETAIL = format('setting=%s', p_name);\n    END IF;\n    RETURN v::uuid;\nEND;\n$$",
)
AUDIT_SETTING_INET_FUNCTION = function(
    "audit_setting_inet(p_name text)",
    "returns inet\nLANGUAGE plpgsql\nSTABLE\nAS $$\nDECLARE\n    v text := NULLIF(current_setting(p_name, true), '');\nBEGIN\n    IF v IS NULL THEN\n        RETURN NULL;\n    END IF;\n    IF v !~ '^[0-9A-Fa-f\\:.]{2,45}(/[0-9]{1,3})?$' THEN\n        RAISE EXCEPTION 'the setting % is not an IP address', p_name\n            USING ERRCODE = 'ML106', DETAIL = format('setting=%s', p_name);\n    END IF;\n    RETURN v::inet;\nEND;\n$$",
)
AUDIT_EVENTS_IMMUTABLE_FUNCTION = function(
    "audit_events_immutable()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    -- Not SECURITY DEFINER\\: current_user is the role whose statement this is (the\n    -- owner only inside the owner's own SECURITY DEFINER functions, or as itself).\n    IF TG_OP = 'UPDATE' THEN\n        IF current_setting('automl.audit_redact', true) = 'on'\n           AND pg_has_role(current_user,\n                           (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = TG_RELID),\n                           'MEMBER')\n           AND NEW.client_ip IS NULL AND NEW.user_agent IS NULL\n           AND (to_jsonb(NEW) - 'client_ip' - 'user_agent') = (to_jsonb(OLD) - 'client_ip' - 'user_agent')\n        THEN\n            RETURN NEW;\n        END IF;\n    ELSIF TG_OP = 'DELETE' THEN\n        IF current_setting('automl.audit_maintenance', true) = 'on'\n           AND TG_TABLE_NAME = 'audit_events_default'\n           AND pg_has_role(current_user,\n                           (SELECT c.relowner FROM pg_catalog.pg_class AS c WHERE c.oid = TG_RELID),\n                           'MEMBER')\n        THEN\n            RETURN OLD;\n        END IF;\n    END IF;\n    RAISE EXCEPTION 'audit_events is append-only\\: % is not allowed', TG_OP\n        USING ERRCODE = 'ML105',\n              HINT = 'old months leave by dropping whole partitions (automl-db clean --what audit)';\nEND;\n$$",
)
AUDIT_ROWS_FUNCTION = function(
    "audit_rows()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    -- TG_ARGV\\: entity_type, key column, subject column, action, detail columns...\n    IF TG_OP = 'INSERT' THEN\n        INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, detail)\n        SELECT TG_ARGV[3], TG_ARGV[0], (r.j ->> TG_ARGV[1])::uuid, (r.j ->> TG_ARGV[2])::uuid,\n               CASE WHEN octet_length(r.d::text) <= 2000 THEN r.d\n                    ELSE jsonb_build_object('truncated', true) END\n          FROM (SELECT n.j, coalesce((SELECT jsonb_object_agg(c, n.j -> c)\n                                        FROM unnest(TG_ARGV[4\\:]) AS c), '{}'::jsonb) AS d\n                  FROM (SELECT to_jsonb(x) AS j FROM new_rows AS x) AS n) AS r;\n    ELSE\n        INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, detail)\n        SELECT TG_ARGV[3], TG_ARGV[0], (r.j ->> TG_ARGV[1])::uuid, (r.j ->> TG_ARGV[2])::uuid,\n               CASE WHEN octet_length(r.d::text) <= 2000 THEN r.d\n                    ELSE jsonb_build_object('truncated', true) END\n          FROM (SELECT o.j, coalesce((SELECT jsonb_object_agg(c, o.j -> c)\n                                        FROM unnest(TG_ARGV[4\\:]) AS c), '{}'::jsonb) AS d\n                  FROM (SELECT to_jsonb(x) AS j FROM old_rows AS x) AS o) AS r;\n    END IF;\n    RETURN NULL;\nEND;\n$$",
)
AUDIT_CHANGES_FUNCTION = function(
    "audit_changes()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_old jsonb := to_jsonb(OLD);\n    v_new jsonb := to_jsonb(NEW);\n    v_spec text;\n    v_col text;\n    v_hide boolean;\n    v_actions text[];\n    v_detail jsonb;\nBEGIN\n    -- TG_ARGV\\: entity_type, key column, subject column, specs ('[~]column=action[/action]')\n    FOREACH v_spec IN ARRAY TG_ARGV[3\\:] LOOP\n        v_hide := starts_with(v_spec, '~');\n        IF v_hide THEN\n            v_spec := substr(v_spec, 2);\n        END IF;\n        v_col := split_part(v_spec, '=', 1);\n        CONTINUE WHEN (v_old -> v_col) IS NOT DISTINCT FROM (v_new -> v_col);\n        v_actions := string_to_array(split_part(v_spec, '=', 2), '/');\n        v_detail := CASE WHEN v_hide THEN jsonb_build_object('column', v_col)\n                         ELSE jsonb_build_object('column', v_col, 'old', v_old -> v_col,\n                                                 'new', v_new -> v_col) END;\n        IF octet_length(v_detail::text) > 2000 THEN\n            v_detail := jsonb_build_object('column', v_col, 'truncated', true);\n        END IF;\n        INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, detail)\n        VALUES (CASE WHEN cardinality(v_actions) > 1\n                          AND (v_new -> v_col) IN ('null'::jsonb, 'false'::jsonb)\n                     THEN v_actions[2] ELSE v_actions[1] END,\n                TG_ARGV[0], (v_new ->> TG_ARGV[1])::uuid, (v_new ->> TG_ARGV[2])::uuid, v_detail);\n    END LOOP;\n    RETURN NULL;\nEND;\n$$",
)
AUDIT_RECORD_FUNCTION = function(
    "audit_record(p_action text, p_entity_type text, p_entity_id uuid, p_outcome text, p_detail jsonb, p_subject_user_id uuid)",
    "returns uuid\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_id uuid;\nBEGIN\n    INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, outcome, detail)\n    VALUES (p_action, p_entity_type, p_entity_id, p_subject_user_id,\n            coalesce(p_outcome, 'success')::public.audit_outcome, coalesce(p_detail, '{}'::jsonb))\n    RETURNING id INTO v_id;\n    RETURN v_id;\nEND;\n$$",
)
AUDIT_REDACT_USER_FUNCTION = function(
    "audit_redact_user(p_user_id uuid)",
    "returns bigint\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_count bigint;\nBEGIN\n    IF NOT EXISTS (SELECT 1 FROM public.users AS u\n                    WHERE u.id = p_user_id AND u.purged_at IS NOT NULL) THEN\n        RAISE EXCEPTION 'user % is not purged\\: the audit trail keeps their IP and user agent',\n                p_user_id\n            USING ERRCODE = 'ML107';\n    END IF;\n    PERFORM set_config('automl.audit_redact', 'on', true);\n    UPDATE public.audit_events AS e\n       SET client_ip = NULL, user_agent = NULL\n     WHERE e.actor_user_id = p_user_id\n       AND (e.client_ip IS NOT NULL OR e.user_agent IS NOT NULL);\n    GET DIAGNOSTICS v_count = ROW_COUNT;\n    PERFORM set_config('automl.audit_redact', 'off', true);\n    RETURN v_count;\nEND;\n$$",
)
AUDIT_EVENTS_ENSURE_PARTITIONS_FUNCTION = function(
    "audit_events_ensure_partitions(p_at timestamptz, p_months_ahead integer)",
    "returns integer\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_month timestamp := date_trunc('month', p_at AT TIME ZONE 'UTC');\n    v_lo text;\n    v_hi text;\n    v_name text;\n    v_created integer := 0;\nBEGIN\n    IF p_months_ahead IS NULL OR p_months_ahead < 0 OR p_months_ahead > 120 THEN\n        RAISE EXCEPTION 'months ahead must be between 0 and 120, not %', p_months_ahead\n            USING ERRCODE = 'invalid_parameter_value';\n    END IF;\n    -- Nothing to do (the common case)\\: no lock, no DDL.\n    IF to_regclass('public.audit_events_default') IS NOT NULL AND NOT EXISTS (\n        SELECT 1 FROM generate_series(0, p_months_ahead) AS i\n         WHERE to_regclass('public.audit_events_p'\n                           || to_char(v_month + make_interval(months => i), 'YYYYMM')) IS NULL\n    ) THEN\n        RETURN 0;\n    END IF;\n    -- Self-conflicting but not in the way of INSERTs; taking a relation lock also\n    -- reads the catalog changes of the caller that held it before (an advisory lock\n    -- would not\\: to_regclass could miss the partition it just made).\n    LOCK TABLE public.audit_events IN SHARE UPDATE EXCLUSIVE MODE;\n    IF to_regclass('public.audit_events_default') IS NULL THEN\n        CREATE TABLE public.audit_events_default PARTITION OF public.audit_events DEFAULT;\n        CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON public.audit_events_default\n            FOR EACH STATEMENT EXECUTE FUNCTION public.audit_events_immutable();\n        v_created := v_created + 1;\n    END IF;\n    FOR i IN 0 .. p_months_ahead LOOP\n        v_name := 'audit_events_p' || to_char(v_month + make_interval(months => i), 'YYYYMM');\n        CONTINUE WHEN to_regclass('public.' || v_name) IS NOT NULL;\n        v_lo := to_char(v_month + make_interval(months => i), 'YYYY-MM-DD') || ' 00\\:00\\:00+00';\n        v_hi := to_char(v_month + make_interval(months => i + 1), 'YYYY-MM-DD') || ' 00\\:00\\:00+00';\n        IF EXISTS (SELECT 1 FROM public.audit_events_default AS d\n                    WHERE d.occurred_at >= v_lo::timestamptz AND d.occurred_at < v_hi::timestamptz) THEN\n            EXECUTE format('CREATE TABLE public.%I (LIKE public.audit_events INCLUDING DEFAULTS'\n                           ' INCLUDING CONSTRAINTS)', v_name);\n            PERFORM set_config('automl.audit_maintenance', 'on', true);\n            EXECUTE format('WITH moved AS (DELETE FROM public.audit_events_default AS d'\n                           ' WHERE d.occurred_at >= %L AND d.occurred_at < %L RETURNING d.*)'\n                           ' INSERT INTO public.%I SELECT * FROM moved', v_lo, v_hi, v_name);\n            PERFORM set_config('automl.audit_maintenance', 'off', true);\n            EXECUTE format('ALTER TABLE public.audit_events ATTACH PARTITION public.%I'\n                           ' FOR VALUES FROM (%L) TO (%L)', v_name, v_lo, v_hi);\n        ELSE\n            EXECUTE format('CREATE TABLE public.%I PARTITION OF public.audit_events'\n                           ' FOR VALUES FROM (%L) TO (%L)', v_name, v_lo, v_hi);\n        END IF;\n        EXECUTE format('CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON public.%I'\n                       ' FOR EACH STATEMENT EXECUTE FUNCTION public.audit_events_immutable()',\n                       v_name);\n        v_created := v_created + 1;\n    END LOOP;\n    RETURN v_created;\nEND;\n$$",
)
API_KEYS_AUDIT_INSERT_TRIGGER = trigger(
    "api_keys_audit_insert",
    "api_keys",
    "AFTER INSERT ON public.api_keys REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.audit_rows('api_key', 'id', 'user_id', 'api_key.created', 'name', 'prefix', 'scopes', 'expires_at')",
)
API_KEYS_AUDIT_UPDATE_TRIGGER = trigger(
    "api_keys_audit_update",
    "api_keys",
    "AFTER UPDATE ON public.api_keys FOR EACH ROW\nWHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at OR OLD.scopes IS DISTINCT FROM NEW.scopes OR OLD.expires_at IS DISTINCT FROM NEW.expires_at)\nEXECUTE FUNCTION public.audit_changes('api_key', 'id', 'user_id', 'revoked_at=api_key.revoked/api_key.unrevoked', 'scopes=api_key.scopes_changed', 'expires_at=api_key.expiry_changed')",
)
API_KEYS_AUDIT_DELETE_TRIGGER = trigger(
    "api_keys_audit_delete",
    "api_keys",
    "AFTER DELETE ON public.api_keys REFERENCING OLD TABLE AS old_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.audit_rows('api_key', 'id', 'user_id', 'api_key.deleted', 'name', 'prefix')",
)
USERS_AUDIT_INSERT_TRIGGER = trigger(
    "users_audit_insert",
    "users",
    "AFTER INSERT ON public.users REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.audit_rows('user', 'id', 'id', 'user.created')",
)
USERS_AUDIT_UPDATE_TRIGGER = trigger(
    "users_audit_update",
    "users",
    "AFTER UPDATE ON public.users FOR EACH ROW\nWHEN (OLD.is_deleted IS DISTINCT FROM NEW.is_deleted OR OLD.tier IS DISTINCT FROM NEW.tier OR OLD.email IS DISTINCT FROM NEW.email OR OLD.role IS DISTINCT FROM NEW.role OR OLD.is_active IS DISTINCT FROM NEW.is_active OR OLD.can_upload IS DISTINCT FROM NEW.can_upload OR OLD.can_train IS DISTINCT FROM NEW.can_train OR OLD.can_deploy IS DISTINCT FROM NEW.can_deploy OR OLD.can_download IS DISTINCT FROM NEW.can_download OR OLD.can_buy IS DISTINCT FROM NEW.can_buy)\nEXECUTE FUNCTION public.audit_changes('user', 'id', 'id', 'is_deleted=user.deleted/user.restored', 'tier=user.tier_changed', '~email=user.email_changed', 'role=user.role_changed', 'is_active=user.activated/user.deactivated', 'can_upload=user.permission_changed', 'can_train=user.permission_changed', 'can_deploy=user.permission_changed', 'can_download=user.permission_changed', 'can_buy=user.permission_changed')",
)
REGISTERED_MODEL_PERMISSIONS_AUDIT_INSERT_TRIGGER = trigger(
    "registered_model_permissions_audit_insert",
    "registered_model_permissions",
    "AFTER INSERT ON public.registered_model_permissions REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.audit_rows('registered_model', 'registered_model_id', 'user_id', 'permission.granted', 'user_id', 'permission', 'granted_by')",
)
REGISTERED_MODEL_PERMISSIONS_AUDIT_UPDATE_TRIGGER = trigger(
    "registered_model_permissions_audit_update",
    "registered_model_permissions",
    "AFTER UPDATE ON public.registered_model_permissions FOR EACH ROW\nWHEN (OLD.permission IS DISTINCT FROM NEW.permission)\nEXECUTE FUNCTION public.audit_changes('registered_model', 'registered_model_id', 'user_id', 'permission=permission.changed')",
)
REGISTERED_MODEL_PERMISSIONS_AUDIT_DELETE_TRIGGER = trigger(
    "registered_model_permissions_audit_delete",
    "registered_model_permissions",
    "AFTER DELETE ON public.registered_model_permissions REFERENCING OLD TABLE AS old_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.audit_rows('registered_model', 'registered_model_id', 'user_id', 'permission.revoked', 'user_id', 'permission')",
)
REGISTERED_MODELS_AUDIT_UPDATE_TRIGGER = trigger(
    "registered_models_audit_update",
    "registered_models",
    "AFTER UPDATE ON public.registered_models FOR EACH ROW\nWHEN (OLD.visibility IS DISTINCT FROM NEW.visibility)\nEXECUTE FUNCTION public.audit_changes('registered_model', 'id', 'user_id', 'visibility=registered_model.visibility_changed')",
)
REGISTERED_MODELS_AUDIT_DELETE_TRIGGER = trigger(
    "registered_models_audit_delete",
    "registered_models",
    "AFTER DELETE ON public.registered_models REFERENCING OLD TABLE AS old_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.audit_rows('registered_model', 'id', 'user_id', 'registered_model.deleted', 'name')",
)
USER_SESSIONS_AUDIT_INSERT_TRIGGER = trigger(
    "user_sessions_audit_insert",
    "user_sessions",
    "AFTER INSERT ON public.user_sessions REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.audit_rows('session', 'id', 'user_id', 'session.created')",
)
USER_SESSIONS_AUDIT_UPDATE_TRIGGER = trigger(
    "user_sessions_audit_update",
    "user_sessions",
    "AFTER UPDATE ON public.user_sessions FOR EACH ROW\nWHEN (OLD.revoked_at IS DISTINCT FROM NEW.revoked_at)\nEXECUTE FUNCTION public.audit_changes('session', 'id', 'user_id', 'revoked_at=session.revoked/session.unrevoked')",
)
DEPLOYMENTS_AUDIT_INSERT_TRIGGER = trigger(
    "deployments_audit_insert",
    "deployments",
    "AFTER INSERT ON public.deployments REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.audit_rows('deployment', 'id', 'user_id', 'deployment.created', 'name')",
)
DEPLOYMENTS_AUDIT_UPDATE_TRIGGER = trigger(
    "deployments_audit_update",
    "deployments",
    "AFTER UPDATE ON public.deployments FOR EACH ROW\nWHEN (OLD.status IS DISTINCT FROM NEW.status)\nEXECUTE FUNCTION public.audit_changes('deployment', 'id', 'user_id', 'status=deployment.status_changed')",
)
DEPLOYMENTS_AUDIT_DELETE_TRIGGER = trigger(
    "deployments_audit_delete",
    "deployments",
    "AFTER DELETE ON public.deployments REFERENCING OLD TABLE AS old_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.audit_rows('deployment', 'id', 'user_id', 'deployment.deleted', 'name')",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    create(
        AUDIT_SETTING_UUID_FUNCTION,
        AUDIT_SETTING_INET_FUNCTION,
        AUDIT_EVENTS_IMMUTABLE_FUNCTION,
        AUDIT_ROWS_FUNCTION,
        AUDIT_CHANGES_FUNCTION,
        AUDIT_RECORD_FUNCTION,
        AUDIT_REDACT_USER_FUNCTION,
        AUDIT_EVENTS_ENSURE_PARTITIONS_FUNCTION,
    )

    op.create_table(
        "audit_events",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column(
            "occurred_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("clock_timestamp()"),
            nullable=False,
        ),
        sa.Column(
            "actor_user_id",
            sa.UUID(),
            server_default=sa.text("audit_setting_uuid('automl.actor_user_id')"),
            nullable=True,
        ),
        sa.Column(
            "actor_api_key_id",
            sa.UUID(),
            server_default=sa.text("audit_setting_uuid('automl.actor_api_key_id')"),
            nullable=True,
        ),
        sa.Column(
            "actor_session_id",
            sa.UUID(),
            server_default=sa.text("audit_setting_uuid('automl.actor_session_id')"),
            nullable=True,
        ),
        sa.Column(
            "request_id",
            sa.Text(),
            server_default=sa.text(
                "left(NULLIF(current_setting('automl.request_id', true), ''), 200)"
            ),
            nullable=True,
        ),
        sa.Column(
            "client_ip",
            postgresql.INET(),
            server_default=sa.text("audit_setting_inet('automl.client_ip')"),
            nullable=True,
        ),
        sa.Column(
            "user_agent",
            sa.Text(),
            server_default=sa.text(
                "left(NULLIF(current_setting('automl.user_agent', true), ''), 512)"
            ),
            nullable=True,
        ),
        sa.Column("db_role", sa.Text(), server_default=sa.text("SESSION_USER"), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("entity_type", sa.Text(), nullable=False),
        sa.Column("entity_id", sa.UUID(), nullable=True),
        sa.Column("subject_user_id", sa.UUID(), nullable=True),
        sa.Column(
            "outcome",
            sa.Enum("success", "denied", "failed", name="audit_outcome"),
            server_default="success",
            nullable=False,
        ),
        sa.Column(
            "detail",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "char_length(action) <= 100 AND action ~ '^[a-z][a-z_]*(\\.[a-z][a-z_]*)+$'",
            name=op.f("ck_audit_events_action_format"),
        ),
        sa.CheckConstraint(
            "entity_type ~ '^[a-z][a-z_]*$' AND char_length(entity_type) <= 50",
            name=op.f("ck_audit_events_entity_type_format"),
        ),
        sa.CheckConstraint(
            "jsonb_typeof(detail) = 'object' AND octet_length(detail::text) <= 4096",
            name=op.f("ck_audit_events_detail_small_object"),
        ),
        sa.CheckConstraint(
            "request_id IS NULL OR char_length(request_id) <= 200",
            name=op.f("ck_audit_events_request_id_length"),
        ),
        sa.CheckConstraint(
            "user_agent IS NULL OR char_length(user_agent) <= 512",
            name=op.f("ck_audit_events_user_agent_length"),
        ),
        sa.PrimaryKeyConstraint("id", "occurred_at", name=op.f("pk_audit_events")),
        postgresql_partition_by="RANGE (occurred_at)",
    )
    op.create_index(
        "ix_audit_events_actor_user_id_occurred_at",
        "audit_events",
        ["actor_user_id", "occurred_at"],
        unique=False,
    )
    op.create_index("ix_audit_events_occurred_at", "audit_events", ["occurred_at"], unique=False)
    op.create_index(
        "ix_audit_events_subject_user_id_occurred_at",
        "audit_events",
        ["subject_user_id", "occurred_at"],
        unique=False,
    )
    # The append-only refusals, on the new table (alembic-utils cannot compare a
    # trigger on a table that does not exist yet, so these are written by hand).
    create(
        trigger(
            "audit_events_no_update_delete",
            "audit_events",
            "BEFORE UPDATE OR DELETE ON audit_events\nFOR EACH ROW EXECUTE FUNCTION public.audit_events_immutable()",
        ),
        trigger(
            "audit_events_no_truncate",
            "audit_events",
            "BEFORE TRUNCATE ON audit_events\nFOR EACH STATEMENT EXECUTE FUNCTION public.audit_events_immutable()",
        ),
    )

    # This month and the next three, and the DEFAULT partition; the workers make the
    # later ones (database.audit.ensure_partitions).
    op.execute("SELECT public.audit_events_ensure_partitions(now(), 3)")

    create(
        API_KEYS_AUDIT_INSERT_TRIGGER,
        API_KEYS_AUDIT_UPDATE_TRIGGER,
        API_KEYS_AUDIT_DELETE_TRIGGER,
        USERS_AUDIT_INSERT_TRIGGER,
        USERS_AUDIT_UPDATE_TRIGGER,
        REGISTERED_MODEL_PERMISSIONS_AUDIT_INSERT_TRIGGER,
        REGISTERED_MODEL_PERMISSIONS_AUDIT_UPDATE_TRIGGER,
        REGISTERED_MODEL_PERMISSIONS_AUDIT_DELETE_TRIGGER,
        REGISTERED_MODELS_AUDIT_UPDATE_TRIGGER,
        REGISTERED_MODELS_AUDIT_DELETE_TRIGGER,
    )

    # The tables of identity (sessions) and serving (deployments).
    create(
        USER_SESSIONS_AUDIT_INSERT_TRIGGER,
        USER_SESSIONS_AUDIT_UPDATE_TRIGGER,
        DEPLOYMENTS_AUDIT_INSERT_TRIGGER,
        DEPLOYMENTS_AUDIT_UPDATE_TRIGGER,
        DEPLOYMENTS_AUDIT_DELETE_TRIGGER,
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    drop(
        DEPLOYMENTS_AUDIT_DELETE_TRIGGER,
        DEPLOYMENTS_AUDIT_UPDATE_TRIGGER,
        DEPLOYMENTS_AUDIT_INSERT_TRIGGER,
        USER_SESSIONS_AUDIT_UPDATE_TRIGGER,
        USER_SESSIONS_AUDIT_INSERT_TRIGGER,
        REGISTERED_MODELS_AUDIT_DELETE_TRIGGER,
        REGISTERED_MODELS_AUDIT_UPDATE_TRIGGER,
        REGISTERED_MODEL_PERMISSIONS_AUDIT_DELETE_TRIGGER,
        REGISTERED_MODEL_PERMISSIONS_AUDIT_UPDATE_TRIGGER,
        REGISTERED_MODEL_PERMISSIONS_AUDIT_INSERT_TRIGGER,
        USERS_AUDIT_UPDATE_TRIGGER,
        USERS_AUDIT_INSERT_TRIGGER,
        API_KEYS_AUDIT_DELETE_TRIGGER,
        API_KEYS_AUDIT_UPDATE_TRIGGER,
        API_KEYS_AUDIT_INSERT_TRIGGER,
    )

    # The partitions and their triggers go with the table.
    op.drop_index("ix_audit_events_subject_user_id_occurred_at", table_name="audit_events")
    op.drop_index("ix_audit_events_occurred_at", table_name="audit_events")
    op.drop_index("ix_audit_events_actor_user_id_occurred_at", table_name="audit_events")
    op.drop_table("audit_events")
    sa.Enum(name="audit_outcome").drop(op.get_bind())
    drop(
        AUDIT_EVENTS_ENSURE_PARTITIONS_FUNCTION,
        AUDIT_REDACT_USER_FUNCTION,
        AUDIT_RECORD_FUNCTION,
        AUDIT_CHANGES_FUNCTION,
        AUDIT_ROWS_FUNCTION,
        AUDIT_EVENTS_IMMUTABLE_FUNCTION,
        AUDIT_SETTING_INET_FUNCTION,
        AUDIT_SETTING_UUID_FUNCTION,
    )
