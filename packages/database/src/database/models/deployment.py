"""A named endpoint of a user that serves one model version, or follows an alias."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base, IDMixin, TimestampMixin
from database.models.enums import DeploymentStatus, deployment_status

#: Bounds of a deployment's name and of its config (the CHECKs say the same numbers).
MAX_NAME = 200
MAX_BATCH_ROWS = 100_000
MAX_TIMEOUT_MS = 600_000
MAX_ERROR = 2000


def _whole_number(key: str, maximum: int) -> str:
    """SQL: ``config.key`` is absent, or a whole JSON number in 1..maximum (a CASE, so
    the cast runs only on a number)."""
    value = f"(config->'{key}')"
    return (
        f"CASE WHEN NOT config ? '{key}' THEN true"
        f" WHEN jsonb_typeof({value}) <> 'number' THEN false"
        f" ELSE {value}::numeric BETWEEN 1 AND {maximum}"
        f" AND trunc({value}::numeric) = {value}::numeric END"
    )


class Deployment(IDMixin, TimestampMixin, Base):
    """``user_id``'s endpoint ``name`` (unique per user), serving either one fixed
    version (``model_version_id``) or whatever version ``alias`` of
    ``registered_model_id`` points at, resolved per request. Exactly one of the two
    (``ck_deployments_one_target``); the target never changes (ML082), the status
    follows its life (ML081). The deployment's owner is who is charged for its
    predictions, also when the model is another user's (granted ``deploy``).

    ``models.is_deployed`` is derived from the active deployments
    (sql/triggers/deployments.sql), following alias moves.
    """

    __tablename__ = "deployments"

    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    name: Mapped[str]
    #: A fixed version; deleting the version deletes the deployment.
    model_version_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="CASCADE")
    )
    #: Or an alias of a registered model, followed when it moves.
    registered_model_id: Mapped[uuid.UUID | None]
    alias: Mapped[str | None]
    status: Mapped[DeploymentStatus] = mapped_column(
        deployment_status, server_default=DeploymentStatus.PENDING.value
    )
    #: ``{"max_batch_rows": int, "timeout_ms": int}``, both optional.
    config: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    #: Why a deployment failed.
    error_message: Mapped[str | None]

    __table_args__ = (
        # Also the index of the owner's foreign key and of "my deployments by name".
        UniqueConstraint("user_id", "name"),
        ForeignKeyConstraint(
            ["registered_model_id"],
            ["registered_models.id"],
            ondelete="CASCADE",
            name="fk_deployments_registered_model_id_registered_models",
        ),
        CheckConstraint(
            "(model_version_id IS NOT NULL AND registered_model_id IS NULL AND alias IS NULL)"
            " OR (model_version_id IS NULL AND registered_model_id IS NOT NULL"
            " AND alias IS NOT NULL)",
            name="one_target",
        ),
        CheckConstraint(f"char_length(name) BETWEEN 1 AND {MAX_NAME}", name="name_length"),
        CheckConstraint("alias IS NULL OR alias ~ '^[a-z][a-z0-9_-]{0,62}$'", name="alias_name"),
        CheckConstraint(
            "jsonb_typeof(config) = 'object'"
            " AND (config - 'max_batch_rows' - 'timeout_ms') = '{}'::jsonb"
            f" AND {_whole_number('max_batch_rows', MAX_BATCH_ROWS)}"
            f" AND {_whole_number('timeout_ms', MAX_TIMEOUT_MS)}",
            name="config_shape",
        ),
        CheckConstraint(
            f"error_message IS NULL OR char_length(error_message) <= {MAX_ERROR}",
            name="error_message_length",
        ),
        Index("ix_deployments_model_version_id", "model_version_id"),
        # The deployments following an alias (the alias triggers look them up).
        Index("ix_deployments_registered_model_id_alias", "registered_model_id", "alias"),
    )


__all__ = ["MAX_BATCH_ROWS", "MAX_NAME", "MAX_TIMEOUT_MS", "Deployment"]
