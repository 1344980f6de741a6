"""serving: the admission's hold id, batch outputs in the storage quota

Issue 14's gaps (serving, [serving.md](../../docs/serving.md)):

- new ``public.usage_hold()`` (``sql/triggers/metering.sql``): the admission of a
  prediction (the key's quotas, the credit hold; ML087-ML089, as before) returning
  the hold's id, so a request's record releases exactly its own hold;
  ``usage_admit()`` becomes a call of it. EXECUTE on the new function revoked from
  PUBLIC (by hand; the apps' role gets it from ``database.grants``);
- table ``batch_outputs`` (a batch prediction's Parquet file: user, job, location,
  size) and its triggers (``sql/triggers/storage.sql``): ``storage_used_bytes``
  follows it through ``users_adjust_model_storage()``, its size is written once
  (``storage_size_read_only()``, ML022); written after the table, dropped before
  it; ``users_repair_derived()`` counts it.

The downgrade drops the triggers, the table, restores the two functions' bodies and
drops ``usage_hold()``.

Revision ID: c14c00000001
Revises: c17c00000001
Create Date: 2026-12-07 10:48:50.125292+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from database.migrations import create, drop, function, replace, revoke_execute_from_public, trigger

revision: str = "c14c00000001"
down_revision: str | Sequence[str] | None = "c17c00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


USAGE_HOLD_FUNCTION = function(
    "usage_hold(p_user uuid, p_key uuid, p_deployment uuid, p_rows bigint, p_amount bigint, p_request_id text, p_hold_seconds integer)",
    "returns uuid\nLANGUAGE plpgsql\nAS $$\nDECLARE\n    v_now timestamptz := now();\n    v_rl integer;\n    v_mq bigint;\n    v_start timestamptz;\n    v_available bigint;\n    v_hold uuid;\nBEGIN\n    IF p_key IS NOT NULL THEN\n        SELECT k.rate_limit_per_minute, k.monthly_row_quota INTO v_rl, v_mq\n          FROM public.api_keys AS k WHERE k.id = p_key;\n        IF v_rl IS NOT NULL THEN\n            v_start := date_trunc('minute', v_now);\n            INSERT INTO public.api_key_usage_windows AS w (api_key_id, period, window_start, used)\n            VALUES (p_key, 'minute', v_start, 1)\n            ON CONFLICT (api_key_id, period, window_start) DO UPDATE SET used = w.used + 1\n             WHERE w.used + 1 <= v_rl;\n            IF NOT FOUND THEN\n                RAISE EXCEPTION 'API key rate limit of % requests per minute reached', v_rl\n                    USING ERRCODE = 'ML088',\n                          DETAIL = format('quota=rate_limit_per_minute limit=%s retry_after=%s', v_rl,\n                                          ceil(extract(epoch FROM v_start + interval '1 minute' - v_now))::int);\n            END IF;\n        END IF;\n        IF v_mq IS NOT NULL AND p_rows > 0 THEN\n            v_start := date_trunc('month', v_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';\n            IF p_rows <= v_mq THEN\n                INSERT INTO public.api_key_usage_windows AS w (api_key_id, period, window_start, used)\n                VALUES (p_key, 'month', v_start, p_rows)\n                ON CONFLICT (api_key_id, period, window_start) DO UPDATE SET used = w.used + p_rows\n                 WHERE w.used + p_rows <= v_mq;\n            END IF;\n            IF p_rows > v_mq OR NOT FOUND THEN\n                RAISE EXCEPTION 'API key monthly quota of % rows reached (this request\\: % rows)', v_mq, p_rows\n                    USING ERRCODE = 'ML088',\n                          DETAIL = format('quota=monthly_row_quota limit=%s retry_after=%s', v_mq,\n                                          ceil(extract(epoch FROM\n                                               ((v_start AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'\n                                               - v_now))::int);\n            END IF;\n        END IF;\n    END IF;\n    IF p_amount <= 0 THEN\n        RETURN NULL;\n    END IF;\n    -- A hold need not survive a crash of the server (it only stands for a request in\n    -- flight)\\: its commit does not wait for the WAL flush.\n    PERFORM set_config('synchronous_commit', 'off', true);\n    PERFORM 1 FROM public.users AS u WHERE u.id = p_user FOR NO KEY UPDATE;\n    IF NOT FOUND THEN\n        RAISE EXCEPTION 'user % does not exist', p_user USING ERRCODE = 'ML089';\n    END IF;\n    INSERT INTO public.usage_holds (user_id, deployment_id, rows, amount_micro, request_id, expires_at)\n    SELECT p_user, p_deployment, p_rows, p_amount, p_request_id,\n           v_now + make_interval(secs => p_hold_seconds)\n      FROM public.users AS u\n     WHERE u.id = p_user\n       AND u.credit_balance::bigint * 1000000\n           - coalesce((SELECT m.pending_micro FROM public.usage_meters AS m\n                        WHERE m.user_id = p_user), 0)\n           - coalesce((SELECT sum(h.amount_micro) FROM public.usage_holds AS h\n                        WHERE h.user_id = p_user AND h.expires_at > v_now), 0)\n           >= p_amount\n    RETURNING id INTO v_hold;\n    IF NOT FOUND THEN\n        SELECT u.credit_balance::bigint * 1000000\n               - coalesce((SELECT m.pending_micro FROM public.usage_meters AS m\n                            WHERE m.user_id = p_user), 0)\n               - coalesce((SELECT sum(h.amount_micro) FROM public.usage_holds AS h\n                            WHERE h.user_id = p_user AND h.expires_at > v_now), 0)\n          INTO v_available\n          FROM public.users AS u WHERE u.id = p_user;\n        RAISE EXCEPTION 'insufficient credits for % rows\\: they cost % micro-credits, % available',\n                p_rows, p_amount, greatest(v_available, 0)\n            USING ERRCODE = 'ML087',\n                  DETAIL = format('needed=%s available=%s', p_amount, v_available);\n    END IF;\n    RETURN v_hold;\nEND;\n$$",
)
USERS_ADJUST_BATCH_OUTPUT_STORAGE_INSERT_TRIGGER = trigger(
    "users_adjust_batch_output_storage_insert",
    "batch_outputs",
    "AFTER INSERT ON public.batch_outputs REFERENCING NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_model_storage()",
)
USERS_ADJUST_BATCH_OUTPUT_STORAGE_DELETE_TRIGGER = trigger(
    "users_adjust_batch_output_storage_delete",
    "batch_outputs",
    "AFTER DELETE ON public.batch_outputs REFERENCING OLD TABLE AS old_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_model_storage()",
)
USERS_ADJUST_BATCH_OUTPUT_STORAGE_UPDATE_TRIGGER = trigger(
    "users_adjust_batch_output_storage_update",
    "batch_outputs",
    "AFTER UPDATE ON public.batch_outputs REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows\nFOR EACH STATEMENT EXECUTE FUNCTION public.users_adjust_model_storage()",
)
BATCH_OUTPUTS_SIZE_READ_ONLY_TRIGGER = trigger(
    "batch_outputs_size_read_only",
    "batch_outputs",
    "BEFORE UPDATE OF size_bytes ON public.batch_outputs FOR EACH ROW\nWHEN (NEW.size_bytes IS DISTINCT FROM OLD.size_bytes)\nEXECUTE FUNCTION public.storage_size_read_only()",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # ### commands auto generated by Alembic - please adjust! ###
    op.create_entity(USAGE_HOLD_FUNCTION)
    revoke_execute_from_public("public.usage_hold(uuid, uuid, uuid, bigint, bigint, text, integer)")

    replace(
        function(
            "usage_admit(p_user uuid, p_key uuid, p_deployment uuid, p_rows bigint, p_amount bigint, p_request_id text, p_hold_seconds integer)",
            "returns void\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    PERFORM public.usage_hold(p_user, p_key, p_deployment, p_rows, p_amount, p_request_id,\n                              p_hold_seconds);\nEND;\n$$",
        ),
        function(
            "users_repair_derived(p_user_id uuid)",
            "returns TABLE (column_name text, old_value bigint, new_value bigint)\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_old record;\n    v_datasets bigint;\n    v_workflows bigint;\n    v_models bigint;\n    v_storage bigint;\nBEGIN\n    -- The lock the counter triggers take\\: a concurrent insert either committed its\n    -- delta before this point (and its row is counted below, each statement taking\n    -- a new snapshot) or applies it after this transaction, on top of the repair.\n    SELECT u.dataset_count, u.workflow_count, u.model_count, u.storage_used_bytes\n      INTO v_old\n      FROM public.users AS u\n     WHERE u.id = p_user_id\n       FOR NO KEY UPDATE;\n    IF NOT FOUND THEN\n        RAISE EXCEPTION 'user % does not exist', p_user_id USING ERRCODE = 'no_data_found';\n    END IF;\n\n    SELECT count(*) INTO v_datasets FROM public.datasets AS d WHERE d.user_id = p_user_id;\n    SELECT count(*) INTO v_workflows\n      FROM public.workflows AS w WHERE w.user_id = p_user_id AND NOT w.is_deleted;\n    SELECT count(*) INTO v_models FROM public.models AS m WHERE m.user_id = p_user_id;\n    SELECT coalesce(sum(coalesce(v.original_size_bytes, 0) + coalesce(v.parquet_size_bytes, 0)), 0)\n           + (SELECT coalesce(sum(coalesce(m.size_bytes, 0)), 0)\n                FROM public.models AS m WHERE m.user_id = p_user_id)\n           + (SELECT coalesce(sum(b.size_bytes), 0)\n                FROM public.batch_outputs AS b WHERE b.user_id = p_user_id)\n      INTO v_storage\n      FROM public.dataset_versions AS v WHERE v.user_id = p_user_id;\n\n    IF (v_old.dataset_count, v_old.workflow_count, v_old.model_count, v_old.storage_used_bytes)\n       = (v_datasets, v_workflows, v_models, v_storage) THEN\n        RETURN;\n    END IF;\n\n    PERFORM set_config('automl.repair', 'on', true);\n    UPDATE public.users AS u\n       SET dataset_count = v_datasets,\n           workflow_count = v_workflows,\n           model_count = v_models,\n           storage_used_bytes = v_storage\n     WHERE u.id = p_user_id;\n    PERFORM set_config('automl.repair', 'off', true);\n\n    RETURN QUERY\n    SELECT c.col, c.was, c.fixed\n      FROM (VALUES ('dataset_count', v_old.dataset_count::bigint, v_datasets),\n                   ('workflow_count', v_old.workflow_count::bigint, v_workflows),\n                   ('model_count', v_old.model_count::bigint, v_models),\n                   ('storage_used_bytes', v_old.storage_used_bytes, v_storage))\n           AS c(col, was, fixed)\n     WHERE c.was <> c.fixed;\nEND;\n$$",
        ),
    )

    op.create_table(
        "batch_outputs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("location", sa.Text(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "char_length(location) BETWEEN 1 AND 2000",
            name=op.f("ck_batch_outputs_location_length"),
        ),
        sa.CheckConstraint("size_bytes >= 0", name=op.f("ck_batch_outputs_size_nonnegative")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_batch_outputs_job_id_jobs"), ondelete="RESTRICT"
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_batch_outputs_user_id_users"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch_outputs")),
        sa.UniqueConstraint("job_id", name=op.f("uq_batch_outputs_job_id")),
    )
    op.create_index("ix_batch_outputs_user_id", "batch_outputs", ["user_id"], unique=False)
    # The table's storage triggers (sql/triggers/storage.sql), after the table.
    create(
        USERS_ADJUST_BATCH_OUTPUT_STORAGE_INSERT_TRIGGER,
        USERS_ADJUST_BATCH_OUTPUT_STORAGE_DELETE_TRIGGER,
        USERS_ADJUST_BATCH_OUTPUT_STORAGE_UPDATE_TRIGGER,
        BATCH_OUTPUTS_SIZE_READ_ONLY_TRIGGER,
    )

    # ### end Alembic commands ###


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # ### commands auto generated by Alembic - please adjust! ###
    # The table's triggers before the table.
    drop(
        BATCH_OUTPUTS_SIZE_READ_ONLY_TRIGGER,
        USERS_ADJUST_BATCH_OUTPUT_STORAGE_UPDATE_TRIGGER,
        USERS_ADJUST_BATCH_OUTPUT_STORAGE_DELETE_TRIGGER,
        USERS_ADJUST_BATCH_OUTPUT_STORAGE_INSERT_TRIGGER,
    )

    op.drop_index("ix_batch_outputs_user_id", table_name="batch_outputs")
    op.drop_table("batch_outputs")
    replace(
        function(
            "users_repair_derived(p_user_id uuid)",
            "returns TABLE(column_name text, old_value bigint, new_value bigint)\n LANGUAGE plpgsql\n SECURITY DEFINER\n SET search_path TO 'pg_catalog', 'public', 'pg_temp'\nAS $function$\nDECLARE\n    v_old record;\n    v_datasets bigint;\n    v_workflows bigint;\n    v_models bigint;\n    v_storage bigint;\nBEGIN\n    -- The lock the counter triggers take\\: a concurrent insert either committed its\n    -- delta before this point (and its row is counted below, each statement taking\n    -- a new snapshot) or applies it after this transaction, on top of the repair.\n    SELECT u.dataset_count, u.workflow_count, u.model_count, u.storage_used_bytes\n      INTO v_old\n      FROM public.users AS u\n     WHERE u.id = p_user_id\n       FOR NO KEY UPDATE;\n    IF NOT FOUND THEN\n        RAISE EXCEPTION 'user % does not exist', p_user_id USING ERRCODE = 'no_data_found';\n    END IF;\n\n    SELECT count(*) INTO v_datasets FROM public.datasets AS d WHERE d.user_id = p_user_id;\n    SELECT count(*) INTO v_workflows\n      FROM public.workflows AS w WHERE w.user_id = p_user_id AND NOT w.is_deleted;\n    SELECT count(*) INTO v_models FROM public.models AS m WHERE m.user_id = p_user_id;\n    SELECT coalesce(sum(coalesce(v.original_size_bytes, 0) + coalesce(v.parquet_size_bytes, 0)), 0)\n           + (SELECT coalesce(sum(coalesce(m.size_bytes, 0)), 0)\n                FROM public.models AS m WHERE m.user_id = p_user_id)\n      INTO v_storage\n      FROM public.dataset_versions AS v WHERE v.user_id = p_user_id;\n\n    IF (v_old.dataset_count, v_old.workflow_count, v_old.model_count, v_old.storage_used_bytes)\n       = (v_datasets, v_workflows, v_models, v_storage) THEN\n        RETURN;\n    END IF;\n\n    PERFORM set_config('automl.repair', 'on', true);\n    UPDATE public.users AS u\n       SET dataset_count = v_datasets,\n           workflow_count = v_workflows,\n           model_count = v_models,\n           storage_used_bytes = v_storage\n     WHERE u.id = p_user_id;\n    PERFORM set_config('automl.repair', 'off', true);\n\n    RETURN QUERY\n    SELECT c.col, c.was, c.fixed\n      FROM (VALUES ('dataset_count', v_old.dataset_count::bigint, v_datasets),\n                   ('workflow_count', v_old.workflow_count::bigint, v_workflows),\n                   ('model_count', v_old.model_count::bigint, v_models),\n                   ('storage_used_bytes', v_old.storage_used_bytes, v_storage))\n           AS c(col, was, fixed)\n     WHERE c.was <> c.fixed;\nEND;\n$function$",
        ),
        function(
            "usage_admit(p_user uuid, p_key uuid, p_deployment uuid, p_rows bigint, p_amount bigint, p_request_id text, p_hold_seconds integer)",
            "returns void\n LANGUAGE plpgsql\nAS $function$\nDECLARE\n    v_now timestamptz := now();\n    v_rl integer;\n    v_mq bigint;\n    v_start timestamptz;\n    v_available bigint;\nBEGIN\n    IF p_key IS NOT NULL THEN\n        SELECT k.rate_limit_per_minute, k.monthly_row_quota INTO v_rl, v_mq\n          FROM public.api_keys AS k WHERE k.id = p_key;\n        IF v_rl IS NOT NULL THEN\n            v_start := date_trunc('minute', v_now);\n            INSERT INTO public.api_key_usage_windows AS w (api_key_id, period, window_start, used)\n            VALUES (p_key, 'minute', v_start, 1)\n            ON CONFLICT (api_key_id, period, window_start) DO UPDATE SET used = w.used + 1\n             WHERE w.used + 1 <= v_rl;\n            IF NOT FOUND THEN\n                RAISE EXCEPTION 'API key rate limit of % requests per minute reached', v_rl\n                    USING ERRCODE = 'ML088',\n                          DETAIL = format('quota=rate_limit_per_minute limit=%s retry_after=%s', v_rl,\n                                          ceil(extract(epoch FROM v_start + interval '1 minute' - v_now))::int);\n            END IF;\n        END IF;\n        IF v_mq IS NOT NULL AND p_rows > 0 THEN\n            v_start := date_trunc('month', v_now AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';\n            IF p_rows <= v_mq THEN\n                INSERT INTO public.api_key_usage_windows AS w (api_key_id, period, window_start, used)\n                VALUES (p_key, 'month', v_start, p_rows)\n                ON CONFLICT (api_key_id, period, window_start) DO UPDATE SET used = w.used + p_rows\n                 WHERE w.used + p_rows <= v_mq;\n            END IF;\n            IF p_rows > v_mq OR NOT FOUND THEN\n                RAISE EXCEPTION 'API key monthly quota of % rows reached (this request\\: % rows)', v_mq, p_rows\n                    USING ERRCODE = 'ML088',\n                          DETAIL = format('quota=monthly_row_quota limit=%s retry_after=%s', v_mq,\n                                          ceil(extract(epoch FROM\n                                               ((v_start AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC'\n                                               - v_now))::int);\n            END IF;\n        END IF;\n    END IF;\n    IF p_amount <= 0 THEN\n        RETURN;\n    END IF;\n    -- A hold need not survive a crash of the server (it only stands for a request in\n    -- flight)\\: its commit does not wait for the WAL flush.\n    PERFORM set_config('synchronous_commit', 'off', true);\n    PERFORM 1 FROM public.users AS u WHERE u.id = p_user FOR NO KEY UPDATE;\n    IF NOT FOUND THEN\n        RAISE EXCEPTION 'user % does not exist', p_user USING ERRCODE = 'ML089';\n    END IF;\n    INSERT INTO public.usage_holds (user_id, deployment_id, rows, amount_micro, request_id, expires_at)\n    SELECT p_user, p_deployment, p_rows, p_amount, p_request_id,\n           v_now + make_interval(secs => p_hold_seconds)\n      FROM public.users AS u\n     WHERE u.id = p_user\n       AND u.credit_balance::bigint * 1000000\n           - coalesce((SELECT m.pending_micro FROM public.usage_meters AS m\n                        WHERE m.user_id = p_user), 0)\n           - coalesce((SELECT sum(h.amount_micro) FROM public.usage_holds AS h\n                        WHERE h.user_id = p_user AND h.expires_at > v_now), 0)\n           >= p_amount;\n    IF NOT FOUND THEN\n        SELECT u.credit_balance::bigint * 1000000\n               - coalesce((SELECT m.pending_micro FROM public.usage_meters AS m\n                            WHERE m.user_id = p_user), 0)\n               - coalesce((SELECT sum(h.amount_micro) FROM public.usage_holds AS h\n                            WHERE h.user_id = p_user AND h.expires_at > v_now), 0)\n          INTO v_available\n          FROM public.users AS u WHERE u.id = p_user;\n        RAISE EXCEPTION 'insufficient credits for % rows\\: they cost % micro-credits, % available',\n                p_rows, p_amount, greatest(v_available, 0)\n            USING ERRCODE = 'ML087',\n                  DETAIL = format('needed=%s available=%s', p_amount, v_available);\n    END IF;\nEND;\n$function$",
        ),
    )
    op.drop_entity(USAGE_HOLD_FUNCTION)

    # ### end Alembic commands ###
