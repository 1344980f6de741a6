"""model signature, input example and environment

Issue 13 (formats): what a trained model needs to be used later, recorded on the
``models`` row by the worker when it saves the model: ``signature`` (jsonb object,
default ``{}``), ``input_example`` (jsonb array or NULL) and ``environment`` (jsonb
object, default ``{}``), with the same shape checks as ``model_versions``' columns
(``ck_models_signature_shape``, ``ck_models_input_example_shape``,
``ck_models_environment_shape``); the function ``models_record_read_only()`` and
its trigger (sql/triggers/model_formats.sql, ML070: the three are written once),
the trigger written by hand after the columns and dropped before them. ``database.registry.register_version`` copies them
into the version it registers. Adding a column with a constant default rewrites
nothing (PostgreSQL 11+). The downgrade drops the three columns.

Revision ID: c13c00000001
Revises: c13b00000001
Create Date: 2026-12-07 08:15:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic_utils.pg_function import PGFunction
from alembic_utils.pg_trigger import PGTrigger
from sqlalchemy.dialects import postgresql

from alembic import op
from database.migrations import create, drop, function, trigger

revision: str = "c13c00000001"
down_revision: str | Sequence[str] | None = "c13b00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _function() -> PGFunction:
    return function(
        "models_record_read_only()",
        "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'model %\\: its signature, input example and environment are written once', OLD.id\n        USING ERRCODE = 'ML070',\n              HINT = 'train and save a new model instead';\nEND;\n$$",
    )


def _trigger() -> PGTrigger:
    return trigger(
        "models_record_read_only",
        "models",
        "BEFORE UPDATE OF signature, input_example, environment ON public.models FOR EACH ROW\nWHEN ((OLD.signature <> '{}'::jsonb AND NEW.signature IS DISTINCT FROM OLD.signature)\n      OR (OLD.input_example IS NOT NULL AND NEW.input_example IS DISTINCT FROM OLD.input_example)\n      OR (OLD.environment <> '{}'::jsonb AND NEW.environment IS DISTINCT FROM OLD.environment))\nEXECUTE FUNCTION public.models_record_read_only()",
    )


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column(
        "models",
        sa.Column(
            "signature",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )
    op.add_column(
        "models",
        sa.Column("input_example", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column(
        "models",
        sa.Column(
            "environment",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'{}'::jsonb"),
            nullable=False,
        ),
    )
    op.create_check_constraint(
        op.f("ck_models_signature_shape"),
        "models",
        "jsonb_typeof(signature) = 'object' AND char_length(signature::text) <= 100000",
    )
    op.create_check_constraint(
        op.f("ck_models_input_example_shape"),
        "models",
        "input_example IS NULL OR (jsonb_typeof(input_example) = 'array'"
        " AND char_length(input_example::text) <= 100000)",
    )
    op.create_check_constraint(
        op.f("ck_models_environment_shape"),
        "models",
        "jsonb_typeof(environment) = 'object' AND char_length(environment::text) <= 10000",
    )
    create(
        _function(),
        _trigger(),
    )  # after its columns


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    drop(
        _trigger(),
        _function(),
    )
    op.drop_constraint(op.f("ck_models_environment_shape"), "models", type_="check")
    op.drop_constraint(op.f("ck_models_input_example_shape"), "models", type_="check")
    op.drop_constraint(op.f("ck_models_signature_shape"), "models", type_="check")
    op.drop_column("models", "environment")
    op.drop_column("models", "input_example")
    op.drop_column("models", "signature")
