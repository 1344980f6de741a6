"""registry search indexes

Issue 13, the registry's HTTP API and search: ``ix_registered_models_name_search``
(GIN on ``to_tsvector('simple'::regconfig, name)``: the name search of
``database.registry.name_matches``; full text, since pg_trgm is not in the embedded
server's build), ``ix_registered_models_created_at_id`` and
``ix_model_versions_created_at_id`` (the lists' newest-first keyset order). No rule
changes. The downgrade drops the three.

Revision ID: c13b00000001
Revises: c13a00000001
Create Date: 2026-12-07 07:50:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "c13b00000001"
down_revision: str | Sequence[str] | None = "c13a00000001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Never queue behind a long transaction while holding locks others wait on.
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.create_index(
        "ix_registered_models_name_search",
        "registered_models",
        [sa.text("to_tsvector('simple'::regconfig, name)")],
        unique=False,
        postgresql_using="gin",
    )
    op.create_index(
        "ix_registered_models_created_at_id",
        "registered_models",
        ["created_at", "id"],
        unique=False,
    )
    op.create_index(
        "ix_model_versions_created_at_id", "model_versions", ["created_at", "id"], unique=False
    )


def downgrade() -> None:
    op.execute("SET LOCAL lock_timeout = '5s'")
    op.drop_index("ix_model_versions_created_at_id", table_name="model_versions")
    op.drop_index("ix_registered_models_created_at_id", table_name="registered_models")
    op.drop_index(
        "ix_registered_models_name_search", table_name="registered_models", postgresql_using="gin"
    )
