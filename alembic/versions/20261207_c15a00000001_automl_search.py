"""automl search

Issue 15's AutoML search: the ``automl`` label of ``node_type`` (a workflow node),
and what a trial of a search records on its experiment run: ``trial_number`` (unique
per experiment, at least 1), ``parameters`` (the learner and its hyperparameters),
``duration_seconds`` (not negative) and ``status`` (new enum
``experiment_run_status``: finished, failed; default finished, so the runs made by
hand read as before). The downgrade drops the columns and the type; the
``node_type`` label stays (PostgreSQL cannot drop a label, see docs/enums.md).

Revision ID: c15a00000001
Revises: c17b00000001
Create Date: 2026-12-07 08:55:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "c15a00000001"
down_revision: str | Sequence[str] | None = "c17b00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUS = postgresql.ENUM("finished", "failed", name="experiment_run_status", create_type=False)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    # Not used in this run (a label is usable once the run commits: docs/enums.md).
    op.execute("ALTER TYPE node_type ADD VALUE IF NOT EXISTS 'automl'")
    STATUS.create(op.get_bind(), checkfirst=False)
    op.add_column("experiment_runs", sa.Column("trial_number", sa.Integer(), nullable=True))
    op.add_column(
        "experiment_runs",
        sa.Column("parameters", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
    )
    op.add_column("experiment_runs", sa.Column("duration_seconds", sa.Float(), nullable=True))
    op.add_column(
        "experiment_runs",
        sa.Column("status", STATUS, server_default="finished", nullable=False),
    )
    op.create_unique_constraint(
        op.f("uq_experiment_runs_experiment_id_trial_number"),
        "experiment_runs",
        ["experiment_id", "trial_number"],
    )
    op.create_check_constraint(
        op.f("ck_experiment_runs_trial_number_positive"), "experiment_runs", "trial_number >= 1"
    )
    op.create_check_constraint(
        op.f("ck_experiment_runs_duration_not_negative"),
        "experiment_runs",
        "duration_seconds >= 0",
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint(
        op.f("ck_experiment_runs_duration_not_negative"), "experiment_runs", type_="check"
    )
    op.drop_constraint(
        op.f("ck_experiment_runs_trial_number_positive"), "experiment_runs", type_="check"
    )
    op.drop_constraint(
        op.f("uq_experiment_runs_experiment_id_trial_number"), "experiment_runs", type_="unique"
    )
    op.drop_column("experiment_runs", "status")
    op.drop_column("experiment_runs", "duration_seconds")
    op.drop_column("experiment_runs", "parameters")
    op.drop_column("experiment_runs", "trial_number")
    STATUS.drop(op.get_bind(), checkfirst=False)
    # The node_type label 'automl' stays: PostgreSQL cannot drop a label (docs/enums.md).
