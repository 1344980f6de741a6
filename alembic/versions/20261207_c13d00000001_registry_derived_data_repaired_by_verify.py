"""registry derived data repaired by verify

Issue 13 (regops): ``automl-db verify --repair`` repairs the registry's derived
columns through the same logged path as the users' counters. ``derived_repairs``
gains ``table_name`` (``users`` by default: the rows already there) and ``row_id``
(the corrected row, NULL for a user's own columns) with their two checks (written by
hand); ``model_versions_download_count_guard()`` lets a write under the repair flag
through and logs it; new ``registry_repair_derived(uuid)`` (sql/triggers/repair.sql),
EXECUTE revoked from PUBLIC; ``model_lineage_no_cycle()`` walks up by a LATERAL
index lookup per step with enable_seqscan off (a bulk load of edges was planned as a
full scan per step). The columns come before the functions that write them and go
after them in the downgrade.

Revision ID: c13d00000001
Revises: c13c00000001
Create Date: 2026-12-07 07:32:28.942574+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op
from database.migrations import function, replace, revoke_execute_from_public

revision: str = "c13d00000001"
down_revision: str | Sequence[str] | None = "c13c00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


REGISTRY_REPAIR_DERIVED_FUNCTION = function(
    "registry_repair_derived(p_user_id uuid)",
    "returns TABLE (table_name text, row_id uuid, column_name text, old_value bigint,\n               new_value bigint)\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nBEGIN\n    PERFORM 1 FROM public.registered_models AS r\n     WHERE r.user_id = p_user_id ORDER BY r.id FOR NO KEY UPDATE;\n    PERFORM 1 FROM public.model_versions AS v\n     WHERE v.user_id = p_user_id ORDER BY v.id FOR NO KEY UPDATE;\n\n    PERFORM set_config('automl.repair', 'on', true);\n    RETURN QUERY\n    WITH counted AS (\n        SELECT v.id AS rid, v.download_count AS was,\n               (SELECT count(*) FROM public.model_downloads AS d\n                 WHERE d.model_version_id = v.id AND d.granted) AS fixed\n          FROM public.model_versions AS v\n         WHERE v.user_id = p_user_id\n    ), corrected AS (\n        UPDATE public.model_versions AS v\n           SET download_count = c.fixed\n          FROM counted AS c\n         WHERE v.id = c.rid AND c.was <> c.fixed\n        RETURNING v.id AS rid, c.was, c.fixed\n    )\n    SELECT 'model_versions'::text, f.rid, 'download_count'::text, f.was, f.fixed\n      FROM corrected AS f ORDER BY f.rid;\n    PERFORM set_config('automl.repair', 'off', true);\n\n    RETURN QUERY\n    WITH highest AS (\n        SELECT r.id AS rid, r.last_version_number::bigint AS was,\n               max(v.version)::bigint AS fixed\n          FROM public.registered_models AS r\n          JOIN public.model_versions AS v ON v.registered_model_id = r.id\n         WHERE r.user_id = p_user_id\n         GROUP BY r.id, r.last_version_number\n    ), raised AS (\n        UPDATE public.registered_models AS r\n           SET last_version_number = h.fixed\n          FROM highest AS h\n         WHERE r.id = h.rid AND h.was < h.fixed\n        RETURNING r.id AS rid, h.was, h.fixed\n    ), logged AS (\n        INSERT INTO public.derived_repairs\n               (user_id, table_name, row_id, column_name, old_value, new_value)\n        SELECT p_user_id, 'registered_models', x.rid, 'last_version_number', x.was, x.fixed\n          FROM raised AS x\n    )\n    SELECT 'registered_models'::text, x.rid, 'last_version_number'::text, x.was, x.fixed\n      FROM raised AS x ORDER BY x.rid;\nEND;\n$$",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column(
        "derived_repairs",
        sa.Column("table_name", sa.Text(), server_default=sa.text("'users'"), nullable=False),
    )
    op.add_column("derived_repairs", sa.Column("row_id", sa.UUID(), nullable=True))
    op.create_check_constraint(
        "table_name_known",
        "derived_repairs",
        "table_name IN ('users', 'model_versions', 'registered_models')",
    )
    op.create_check_constraint(
        "row_id_unless_users", "derived_repairs", "(table_name = 'users') = (row_id IS NULL)"
    )
    op.replace_entity(
        function(
            "model_versions_download_count_guard()",
            "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    IF current_setting('automl.repair', true) = 'on' THEN\n        INSERT INTO public.derived_repairs\n               (user_id, table_name, row_id, column_name, old_value, new_value)\n        VALUES (NEW.user_id, 'model_versions', NEW.id, 'download_count',\n                OLD.download_count, NEW.download_count);\n        RETURN NEW;\n    END IF;\n    RAISE EXCEPTION 'model_versions.download_count is kept by the database (% to %)',\n            OLD.download_count, NEW.download_count\n        USING ERRCODE = 'ML063',\n              HINT = 'record a download in model_downloads';\nEND;\n$$",
        )
    )

    op.create_entity(REGISTRY_REPAIR_DERIVED_FUNCTION)
    # The cycle check: one index lookup per step of the walk (bulk loads were quadratic).
    op.replace_entity(
        function(
            "model_lineage_no_cycle()",
            "returns trigger\nLANGUAGE plpgsql\nSET enable_seqscan = off\nAS $$\nBEGIN\n    PERFORM pg_advisory_xact_lock(7305065);\n    IF EXISTS (\n        WITH RECURSIVE up(id) AS (\n            SELECT NEW.parent_version_id\n            UNION\n            SELECT p.parent_version_id\n              FROM up, LATERAL (SELECT l.parent_version_id FROM public.model_lineage AS l\n                                 WHERE l.child_version_id = up.id\n                                   AND l.parent_version_id IS NOT NULL\n                                OFFSET 0) AS p\n        )\n        SELECT 1 FROM up WHERE up.id = NEW.child_version_id\n    ) THEN\n        RAISE EXCEPTION 'model version % descends from model version % already\\: the edge would make a cycle',\n                NEW.parent_version_id, NEW.child_version_id\n            USING ERRCODE = 'ML065';\n    END IF;\n    RETURN NEW;\nEND;\n$$",
        )
    )
    # Only the schema owner repairs (automl-db grant revokes EXECUTE on every function).
    revoke_execute_from_public("public.registry_repair_derived(uuid)")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_entity(REGISTRY_REPAIR_DERIVED_FUNCTION)

    replace(
        function(
            "model_versions_download_count_guard()",
            "returns trigger\n LANGUAGE plpgsql\nAS $function$\nBEGIN\n    RAISE EXCEPTION 'model_versions.download_count is kept by the database (% to %)',\n            OLD.download_count, NEW.download_count\n        USING ERRCODE = 'ML063',\n              HINT = 'record a download in model_downloads';\nEND;\n$function$",
        ),
        function(
            "model_lineage_no_cycle()",
            "returns trigger\n LANGUAGE plpgsql\nAS $function$\nBEGIN\n    PERFORM pg_advisory_xact_lock(7305065);\n    IF EXISTS (\n        WITH RECURSIVE up(id) AS (\n            SELECT NEW.parent_version_id\n            UNION\n            SELECT l.parent_version_id\n              FROM public.model_lineage AS l JOIN up ON l.child_version_id = up.id\n             WHERE l.parent_version_id IS NOT NULL\n        )\n        SELECT 1 FROM up WHERE up.id = NEW.child_version_id\n    ) THEN\n        RAISE EXCEPTION 'model version % descends from model version % already\\: the edge would make a cycle',\n                NEW.parent_version_id, NEW.child_version_id\n            USING ERRCODE = 'ML065';\n    END IF;\n    RETURN NEW;\nEND;\n$function$",
        ),
    )
    op.drop_constraint("row_id_unless_users", "derived_repairs", type_="check")
    op.drop_constraint("table_name_known", "derived_repairs", type_="check")
    op.drop_column("derived_repairs", "row_id")
    op.drop_column("derived_repairs", "table_name")
