"""evaluation

Issue 15's evaluation layer. ``datasets.ignored_columns`` (text[], at most 1000);
enums ``criterion_kind``, ``criterion_operator``, ``row_rule`` and the value
``evaluation`` of ``job_kind``; tables ``evaluation_criteria`` (a user's named rules,
CHECKs on each kind's shape and on the structured slice), ``evaluation_runs`` (one
per ``evaluation`` job, results written once) and ``evaluation_row_results``
(partitioned by HASH (evaluation_run_id) into 8 partitions
``evaluation_row_results_p0..p7``, rows removed with their run by the foreign key);
the functions and triggers of ``sql/triggers/evaluation.sql`` (ML115-ML118),
triggers after their tables, dropped before them. The downgrade drops all of it and
rebuilds ``job_kind`` without ``evaluation`` (deleting evaluation jobs first).

Revision ID: c15b00000001
Revises: c15a00000001
Create Date: 2026-12-07 08:28:23.768325+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op
from database.migrations import create, drop, function, trigger

revision: str = "c15b00000001"
down_revision: str | Sequence[str] | None = "c15a00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARTITIONS = 8
PROBLEM_TYPE = postgresql.ENUM(
    "classification", "regression", "clustering", "other", name="problem_type", create_type=False
)


DATASETS_COLUMNS_CHECK_FUNCTION = function(
    "datasets_columns_check()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nDECLARE\n    names text[];\n    unknown text[];\nBEGIN\n    IF NEW.current_version_id IS NULL THEN\n        RETURN NEW;\n    END IF;\n    SELECT array_agg(c ->> 'name') INTO names\n      FROM public.dataset_versions AS v,\n           jsonb_array_elements(\n               CASE WHEN jsonb_typeof(v.columns_metadata -> 'columns') = 'array'\n                    THEN v.columns_metadata -> 'columns' ELSE '[]'::jsonb END) AS c\n     WHERE v.id = NEW.current_version_id;\n    IF names IS NULL THEN\n        RETURN NEW;  -- not ingested yet\\: nothing to check against\n    END IF;\n    IF NEW.target_column IS NOT NULL AND NOT NEW.target_column = ANY (names) THEN\n        RAISE EXCEPTION 'target column \"%\" is not a column of the dataset''s current version',\n                NEW.target_column\n            USING ERRCODE = 'ML115', DETAIL = format('column=%s', NEW.target_column);\n    END IF;\n    SELECT array_agg(i) INTO unknown\n      FROM unnest(NEW.ignored_columns) AS i\n     WHERE NOT i = ANY (names);\n    IF unknown IS NOT NULL THEN\n        RAISE EXCEPTION 'ignored columns are not columns of the dataset''s current version\\: %',\n                array_to_string(unknown, ', ')\n            USING ERRCODE = 'ML116';\n    END IF;\n    IF NEW.target_column = ANY (NEW.ignored_columns) THEN\n        RAISE EXCEPTION 'the target column \"%\" cannot be ignored', NEW.target_column\n            USING ERRCODE = 'ML116';\n    END IF;\n    RETURN NEW;\nEND;\n$$",
)
EVALUATION_ROW_RESULTS_WRITE_ONCE_FUNCTION = function(
    "evaluation_row_results_write_once()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    RAISE EXCEPTION 'evaluation_row_results are written once\\: UPDATE refused'\n        USING ERRCODE = 'ML117', HINT = 'run a new evaluation instead';\nEND;\n$$",
)
EVALUATION_RUNS_WRITE_ONCE_FUNCTION = function(
    "evaluation_runs_write_once()",
    "returns trigger\nLANGUAGE plpgsql\nAS $$\nBEGIN\n    IF NEW.user_id IS DISTINCT FROM OLD.user_id\n       OR NEW.job_id IS DISTINCT FROM OLD.job_id\n       OR NEW.model_version_id IS DISTINCT FROM OLD.model_version_id\n       OR NEW.dataset_version_id IS DISTINCT FROM OLD.dataset_version_id\n       OR NEW.criteria IS DISTINCT FROM OLD.criteria\n       OR OLD.completed_at IS NOT NULL THEN\n        RAISE EXCEPTION 'evaluation run % may not change what it evaluated or its results',\n                OLD.id\n            USING ERRCODE = 'ML118';\n    END IF;\n    RETURN NEW;\nEND;\n$$",
)
DATASETS_COLUMNS_CHECK_TRIGGER = trigger(
    "datasets_columns_check",
    "datasets",
    "BEFORE UPDATE OF target_column, ignored_columns ON public.datasets FOR EACH ROW\nWHEN (NEW.target_column IS DISTINCT FROM OLD.target_column\n      OR NEW.ignored_columns IS DISTINCT FROM OLD.ignored_columns)\nEXECUTE FUNCTION public.datasets_columns_check()",
)
EVALUATION_ROW_RESULTS_WRITE_ONCE_TRIGGER = trigger(
    "evaluation_row_results_write_once",
    "evaluation_row_results",
    "BEFORE UPDATE ON public.evaluation_row_results FOR EACH ROW\nEXECUTE FUNCTION public.evaluation_row_results_write_once()",
)
EVALUATION_RUNS_WRITE_ONCE_TRIGGER = trigger(
    "evaluation_runs_write_once",
    "evaluation_runs",
    "BEFORE UPDATE ON public.evaluation_runs FOR EACH ROW\nEXECUTE FUNCTION public.evaluation_runs_write_once()",
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # Not used in this transaction, so ADD VALUE may run inside it (PostgreSQL >= 12).
    op.execute("ALTER TYPE job_kind ADD VALUE IF NOT EXISTS 'evaluation'")
    create(
        DATASETS_COLUMNS_CHECK_FUNCTION,
        EVALUATION_ROW_RESULTS_WRITE_ONCE_FUNCTION,
        EVALUATION_RUNS_WRITE_ONCE_FUNCTION,
    )

    op.create_table(
        "evaluation_criteria",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column(
            "kind", sa.Enum("metric_threshold", "row_rule", name="criterion_kind"), nullable=False
        ),
        sa.Column("metric", sa.Text(), nullable=True),
        sa.Column(
            "operator", sa.Enum(">=", ">", "<=", "<", name="criterion_operator"), nullable=True
        ),
        sa.Column("threshold", sa.Double(), nullable=True),
        sa.Column(
            "rule",
            sa.Enum("absolute_error_le", "predicted_equals_actual", name="row_rule"),
            nullable=True,
        ),
        sa.Column("tolerance", sa.Double(), nullable=True),
        sa.Column(
            "slice", postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), nullable=True
        ),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "kind <> 'metric_threshold' OR (metric IS NOT NULL AND operator IS NOT NULL AND threshold IS NOT NULL AND rule IS NULL AND tolerance IS NULL)",
            name=op.f("ck_evaluation_criteria_metric_threshold_shape"),
        ),
        sa.CheckConstraint(
            "kind <> 'row_rule' OR (rule IS NOT NULL AND metric IS NULL AND operator IS NULL AND threshold IS NULL AND (tolerance IS NOT NULL) = (rule = 'absolute_error_le'))",
            name=op.f("ck_evaluation_criteria_row_rule_shape"),
        ),
        sa.CheckConstraint(
            "metric IS NULL OR metric ~ '^[a-z][a-z0-9_]{0,63}$'",
            name=op.f("ck_evaluation_criteria_metric_name"),
        ),
        sa.CheckConstraint(
            "slice IS NULL OR (jsonb_typeof(slice) = 'object' AND slice - 'column' - 'equals' = '{}'::jsonb AND jsonb_typeof(slice -> 'column') = 'string' AND char_length(slice ->> 'column') BETWEEN 1 AND 200 AND jsonb_typeof(slice -> 'equals') IN ('string', 'number', 'boolean') AND char_length(slice::text) <= 1000)",
            name=op.f("ck_evaluation_criteria_slice_shape"),
        ),
        sa.CheckConstraint(
            "threshold IS NULL OR threshold NOT IN ('NaN', 'Infinity', '-Infinity')",
            name=op.f("ck_evaluation_criteria_threshold_finite"),
        ),
        sa.CheckConstraint(
            "tolerance IS NULL OR (tolerance >= 0 AND tolerance < 'Infinity')",
            name=op.f("ck_evaluation_criteria_tolerance_nonnegative"),
        ),
        sa.CheckConstraint(
            "char_length(name) BETWEEN 1 AND 200", name=op.f("ck_evaluation_criteria_name_length")
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_evaluation_criteria_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation_criteria")),
        sa.UniqueConstraint("id", "user_id", name=op.f("uq_evaluation_criteria_id_user_id")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_evaluation_criteria_user_id_name")),
    )
    op.create_table(
        "evaluation_runs",
        sa.Column("id", sa.UUID(), server_default=sa.text("gen_random_uuid()"), nullable=False),
        sa.Column("user_id", sa.UUID(), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("model_version_id", sa.UUID(), nullable=False),
        sa.Column("dataset_version_id", sa.UUID(), nullable=False),
        sa.Column(
            "criteria",
            postgresql.JSONB(astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
        sa.Column(
            "problem_type",
            PROBLEM_TYPE,
            nullable=True,
        ),
        sa.Column(
            "metrics", postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), nullable=True
        ),
        sa.Column(
            "criteria_results",
            postgresql.JSONB(none_as_null=True, astext_type=sa.Text()),
            nullable=True,
        ),
        sa.Column(
            "plot_data", postgresql.JSONB(none_as_null=True, astext_type=sa.Text()), nullable=True
        ),
        sa.Column("passed", sa.Boolean(), nullable=True),
        sa.Column("row_count", sa.BigInteger(), nullable=True),
        sa.Column("failed_row_count", sa.BigInteger(), nullable=True),
        sa.Column("completed_at", sa.TIMESTAMP(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.TIMESTAMP(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "jsonb_typeof(criteria) = 'array' AND jsonb_array_length(criteria) <= 100",
            name=op.f("ck_evaluation_runs_criteria_shape"),
        ),
        sa.CheckConstraint(
            "(completed_at IS NULL) = (metrics IS NULL)",
            name=op.f("ck_evaluation_runs_results_when_completed"),
        ),
        sa.CheckConstraint(
            "(row_count IS NULL OR row_count >= 0) AND (failed_row_count IS NULL OR failed_row_count BETWEEN 0 AND row_count)",
            name=op.f("ck_evaluation_runs_counts_valid"),
        ),
        sa.ForeignKeyConstraint(
            ["dataset_version_id", "user_id"],
            ["dataset_versions.id", "dataset_versions.user_id"],
            name=op.f("fk_evaluation_runs_dataset_version_id_user_id_dataset_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id", "user_id"],
            ["jobs.id", "jobs.user_id"],
            name=op.f("fk_evaluation_runs_job_id_user_id_jobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_evaluation_runs_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.id"],
            name=op.f("fk_evaluation_runs_user_id_users"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation_runs")),
        sa.UniqueConstraint("id", "user_id", name=op.f("uq_evaluation_runs_id_user_id")),
        sa.UniqueConstraint("job_id", "user_id", name=op.f("uq_evaluation_runs_job_id_user_id")),
    )
    op.create_index(
        "ix_evaluation_runs_dataset_version_id_user_id",
        "evaluation_runs",
        ["dataset_version_id", "user_id"],
        unique=False,
    )
    op.create_index(
        "ix_evaluation_runs_model_version_id", "evaluation_runs", ["model_version_id"], unique=False
    )
    op.create_index(
        "ix_evaluation_runs_user_id_created_at",
        "evaluation_runs",
        ["user_id", "created_at"],
        unique=False,
    )
    op.create_table(
        "evaluation_row_results",
        sa.Column("evaluation_run_id", sa.UUID(), nullable=False),
        sa.Column("row_index", sa.BigInteger(), nullable=False),
        sa.Column("prediction", sa.Text(), nullable=True),
        sa.Column("actual", sa.Text(), nullable=True),
        sa.Column("score", sa.Double(), nullable=True),
        sa.Column("error", sa.Double(), nullable=True),
        sa.Column(
            "criteria_passed",
            sa.ARRAY(sa.Boolean()),
            server_default=sa.text("'{}'::boolean[]"),
            nullable=False,
        ),
        sa.Column("passed", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["evaluation_run_id"],
            ["evaluation_runs.id"],
            name=op.f("fk_evaluation_row_results_evaluation_run_id_evaluation_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "evaluation_run_id", "row_index", name=op.f("pk_evaluation_row_results")
        ),
        postgresql_partition_by="HASH (evaluation_run_id)",
    )
    op.create_index(
        "ix_evaluation_row_results_failing",
        "evaluation_row_results",
        ["evaluation_run_id", "row_index"],
        unique=False,
        postgresql_where=sa.text("NOT passed"),
    )
    op.add_column(
        "datasets",
        sa.Column(
            "ignored_columns",
            sa.ARRAY(sa.Text()),
            server_default=sa.text("'{}'::text[]"),
            nullable=False,
        ),
    )
    op.create_check_constraint(
        op.f("ck_datasets_ignored_columns_count"),
        "datasets",
        "cardinality(ignored_columns) <= 1000",
    )
    for n in range(PARTITIONS):
        op.execute(
            f"CREATE TABLE evaluation_row_results_p{n} PARTITION OF evaluation_row_results"
            f" FOR VALUES WITH (MODULUS {PARTITIONS}, REMAINDER {n})"
        )
    create(
        DATASETS_COLUMNS_CHECK_TRIGGER,
        EVALUATION_ROW_RESULTS_WRITE_ONCE_TRIGGER,
        EVALUATION_RUNS_WRITE_ONCE_TRIGGER,
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    # Triggers first: drop_entity fails once their table is gone; then the functions.
    drop(
        EVALUATION_RUNS_WRITE_ONCE_TRIGGER,
        EVALUATION_ROW_RESULTS_WRITE_ONCE_TRIGGER,
        DATASETS_COLUMNS_CHECK_TRIGGER,
        EVALUATION_RUNS_WRITE_ONCE_FUNCTION,
        EVALUATION_ROW_RESULTS_WRITE_ONCE_FUNCTION,
        DATASETS_COLUMNS_CHECK_FUNCTION,
    )

    op.drop_constraint(op.f("ck_datasets_ignored_columns_count"), "datasets", type_="check")
    op.drop_column("datasets", "ignored_columns")
    op.drop_index(
        "ix_evaluation_row_results_failing",
        table_name="evaluation_row_results",
        postgresql_where=sa.text("NOT passed"),
    )
    op.drop_table("evaluation_row_results")
    op.drop_index("ix_evaluation_runs_user_id_created_at", table_name="evaluation_runs")
    op.drop_index("ix_evaluation_runs_model_version_id", table_name="evaluation_runs")
    op.drop_index("ix_evaluation_runs_dataset_version_id_user_id", table_name="evaluation_runs")
    op.drop_table("evaluation_runs")
    op.drop_table("evaluation_criteria")
    for name in ("criterion_kind", "criterion_operator", "row_rule"):
        op.execute(f"DROP TYPE {name}")
    # A value cannot leave an enum: the type is rebuilt without it.
    op.execute("DELETE FROM jobs WHERE kind = 'evaluation'")
    op.execute("ALTER TYPE job_kind RENAME TO job_kind_old")
    op.execute("CREATE TYPE job_kind AS ENUM ('workflow_run', 'ingestion')")
    op.drop_constraint("kind_not_ingestion", "jobs", type_="check")
    op.execute("ALTER TABLE jobs ALTER COLUMN kind DROP DEFAULT")
    op.execute("ALTER TABLE jobs ALTER COLUMN kind TYPE job_kind USING kind::text::job_kind")
    op.execute("ALTER TABLE jobs ALTER COLUMN kind SET DEFAULT 'workflow_run'")
    op.create_check_constraint("kind_not_ingestion", "jobs", "kind <> 'ingestion'")
    op.execute("DROP TYPE job_kind_old")
