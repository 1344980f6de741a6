"""Ingestion: an upload becomes a dataset version (Parquet, shape, columns, profile).

The slow part (read, profile, write the Parquet file) runs outside any
transaction; the version, its profile and the ingestion job are then written in
one transaction that first checks this worker still holds the lease. A file that
cannot be read fails the ingestion with a clear message and fills nothing of the
version but its status and that message; a Parquet file written for a version
that does not end up completed is removed.

The Parquet copy counts against the user's storage quota like the upload
(``users.storage_used_bytes`` adds both): under the user's row lock, the lock every
writer of stored bytes takes, an ingestion whose Parquet file does not fit in what
is left fails with the quota's message (:func:`database.jobs.complete_ingestion`),
and its file is removed. So concurrent uploads and ingestions never end above the
quota.
"""

from __future__ import annotations

import io
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from database import jobs
from database.jobs import Claim
from database.limits import Limits
from pipeline.ingest import IngestionError, columns_metadata, read_table, write_parquet
from pipeline.profile import Profile, profile
from pipeline.storage import Storage

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Work:
    source_path: str | None
    version_id: Any
    dataset_id: Any
    user_id: Any
    original_format: str
    original_filename: str | None


def parquet_key(work: _Work) -> str:
    """A name of this attempt's own: a worker that lost its lease and removes what it
    wrote can never remove the file of the worker that took over."""
    return f"datasets/{work.user_id}/{work.dataset_id}/{work.version_id}/{uuid.uuid4().hex}.parquet"


def _load(engine: Engine, claim: Claim) -> _Work | None:
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT i.source_path, v.id AS version_id, v.dataset_id, v.user_id,"
                " v.original_format::text AS original_format, v.original_filename"
                " FROM ingestion_jobs AS i"
                " JOIN dataset_versions AS v ON v.id = i.dataset_version_id"
                " WHERE i.id = :id"
            ),
            {"id": claim.id},
        ).one_or_none()
    return None if row is None else _Work(**row._mapping)


def run_ingestion(
    engine: Engine, storage: Storage, claim: Claim, *, tier_limits: Limits | None = None
) -> str:
    """Process the claimed ingestion; returns its final status (completed, failed, gone).

    A file that cannot be read fails it with the reader's message; a Parquet copy that
    does not fit in the owner's storage quota (``tier_limits``: the worker's
    ``TIER_LIMITS``) fails it with the reason; other errors are raised (the caller
    classes them: :func:`workers.kinds.dispatch`)."""
    work = _load(engine, claim)
    if work is None:
        return "gone"
    try:
        if not work.source_path:
            raise IngestionError("the upload has no stored file")
        try:
            with storage.open_read(work.source_path) as source:
                frame = read_table(source, work.original_format, work.original_filename)
        except FileNotFoundError:
            raise IngestionError("the uploaded file is no longer in storage") from None
        metadata = columns_metadata(frame)
        stats = profile(frame)
        buffer = io.BytesIO()
        size = write_parquet(frame, buffer)
        buffer.seek(0)
        key = parquet_key(work)
        storage.save(key, buffer)
        location = storage.location(key)
    except IngestionError as exc:
        _fail(engine, claim, str(exc))
        return "failed"
    # Anything else (an outage, a bug) goes up to workers.kinds, which retries a
    # transient error later and fails a permanent one at once, with its cause.
    try:
        outcome = _complete(engine, claim, location, size, metadata, stats, tier_limits)
    except BaseException:
        storage.delete(location)
        raise
    if outcome != "completed":  # deleted meanwhile, or over the storage quota
        storage.delete(location)
    return outcome


def _complete(
    engine: Engine,
    claim: Claim,
    location: str,
    size: int,
    metadata: dict[str, Any],
    stats: Profile,
    tier_limits: Limits | None,
) -> str:
    with Session(engine) as session:
        outcome = jobs.complete_ingestion(
            session,
            claim,
            location=location,
            parquet_size_bytes=size,
            row_count=stats.row_count,
            column_count=stats.column_count,
            columns_metadata=metadata,
            profile={
                "row_count": stats.row_count,
                "column_count": stats.column_count,
                "missing_cells": stats.missing_cells,
                "duplicate_rows": stats.duplicate_rows,
                "memory_bytes": stats.memory_bytes,
                "column_stats": stats.column_stats,
                "correlations": stats.correlations,
                "warnings": stats.warnings,
            },
            limits=tier_limits,
        )
    if outcome == "completed":
        log.info(
            "ingestion %s completed: %d rows, %d columns",
            claim.id,
            stats.row_count,
            stats.column_count,
        )
    return outcome


def _fail(engine: Engine, claim: Claim, message: str) -> None:
    with Session(engine) as session:
        jobs.fail_ingestion(session, claim, message)
