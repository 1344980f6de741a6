"""automl fold scores

Issue 15's gap: every trial of an AutoML search records its score on each
cross-validation fold. ``experiment_runs.fold_scores`` (``double precision[]``, NULL
for runs made by hand): one dimension, 1..20 folds (the node's ``folds`` bound),
finite numbers or NULL (a fold that could not be scored), checked by
``ck_experiment_runs_fold_scores_finite``. The downgrade drops the column.

Revision ID: c15c00000001
Revises: c16b00000001
Create Date: 2026-12-07 10:40:00+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "c15c00000001"
down_revision: str | Sequence[str] | None = "c16b00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CHECK = (
    "array_ndims(fold_scores) = 1 AND cardinality(fold_scores) BETWEEN 1 AND 20"
    " AND NOT ('NaN'::float8 = ANY (fold_scores))"
    " AND NOT ('Infinity'::float8 = ANY (fold_scores))"
    " AND NOT ('-Infinity'::float8 = ANY (fold_scores))"
)


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.add_column(
        "experiment_runs",
        sa.Column("fold_scores", postgresql.ARRAY(sa.Double()), nullable=True),
    )
    op.create_check_constraint(
        op.f("ck_experiment_runs_fold_scores_finite"), "experiment_runs", CHECK
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_constraint(
        op.f("ck_experiment_runs_fold_scores_finite"), "experiment_runs", type_="check"
    )
    op.drop_column("experiment_runs", "fold_scores")
