"""identity: sessions, roles, permissions, abuse limits

Issue 17, the identity half. ``users`` gains ``password_hash`` (argon2id, checked by
``ck_users_password_hash_argon2id``), ``password_changed_at``, ``role`` (enum
``user_role``), ``is_active`` and the permissions ``can_upload``, ``can_train``,
``can_deploy``, ``can_download``, ``can_buy`` (all true by default); tables
``user_sessions``, ``email_verifications`` and ``rate_limits``; the functions of
``sql/triggers/identity.sql`` (``identity_check_actor()`` ML100-ML102,
``users_privileges_guard()``, ``admin_set_tier()``, ``admin_credit_adjust()``,
``user_sessions_guard()`` ML103; EXECUTE revoked from PUBLIC, by hand) and the
triggers ``users_privileges_guard`` and ``user_sessions_guard``, written by hand after
their columns and tables and dropped before them.

Revision ID: c17a00000001
Revises: c13d00000001
Create Date: 2026-12-07 07:33:40.173493+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from database.migrations import create, drop, function, revoke_execute_from_public, trigger

revision: str = "c17a00000001"
down_revision: str | Sequence[str] | None = "c13d00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


FUNCTIONS = (
    "public.identity_check_actor(uuid, text)",
    "public.users_privileges_guard()",
    "public.admin_set_tier(uuid, user_tier)",
    "public.admin_credit_adjust(uuid, integer, text, text)",
    "public.user_sessions_guard()",
)

USERS_PRIVILEGES_GUARD = trigger(
    "users_privileges_guard",
    "users",
    "BEFORE UPDATE OF role, is_active, can_upload, can_train, can_deploy,"
    " can_download, can_buy, tier ON users\nFOR EACH ROW\n"
    "WHEN (OLD.role IS DISTINCT FROM NEW.role OR OLD.is_active IS DISTINCT FROM NEW.is_active\n"
    "      OR OLD.can_upload IS DISTINCT FROM NEW.can_upload"
    " OR OLD.can_train IS DISTINCT FROM NEW.can_train\n"
    "      OR OLD.can_deploy IS DISTINCT FROM NEW.can_deploy"
    " OR OLD.can_download IS DISTINCT FROM NEW.can_download\n"
    "      OR OLD.can_buy IS DISTINCT FROM NEW.can_buy OR OLD.tier IS DISTINCT FROM NEW.tier)\n"
    "EXECUTE FUNCTION public.users_privileges_guard()",
)

USER_SESSIONS_GUARD = trigger(
    "user_sessions_guard",
    "user_sessions",
    "BEFORE UPDATE ON user_sessions\nFOR EACH ROW\nEXECUTE FUNCTION public.user_sessions_guard()",
)


IDENTITY_CHECK_ACTOR_FUNCTION = function(
    "identity_check_actor(p_target uuid, p_what text)",
    "returns void\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_setting text := nullif(current_setting('automl.actor_user_id', true), '');\n    v_actor uuid;\nBEGIN\n    IF v_setting IS NULL THEN\n        IF pg_has_role(current_user,\n                       (SELECT c.relowner FROM pg_catalog.pg_class AS c\n                         WHERE c.oid = 'public.users'::regclass), 'USAGE')\n           OR has_function_privilege(current_user,\n                                     'public.credit_adjust(uuid, integer, text, text, text)',\n                                     'EXECUTE') THEN\n            RETURN;\n        END IF;\n        RAISE EXCEPTION '% of user % refused\\: no actor is set', p_what, p_target\n            USING ERRCODE = 'ML102',\n                  HINT = 'the apps set automl.actor_user_id (database.audit.set_actor) to an admin';\n    END IF;\n    BEGIN\n        v_actor := v_setting::uuid;\n    EXCEPTION WHEN invalid_text_representation THEN\n        RAISE EXCEPTION '% of user % refused\\: the actor % is not a user id', p_what, p_target, v_setting\n            USING ERRCODE = 'ML102';\n    END;\n    IF v_actor = p_target THEN\n        RAISE EXCEPTION 'user % may not make % of their own account', p_target, p_what\n            USING ERRCODE = 'ML100',\n                  HINT = 'another admin makes it (or an operator\\: automl-db users)';\n    END IF;\n    IF NOT EXISTS (SELECT 1 FROM public.users AS u\n                    WHERE u.id = v_actor AND u.role = 'admin' AND u.is_active\n                      AND NOT u.is_deleted) THEN\n        RAISE EXCEPTION '% of user % refused\\: user % is not an active admin', p_what, p_target, v_actor\n            USING ERRCODE = 'ML101';\n    END IF;\nEND;\n$$",
)
USERS_PRIVILEGES_GUARD_FUNCTION = function(
    "users_privileges_guard()",
    "returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    PERFORM public.identity_check_actor(OLD.id, 'a change of role, permissions, activity or tier');\n    RETURN NEW;\nEND;\n$$",
)
ADMIN_SET_TIER_FUNCTION = function(
    "admin_set_tier(p_user_id uuid, p_tier user_tier)",
    "returns boolean\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF nullif(current_setting('automl.actor_user_id', true), '') IS NULL THEN\n        RAISE EXCEPTION 'a change of tier of user % refused\\: no actor is set', p_user_id\n            USING ERRCODE = 'ML102';\n    END IF;\n    UPDATE public.users SET tier = p_tier WHERE id = p_user_id;\n    RETURN FOUND;\nEND;\n$$",
)
ADMIN_CREDIT_ADJUST_FUNCTION = function(
    "admin_credit_adjust(p_user_id uuid, p_amount integer, p_reason text, p_idempotency_key text)",
    "returns SETOF public.credit_transactions\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_actor text := nullif(current_setting('automl.actor_user_id', true), '');\nBEGIN\n    IF v_actor IS NULL THEN\n        RAISE EXCEPTION 'a credit adjustment of user % refused\\: no actor is set', p_user_id\n            USING ERRCODE = 'ML102';\n    END IF;\n    PERFORM public.identity_check_actor(p_user_id, 'a credit adjustment');\n    RETURN QUERY\n        INSERT INTO public.credit_transactions (user_id, type, amount, description, actor, idempotency_key)\n        VALUES (p_user_id, 'adjustment', p_amount, p_reason, 'admin\\:' || v_actor, p_idempotency_key)\n        RETURNING *;\nEND;\n$$",
)
USER_SESSIONS_GUARD_FUNCTION = function(
    "user_sessions_guard()",
    "returns trigger\nLANGUAGE plpgsql\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    IF NEW.user_id <> OLD.user_id OR NEW.token_hash <> OLD.token_hash\n       OR NEW.created_at <> OLD.created_at\n       OR (OLD.revoked_at IS NOT NULL AND NEW.revoked_at IS DISTINCT FROM OLD.revoked_at)\n       OR NEW.expires_at > OLD.expires_at THEN\n        RAISE EXCEPTION 'session % may not change its owner, token or creation, be revoked again or un-revoked, or live longer', OLD.id\n            USING ERRCODE = 'ML103',\n                  HINT = 'log in again for a new session';\n    END IF;\n    RETURN NEW;\nEND;\n$$",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # ### commands auto generated by Alembic - please adjust! ###
    create(
        IDENTITY_CHECK_ACTOR_FUNCTION,
        USERS_PRIVILEGES_GUARD_FUNCTION,
        ADMIN_SET_TIER_FUNCTION,
        ADMIN_CREDIT_ADJUST_FUNCTION,
        USER_SESSIONS_GUARD_FUNCTION,
    )

    op.create_table(
        "rate_limits",
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("window_started_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("blocked_until", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.CheckConstraint("char_length(key) <= 400", name=op.f("ck_rate_limits_key_length")),
        sa.CheckConstraint("count >= 0", name=op.f("ck_rate_limits_count_nonnegative")),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_limits")),
    )
    op.create_index(
        "ix_rate_limits_window_started_at", "rate_limits", ["window_started_at"], unique=False
    )
    op.create_table(
        "email_verifications",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("email", sa.Text(), nullable=False),
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("used_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "token_hash ~ '^[0-9a-f]{64}$'",
            name=op.f("ck_email_verifications_token_hash_is_sha256_hex"),
        ),
        sa.CheckConstraint(
            "expires_at > created_at", name=op.f("ck_email_verifications_expires_after_created")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_email_verifications_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_email_verifications")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_email_verifications_token_hash")),
    )
    op.create_index(
        "ix_email_verifications_user_id", "email_verifications", ["user_id"], unique=False
    )
    op.create_table(
        "user_sessions",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("token_hash", sa.Text(), nullable=False),
        sa.Column("user_agent", sa.Text(), nullable=True),
        sa.Column("ip", postgresql.INET(), nullable=True),
        sa.Column(
            "last_seen_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.TIMESTAMP(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "token_hash ~ '^[0-9a-f]{64}$'", name=op.f("ck_user_sessions_token_hash_is_sha256_hex")
        ),
        sa.CheckConstraint(
            "expires_at > created_at", name=op.f("ck_user_sessions_expires_after_created")
        ),
        sa.CheckConstraint(
            "user_agent IS NULL OR char_length(user_agent) <= 500",
            name=op.f("ck_user_sessions_user_agent_length"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_user_sessions_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_user_sessions_token_hash")),
    )
    op.create_index(
        "ix_user_sessions_user_id_created_at",
        "user_sessions",
        ["user_id", "created_at"],
        unique=False,
    )
    user_role = postgresql.ENUM("user", "admin", name="user_role")
    user_role.create(op.get_bind())
    op.add_column("users", sa.Column("password_hash", sa.Text(), nullable=True))
    op.add_column(
        "users", sa.Column("password_changed_at", sa.TIMESTAMP(timezone=True), nullable=True)
    )
    op.add_column(
        "users",
        sa.Column(
            "role",
            postgresql.ENUM("user", "admin", name="user_role", create_type=False),
            server_default="user",
            nullable=False,
        ),
    )
    op.add_column(
        "users",
        sa.Column("is_active", sa.Boolean(), server_default=sa.text("true"), nullable=False),
    )
    op.add_column(
        "users",
        sa.Column("can_upload", sa.Boolean(), server_default=sa.text("true"), nullable=False),
    )
    op.add_column(
        "users",
        sa.Column("can_train", sa.Boolean(), server_default=sa.text("true"), nullable=False),
    )
    op.add_column(
        "users",
        sa.Column("can_deploy", sa.Boolean(), server_default=sa.text("true"), nullable=False),
    )
    op.add_column(
        "users",
        sa.Column("can_download", sa.Boolean(), server_default=sa.text("true"), nullable=False),
    )
    op.add_column(
        "users", sa.Column("can_buy", sa.Boolean(), server_default=sa.text("true"), nullable=False)
    )
    op.create_check_constraint(
        op.f("ck_users_password_hash_argon2id"),
        "users",
        "password_hash IS NULL OR password_hash LIKE '$argon2id$%'",
    )
    create(
        USERS_PRIVILEGES_GUARD,
        USER_SESSIONS_GUARD,
    )
    revoke_execute_from_public(*FUNCTIONS)
    # ### end Alembic commands ###


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    drop(
        USER_SESSIONS_GUARD,
        USERS_PRIVILEGES_GUARD,
    )
    op.drop_constraint(op.f("ck_users_password_hash_argon2id"), "users", type_="check")
    # ### commands auto generated by Alembic - please adjust! ###
    op.drop_column("users", "can_buy")
    op.drop_column("users", "can_download")
    op.drop_column("users", "can_deploy")
    op.drop_column("users", "can_train")
    op.drop_column("users", "can_upload")
    op.drop_column("users", "is_active")
    op.drop_column("users", "role")
    op.drop_column("users", "password_changed_at")
    op.drop_column("users", "password_hash")
    op.drop_index("ix_user_sessions_user_id_created_at", table_name="user_sessions")
    op.drop_table("user_sessions")
    op.drop_index("ix_email_verifications_user_id", table_name="email_verifications")
    op.drop_table("email_verifications")
    op.drop_index("ix_rate_limits_window_started_at", table_name="rate_limits")
    op.drop_table("rate_limits")
    drop(
        USER_SESSIONS_GUARD_FUNCTION,
        ADMIN_CREDIT_ADJUST_FUNCTION,
        ADMIN_SET_TIER_FUNCTION,
        USERS_PRIVILEGES_GUARD_FUNCTION,
        IDENTITY_CHECK_ACTOR_FUNCTION,
    )

    sa.Enum(name="user_role").drop(op.get_bind(), checkfirst=False)
    # ### end Alembic commands ###
