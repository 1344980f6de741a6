"""audit: the audit row's cost (issue 17's last gap, POST /v1/api-keys)

``audit_row_inserted()`` (the row-level INSERT audit trigger: a key's creation, a
sign-up, a grant) builds the detail in one expression (up to four columns) and reads
its size without printing it. The actor columns' defaults read the setting split
into fields (the user agent joined from the split instead of a regular expression)
through the new inlined SQL functions ``audit_actor_field_of()``,
``audit_actor_uuid_of()`` and ``audit_actor_inet_of()`` (the one place of the
actor's format and of ML106; ``audit_actor_field()``, ``audit_actor_uuid()`` and
``audit_actor_inet()`` become calls of them). ``audit_events`` loses its five CHECK constraints (each cost
every audit row's INSERT its parse and set-up, about a fifth of the row); their
rules hold where rows are made: ``audit_record()`` refuses a malformed action,
entity type or detail (ML108), the triggers' are constants, the actor's text is cut
where it is read. EXECUTE on ``audit_actor_field_of(text[], integer)`` goes to the
apps' role and operators: in this migration, to every role that may EXECUTE
``audit_actor_field(integer)``, and by ``database.grants`` on a fresh database.
The downgrade restores the checks (validated) and the bodies.

Revision ID: c17e00000001
Revises: c16d00000001
Create Date: 2026-12-07 16:30:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op
from database.migrations import create, drop, function, grant_execute_like, replace

revision: str = "c17e00000001"
down_revision: str | Sequence[str] | None = "c16d00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

#: audit_events' checks before this revision: (name without ck_audit_events_, condition).
CHECKS = (
    (
        "action_format",
        "char_length(action) <= 100 AND action ~ '^[a-z][a-z_]*(\\.[a-z][a-z_]*)+$'",
    ),
    (
        "entity_type_format",
        "entity_type ~ '^[a-z][a-z_]*$' AND char_length(entity_type) <= 50",
    ),
    (
        "detail_small_object",
        "jsonb_typeof(detail) = 'object' AND octet_length(detail::text) <= 4096",
    ),
    ("user_agent_length", "user_agent IS NULL OR char_length(user_agent) <= 512"),
    ("request_id_length", "request_id IS NULL OR char_length(request_id) <= 200"),
)

NEW_AUDIT_ACTOR_FIELD_OF = function(
    "audit_actor_field_of(p_fields text[], p_field integer)",
    "returns text\nLANGUAGE sql\nSTABLE\nAS $$\nSELECT NULLIF(CASE WHEN p_field < 6 THEN p_fields[p_field]\n                   ELSE array_to_string(p_fields[6:], ' ') END, '')\n$$",
)

NEW_AUDIT_ACTOR_UUID_OF = function(
    "audit_actor_uuid_of(p_value text, p_field integer)",
    "returns uuid\nLANGUAGE sql\nSTABLE\nAS $$\nSELECT CASE WHEN p_value IS NULL THEN NULL\n            WHEN pg_input_is_valid(p_value, 'uuid') THEN p_value::uuid\n            ELSE public.audit_actor_invalid(p_field)::uuid END\n$$",
)

NEW_AUDIT_ACTOR_INET_OF = function(
    "audit_actor_inet_of(p_value text, p_field integer)",
    "returns inet\nLANGUAGE sql\nSTABLE\nAS $$\nSELECT CASE WHEN p_value IS NULL THEN NULL\n            WHEN pg_input_is_valid(p_value, 'inet') THEN p_value::inet\n            ELSE public.audit_actor_invalid(p_field)::inet END\n$$",
)

NEW_AUDIT_ACTOR_FIELD = function(
    "audit_actor_field(p_field integer)",
    "returns text\nLANGUAGE sql\nSTABLE\nAS $$\nSELECT public.audit_actor_field_of(string_to_array(current_setting('automl.actor', true), ' '),\n                                   p_field)\n$$",
)

NEW_AUDIT_ACTOR_UUID = function(
    "audit_actor_uuid(p_field integer)",
    "returns uuid\nLANGUAGE sql\nSTABLE\nAS $$\nSELECT public.audit_actor_uuid_of(public.audit_actor_field(p_field), p_field)\n$$",
)

NEW_AUDIT_ACTOR_INET = function(
    "audit_actor_inet(p_field integer)",
    "returns inet\nLANGUAGE sql\nSTABLE\nAS $$\nSELECT public.audit_actor_inet_of(public.audit_actor_field(p_field), p_field)\n$$",
)

NEW_AUDIT_ROW_INSERTED = function(
    "audit_row_inserted()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_row jsonb := to_jsonb(NEW);\n    v_detail jsonb;\n    v_col text;\nBEGIN\n    -- TG_ARGV: entity_type, key column, subject column, action, detail columns...\n    -- One row, no transition table: the key's creation, a sign-up, a grant. The\n    -- hot path of a write (POST /v1/api-keys), so few statements: the detail in one\n    -- expression for up to four columns (every trigger below; a loop beyond), its\n    -- size read without printing it.\n    v_detail := CASE TG_NARGS\n        WHEN 4 THEN '{}'::jsonb\n        WHEN 5 THEN jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4])\n        WHEN 6 THEN jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4],\n                                       TG_ARGV[5], v_row -> TG_ARGV[5])\n        WHEN 7 THEN jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4],\n                                       TG_ARGV[5], v_row -> TG_ARGV[5],\n                                       TG_ARGV[6], v_row -> TG_ARGV[6])\n        WHEN 8 THEN jsonb_build_object(TG_ARGV[4], v_row -> TG_ARGV[4],\n                                       TG_ARGV[5], v_row -> TG_ARGV[5],\n                                       TG_ARGV[6], v_row -> TG_ARGV[6],\n                                       TG_ARGV[7], v_row -> TG_ARGV[7])\n        END;\n    IF v_detail IS NULL THEN\n        v_detail := '{}'::jsonb;\n        FOREACH v_col IN ARRAY TG_ARGV[4:] LOOP\n            v_detail := v_detail || jsonb_build_object(v_col, v_row -> v_col);\n        END LOOP;\n    END IF;\n    IF pg_column_size(v_detail) > 2000 THEN\n        v_detail := jsonb_build_object('truncated', true);\n    END IF;\n    -- The actor's columns are their defaults' (the setting read in the statement: a\n    -- value the planner cannot fold, so a malformed field raises ML106 when the row\n    -- is written, never while a plan is made).\n    INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, detail)\n    VALUES (TG_ARGV[3], TG_ARGV[0], (v_row ->> TG_ARGV[1])::uuid, (v_row ->> TG_ARGV[2])::uuid,\n            v_detail);\n    RETURN NULL;\nEND;\n$$",
)

NEW_AUDIT_RECORD = function(
    "audit_record(p_action text, p_entity_type text, p_entity_id uuid, p_outcome text, p_detail jsonb, p_subject_user_id uuid)",
    "returns uuid\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_id uuid;\nBEGIN\n    IF p_action IS NULL OR char_length(p_action) > 100\n       OR p_action !~ '^[a-z][a-z_]*(\\.[a-z][a-z_]*)+$' THEN\n        RAISE EXCEPTION 'an audit event''s action is ''<entity>.<verb>'' in lower case (at most 100 characters), not %',\n                quote_nullable(left(p_action, 100))\n            USING ERRCODE = 'ML108', DETAIL = 'field=action';\n    END IF;\n    IF p_entity_type IS NULL OR char_length(p_entity_type) > 50\n       OR p_entity_type !~ '^[a-z][a-z_]*$' THEN\n        RAISE EXCEPTION 'an audit event''s entity type is a lower-case word (at most 50 characters), not %',\n                quote_nullable(left(p_entity_type, 50))\n            USING ERRCODE = 'ML108', DETAIL = 'field=entity_type';\n    END IF;\n    IF p_detail IS NOT NULL\n       AND (jsonb_typeof(p_detail) <> 'object' OR octet_length(p_detail::text) > 4096) THEN\n        RAISE EXCEPTION 'an audit event''s detail is a JSON object of at most 4096 bytes'\n            USING ERRCODE = 'ML108', DETAIL = 'field=detail';\n    END IF;\n    INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, outcome, detail)\n    VALUES (p_action, p_entity_type, p_entity_id, p_subject_user_id,\n            coalesce(p_outcome, 'success')::public.audit_outcome, coalesce(p_detail, '{}'::jsonb))\n    RETURNING id INTO v_id;\n    RETURN v_id;\nEND;\n$$",
)

OLD_AUDIT_ACTOR_FIELD = function(
    "audit_actor_field(p_field integer)",
    "returns text\nLANGUAGE sql\nSTABLE\nAS $$\nSELECT NULLIF(CASE WHEN p_field < 6\n                   THEN split_part(current_setting('automl.actor', true), ' ', p_field)\n                   ELSE regexp_substr(current_setting('automl.actor', true),\n                                      '^[^ ]* [^ ]* [^ ]* [^ ]* [^ ]* (.*)$', 1, 1, '', 1)\n              END, '')\n$$",
)

OLD_AUDIT_ACTOR_UUID = function(
    "audit_actor_uuid(p_field integer)",
    "returns uuid\nLANGUAGE sql\nSTABLE\nAS $$\nSELECT CASE WHEN public.audit_actor_field(p_field) IS NULL THEN NULL\n            WHEN pg_input_is_valid(public.audit_actor_field(p_field), 'uuid')\n            THEN public.audit_actor_field(p_field)::uuid\n            ELSE public.audit_actor_invalid(p_field)::uuid END\n$$",
)

OLD_AUDIT_ACTOR_INET = function(
    "audit_actor_inet(p_field integer)",
    "returns inet\nLANGUAGE sql\nSTABLE\nAS $$\nSELECT CASE WHEN public.audit_actor_field(p_field) IS NULL THEN NULL\n            WHEN pg_input_is_valid(public.audit_actor_field(p_field), 'inet')\n            THEN public.audit_actor_field(p_field)::inet\n            ELSE public.audit_actor_invalid(p_field)::inet END\n$$",
)

OLD_AUDIT_ROW_INSERTED = function(
    "audit_row_inserted()",
    "returns trigger\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_row jsonb := to_jsonb(NEW);\n    v_detail jsonb := '{}'::jsonb;\n    v_col text;\nBEGIN\n    -- TG_ARGV: entity_type, key column, subject column, action, detail columns...\n    -- One row, no transition table: the key's creation, a sign-up, a grant.\n    FOREACH v_col IN ARRAY TG_ARGV[4:] LOOP\n        v_detail := v_detail || jsonb_build_object(v_col, v_row -> v_col);\n    END LOOP;\n    IF octet_length(v_detail::text) > 2000 THEN\n        v_detail := jsonb_build_object('truncated', true);\n    END IF;\n    INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, detail)\n    VALUES (TG_ARGV[3], TG_ARGV[0], (v_row ->> TG_ARGV[1])::uuid, (v_row ->> TG_ARGV[2])::uuid,\n            v_detail);\n    RETURN NULL;\nEND;\n$$",
)

OLD_AUDIT_RECORD = function(
    "audit_record(p_action text, p_entity_type text, p_entity_id uuid, p_outcome text, p_detail jsonb, p_subject_user_id uuid)",
    "returns uuid\nLANGUAGE plpgsql\nSECURITY DEFINER\nSET search_path = pg_catalog, public, pg_temp\nAS $$\nDECLARE\n    v_id uuid;\nBEGIN\n    INSERT INTO public.audit_events (action, entity_type, entity_id, subject_user_id, outcome, detail)\n    VALUES (p_action, p_entity_type, p_entity_id, p_subject_user_id,\n            coalesce(p_outcome, 'success')::public.audit_outcome, coalesce(p_detail, '{}'::jsonb))\n    RETURNING id INTO v_id;\n    RETURN v_id;\nEND;\n$$",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    create(NEW_AUDIT_ACTOR_FIELD_OF, NEW_AUDIT_ACTOR_UUID_OF, NEW_AUDIT_ACTOR_INET_OF)
    op.execute(
        "REVOKE EXECUTE ON FUNCTION public.audit_actor_field_of(text[], integer) FROM PUBLIC"
    )
    op.execute("REVOKE EXECUTE ON FUNCTION public.audit_actor_uuid_of(text, integer) FROM PUBLIC")
    op.execute("REVOKE EXECUTE ON FUNCTION public.audit_actor_inet_of(text, integer) FROM PUBLIC")
    # The roles that may call audit_actor_field (the apps' role, operators) may call
    # the function its body now calls: no `automl-db grant` needed after upgrading.
    grant_execute_like(
        "public.audit_actor_field_of(text[], integer)", "public.audit_actor_field(integer)"
    )
    replace(
        NEW_AUDIT_ACTOR_FIELD,
        NEW_AUDIT_ACTOR_UUID,
        NEW_AUDIT_ACTOR_INET,
        NEW_AUDIT_ROW_INSERTED,
        NEW_AUDIT_RECORD,
    )
    for name, _ in CHECKS:
        op.drop_constraint(op.f(f"ck_audit_events_{name}"), "audit_events", type_="check")


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    for name, condition in CHECKS:
        op.create_check_constraint(op.f(f"ck_audit_events_{name}"), "audit_events", condition)
    replace(
        OLD_AUDIT_RECORD,
        OLD_AUDIT_ROW_INSERTED,
        OLD_AUDIT_ACTOR_INET,
        OLD_AUDIT_ACTOR_UUID,
        OLD_AUDIT_ACTOR_FIELD,
    )
    drop(NEW_AUDIT_ACTOR_INET_OF, NEW_AUDIT_ACTOR_UUID_OF, NEW_AUDIT_ACTOR_FIELD_OF)
