"""One inference request: who asked which deployment for how many rows, and how it
ended. Never the payload.

Append-only for every client (``inference_requests_append_only``, ML085) and
partitioned by month on ``created_at`` (declarative ``RANGE``): the partitions are
made ahead by ``database.metering.ensure_partitions`` and on demand for a row whose
month has none; retention drops whole months (``drop_partitions_before``). The
primary key includes ``created_at``, as a partitioned table's must.
``deployment_id``, ``model_version_id`` and ``api_key_id`` are plain UUIDs: the log
outlives what it names.
"""

from __future__ import annotations

import datetime as dt
import uuid

from sqlalchemy import CheckConstraint, ForeignKey, Index, PrimaryKeyConstraint, func, text
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base
from database.models.enums import InferenceStatus, inference_status

MAX_ERROR_CLASS = 200
MAX_REQUEST_ID = 200


class InferenceRequest(Base):
    __tablename__ = "inference_requests"

    id: Mapped[uuid.UUID] = mapped_column(server_default=text("gen_random_uuid()"))
    # RESTRICT: users are never deleted (a purged one stays as a tombstone).
    user_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"))
    deployment_id: Mapped[uuid.UUID]
    model_version_id: Mapped[uuid.UUID | None]
    api_key_id: Mapped[uuid.UUID | None]
    rows: Mapped[int]
    latency_ms: Mapped[int]
    status: Mapped[InferenceStatus] = mapped_column(inference_status)
    error_class: Mapped[str | None]
    request_id: Mapped[str | None]
    created_at: Mapped[dt.datetime] = mapped_column(server_default=func.now())

    __table_args__ = (
        PrimaryKeyConstraint("id", "created_at"),
        CheckConstraint("rows >= 0", name="rows_nonnegative"),
        CheckConstraint("latency_ms >= 0", name="latency_nonnegative"),
        CheckConstraint(
            f"error_class IS NULL OR char_length(error_class) BETWEEN 1 AND {MAX_ERROR_CLASS}",
            name="error_class_length",
        ),
        CheckConstraint(
            f"request_id IS NULL OR char_length(request_id) BETWEEN 1 AND {MAX_REQUEST_ID}",
            name="request_id_length",
        ),
        # A deployment's requests, newest first (keyset pages of GET .../requests).
        Index(
            "ix_inference_requests_deployment_id_created_at_id", "deployment_id", "created_at", "id"
        ),
        Index("ix_inference_requests_user_id_created_at", "user_id", "created_at"),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )


__all__ = ["MAX_ERROR_CLASS", "MAX_REQUEST_ID", "InferenceRequest"]
