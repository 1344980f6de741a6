"""audit: the audit row's expressions (issue 17's last gap, POST /v1/api-keys)

``audit_row_inserted()`` (the row-level INSERT audit trigger: a key's creation, a
sign-up, a grant) gives the actor's columns from ONE split of ``automl.actor``, read
in its INSERT's own subquery (``OFFSET 0``), through the same inlined functions as
the columns' defaults (``audit_actor_field_of``, ``audit_actor_uuid_of``,
``audit_actor_inet_of``: the format and ML106 stay in one place), instead of the
defaults splitting the setting once per field; and it builds the detail in an
``IF`` branch per number of columns instead of one ``CASE`` (PL/pgSQL compiles an
expression again in every transaction, and a ``CASE`` compiles all its branches).
Valgrind's instruction count of a key's creation (single-user server, the trigger's
and the insert's work): the audit row's share from about 454,000 to 315,000
instructions (docs/performance.md, "What c17f00000001 changed"). No rule changes;
no new function, so no grant.

Revision ID: c17f00000001
Revises: c16f00000001
Create Date: 2026-12-07 20:00:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op
from database.migrations import function, replace

revision: str = "c17f00000001"
down_revision: str | Sequence[str] | None = "c16f00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_AUDIT_ROW_INSERTED = function(
    "audit_row_inserted()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_row jsonb := to_jsonb(NEW);\n    v_detail jsonb;\n    v_col text;\nBEGIN\n    -- TG_ARGV: entity_type, key column, subject column, action, detail columns...\n    -- One row, no transition table: the key's creation, a sign-up, a grant. The\n    -- hot path of a write (POST /v1/api-keys). Most of a row's cost is setting up\n    -- expressions (each call is a new transaction: every expression is compiled\n    -- again), so: the detail in one expression per number of columns, each in its\n    -- own branch (a CASE would compile every branch; IF compiles the one taken),\n    -- its size read without printing it.\n    IF TG_NARGS = 8 THEN\n        v_detail := jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4], TG_ARGV[5], v_row -> TG_ARGV[5],\n                                       TG_ARGV[6], v_row -> TG_ARGV[6], TG_ARGV[7], v_row -> TG_ARGV[7]);\n    ELSIF TG_NARGS = 4 THEN\n        v_detail := '{}'::jsonb;\n    ELSIF TG_NARGS = 5 THEN\n        v_detail := jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4]);\n    ELSIF TG_NARGS = 7 THEN\n        v_detail := jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4], TG_ARGV[5], v_row -> TG_ARGV[5],\n                                       TG_ARGV[6], v_row -> TG_ARGV[6]);\n    ELSE\n        v_detail := '{}'::jsonb;\n        FOREACH v_col IN ARRAY TG_ARGV[4:] LOOP\n            v_detail := v_detail || jsonb_build_object(v_col, v_row -> v_col);\n        END LOOP;\n    END IF;\n    IF pg_column_size(v_detail) > 2000 THEN\n        v_detail := jsonb_build_object('truncated', true);\n    END IF;\n    -- The actor's columns from ONE split of the setting (the columns' defaults split\n    -- it once per field: a fifth of the row's work), through the same functions as\n    -- the defaults (audit_actor_field_of, the one place of the format, and the _of\n    -- checks, the one place of ML106). The setting is read in the statement, in a\n    -- subquery kept apart (OFFSET 0, so it is split once): a value the planner\n    -- cannot fold, so a malformed field raises ML106 when the row is written, never\n    -- while a plan is made.\n    INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, detail,\n                                     actor_user_id, actor_api_key_id, actor_session_id,\n                                     request_id, client_ip, user_agent)\n    SELECT TG_ARGV[3], TG_ARGV[0], (v_row ->> TG_ARGV[1])::uuid, (v_row ->> TG_ARGV[2])::uuid,\n           v_detail,\n           public.audit_actor_uuid_of(public.audit_actor_field_of(a.f, 1), 1),\n           public.audit_actor_uuid_of(public.audit_actor_field_of(a.f, 2), 2),\n           public.audit_actor_uuid_of(public.audit_actor_field_of(a.f, 3), 3),\n           left(public.audit_actor_field_of(a.f, 4), 200),\n           public.audit_actor_inet_of(public.audit_actor_field_of(a.f, 5), 5),\n           left(public.audit_actor_field_of(a.f, 6), 512)\n      FROM (SELECT string_to_array(current_setting('automl.actor', true), ' ') AS f OFFSET 0) AS a;\n    RETURN NULL;\nEND;\n$$",
)

OLD_AUDIT_ROW_INSERTED = function(
    "audit_row_inserted()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_row jsonb := to_jsonb(NEW);\n    v_detail jsonb;\n    v_col text;\nBEGIN\n    -- TG_ARGV: entity_type, key column, subject column, action, detail columns...\n    -- One row, no transition table: the key's creation, a sign-up, a grant. The\n    -- hot path of a write (POST /v1/api-keys), so few statements: the detail in one\n    -- expression for up to four columns (every trigger below; a loop beyond), its\n    -- size read without printing it.\n    v_detail := CASE TG_NARGS\n        WHEN 4 THEN '{}'::jsonb\n        WHEN 5 THEN jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4])\n        WHEN 6 THEN jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4],\n                                       TG_ARGV[5], v_row -> TG_ARGV[5])\n        WHEN 7 THEN jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4],\n                                       TG_ARGV[5], v_row -> TG_ARGV[5],\n                                       TG_ARGV[6], v_row -> TG_ARGV[6])\n        WHEN 8 THEN jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4],\n                                       TG_ARGV[5], v_row -> TG_ARGV[5],\n                                       TG_ARGV[6], v_row -> TG_ARGV[6],\n                                       TG_ARGV[7], v_row -> TG_ARGV[7])\n        END;\n    IF v_detail IS NULL THEN\n        v_detail := '{}'::jsonb;\n        FOREACH v_col IN ARRAY TG_ARGV[4:] LOOP\n            v_detail := v_detail || jsonb_build_object(v_col, v_row -> v_col);\n        END LOOP;\n    END IF;\n    IF pg_column_size(v_detail) > 2000 THEN\n        v_detail := jsonb_build_object('truncated', true);\n    END IF;\n    -- The actor's columns are their defaults' (the setting read in the statement: a\n    -- value the planner cannot fold, so a malformed field raises ML106 when the row\n    -- is written, never while a plan is made).\n    INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, detail)\n    VALUES (TG_ARGV[3], TG_ARGV[0], (v_row ->> TG_ARGV[1])::uuid, (v_row ->> TG_ARGV[2])::uuid,\n            v_detail);\n    RETURN NULL;\nEND;\n$$",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    replace(NEW_AUDIT_ROW_INSERTED)


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    replace(OLD_AUDIT_ROW_INSERTED)
