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
is left fails with the quota's message, and its file is removed. So concurrent
uploads and ingestions never end above the quota.
"""

from __future__ import annotations

import io
import json
import logging
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from database import credits, errors
from database.limits import Limits, storage_refusal
from database.models import DatasetProfile
from pipeline.ingest import IngestionError, columns_metadata, read_table, write_parquet
from pipeline.profile import Profile, profile
from pipeline.storage import Storage
from workers.queue import Claim, LeaseLost

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


def _hold(session: Session, claim: Claim) -> bool | None:
    """Lock the ingestion row if this worker still holds it: True; False when another
    worker does; None when the row is gone (its dataset deleted meanwhile)."""
    row = session.execute(
        text("SELECT leased_by, status FROM ingestion_jobs WHERE id = :id FOR UPDATE"),
        {"id": claim.id},
    ).one_or_none()
    if row is None:
        return None
    return row.leased_by == claim.worker and row.status == "processing"


def run_ingestion(
    engine: Engine, storage: Storage, claim: Claim, *, limits: Limits | None = None
) -> str:
    """Process the claimed ingestion; returns its final status (completed, failed).

    ``limits``: the tiers' limits whose storage quota the Parquet copy must fit in
    (default: the defaults; the worker passes its ``TIER_LIMITS``)."""
    work = _load(engine, claim)
    if work is None:
        return "gone"
    location: str | None = None
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
        _fail(engine, claim, work, str(exc))
        return "failed"
    except Exception as exc:  # a bug or an outage, not the user's file: say little
        log.exception("ingestion %s failed unexpectedly", claim.id)
        _fail(engine, claim, work, f"ingestion failed unexpectedly ({type(exc).__name__})")
        return "failed"
    try:
        kept = _complete(engine, claim, work, location, size, metadata, stats, limits or Limits())
    except BaseException:
        storage.delete(location)
        raise
    if kept is None:  # the version was deleted while it was processed
        storage.delete(location)
        return "gone"
    if not kept:  # over the storage quota: failed, its Parquet file not kept
        storage.delete(location)
        return "failed"
    return "completed"


def _complete(
    engine: Engine,
    claim: Claim,
    work: _Work,
    location: str,
    size: int,
    metadata: dict[str, Any],
    stats: Profile,
    limits: Limits,
) -> bool | None:
    """True: completed; False: failed, over the storage quota; None: gone."""
    with Session(engine) as session, session.begin():
        try:
            credits.lock_users(session, [claim.user_id])  # storage_used_bytes moves
        except errors.UserNotFound:
            return None
        held = _hold(session, claim)
        if held is None:
            return None
        if not held:
            raise LeaseLost(f"ingestion {claim.id}: the lease of {claim.worker} was lost")
        refusal = storage_refusal(session, claim.user_id, size, limits)
        if refusal is not None:
            message = f"the processed Parquet copy ({size} bytes) was not kept: {refusal}"
            _mark_failed(session, claim, work, message)
            log.info("ingestion %s failed: %s", claim.id, message)
            return False
        session.execute(
            text(
                "UPDATE dataset_versions SET s3_path = :location, parquet_size_bytes = :size,"
                " row_count = :rows, column_count = :columns,"
                " columns_metadata = CAST(:metadata AS jsonb), status = 'completed',"
                " error_message = NULL, processed_at = clock_timestamp() WHERE id = :id"
            ),
            {
                "location": location,
                "size": size,
                "rows": stats.row_count,
                "columns": stats.column_count,
                "metadata": _dumps(metadata),
                "id": work.version_id,
            },
        )
        values = {
            "dataset_version_id": work.version_id,
            "row_count": stats.row_count,
            "column_count": stats.column_count,
            "missing_cells": stats.missing_cells,
            "duplicate_rows": stats.duplicate_rows,
            "memory_bytes": stats.memory_bytes,
            "column_stats": stats.column_stats,
            "correlations": stats.correlations,
            "warnings": stats.warnings,
        }
        upsert = insert(DatasetProfile).values(**values)
        session.execute(
            upsert.on_conflict_do_update(
                index_elements=["dataset_version_id"],
                set_={k: upsert.excluded[k] for k in values if k != "dataset_version_id"},
            )
        )
        session.execute(
            text(
                "UPDATE ingestion_jobs SET status = 'completed', error_message = NULL,"
                " completed_at = clock_timestamp(), leased_by = NULL, lease_expires_at = NULL"
                " WHERE id = :id"
            ),
            {"id": claim.id},
        )
    log.info(
        "ingestion %s completed: %d rows, %d columns", claim.id, stats.row_count, stats.column_count
    )
    return True


def _fail(engine: Engine, claim: Claim, work: _Work, message: str) -> None:
    with Session(engine) as session, session.begin():
        try:
            credits.lock_users(session, [claim.user_id])  # the API's lock order
        except errors.UserNotFound:
            return
        held = _hold(session, claim)
        if held is None:
            return
        if not held:
            raise LeaseLost(f"ingestion {claim.id}: the lease of {claim.worker} was lost")
        _mark_failed(session, claim, work, message)
    log.info("ingestion %s failed: %s", claim.id, message)


def _mark_failed(session: Session, claim: Claim, work: _Work, message: str) -> None:
    session.execute(
        text(
            "UPDATE dataset_versions SET status = 'failed', error_message = :message WHERE id = :id"
        ),
        {"id": work.version_id, "message": message},
    )
    session.execute(
        text(
            "UPDATE ingestion_jobs SET status = 'failed', error_message = :message,"
            " completed_at = clock_timestamp(), leased_by = NULL, lease_expires_at = NULL"
            " WHERE id = :id"
        ),
        {"id": claim.id, "message": message},
    )


def _dumps(value: Any) -> str:
    return json.dumps(value, allow_nan=False)
