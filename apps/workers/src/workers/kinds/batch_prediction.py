"""``batch_prediction``: a deployment's model scores a dataset version into Parquet.

The job's snapshot (``database.deployments.enqueue_batch``) names the model version
(an alias was resolved when the batch was asked: the batch is reproducible) and the
dataset version. The handler loads the model (``pipeline.serving.load_model``, the
same loader as the online path), reads the version's Parquet file in chunks of
:data:`CHUNK_ROWS` rows, scores each (``pipeline.serving.predict``: the preprocessing
once, the estimator; a classifier's probabilities too) and appends it to one Parquet
file: ``prediction``, and ``probability_<class>`` per class for a classifier, one
row per input row in the input's order. Between two chunks it renews the lease and
looks for a cancel or a stop. The file goes to storage
(``predictions/<user>/<job>/<random>.parquet``) and the job completes with
``results = {"output", "rows", "bytes", "model_version_id"}``; it is downloaded with
``GET /v1/deployments/{id}/batch/{job_id}/output``. Any error fails the job (and
refunds it) through ``workers.kinds.dispatch``; the partial file is removed.
"""

from __future__ import annotations

import logging
import os
import tempfile
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import text
from sqlalchemy.orm import Session

from database import deployments, jobs
from database.jobs import Claim
from database.models import JobKind, JobStatus
from pipeline.serving import (
    LoadedModel,
    class_labels,
    frame_for_model,
    load_model,
    predict_arrays,
)
from workers.kinds import Context, register

log = logging.getLogger(__name__)

#: Rows scored at a time: large enough that the model's own per-call cost vanishes.
CHUNK_ROWS = 100_000


class BatchFailed(Exception):
    """A batch that cannot run (its model or dataset version is gone or unreadable)."""


def _spec(context: Context, claim: Claim) -> dict[str, Any] | None:
    with context.engine.connect() as conn:
        data = conn.execute(
            text(
                "SELECT s.snapshot_data FROM jobs AS j JOIN workflow_snapshots AS s"
                " ON s.id = j.workflow_snapshot_id WHERE j.id = :id"
            ),
            {"id": claim.id},
        ).scalar_one_or_none()
    if data is None:
        return None
    spec = data.get("batch_prediction")
    if not isinstance(spec, dict):
        raise BatchFailed("the job's snapshot names no batch prediction")
    return spec


def _columns(model: LoadedModel, frame: Any) -> dict[str, Any]:
    """A chunk's output columns, as arrays (no per-row Python)."""
    predictions, proba = predict_arrays(model, frame)
    out: dict[str, Any] = {"prediction": predictions}
    if proba is not None:
        for i, label in enumerate(class_labels(model)):
            out[f"probability_{label}"] = proba[:, i]
    return out


@register(JobKind.BATCH_PREDICTION)
def handle(context: Context, claim: Claim) -> str:
    spec = _spec(context, claim)
    if spec is None:
        return "gone"
    version_id = uuid.UUID(spec["model_version_id"])
    dataset_version_id = uuid.UUID(spec["dataset_version_id"])
    with Session(context.engine) as session:
        model_row = session.execute(
            text(
                "SELECT m.s3_path, m.size_bytes FROM model_versions AS v"
                " JOIN models AS m ON m.id = v.model_id WHERE v.id = :v"
            ),
            {"v": version_id},
        ).one_or_none()
        if model_row is None:
            raise BatchFailed(f"model version {version_id} no longer exists")
        signature, environment = deployments.version_details(session, version_id)
        source = session.scalar(
            text(
                "SELECT s3_path FROM dataset_versions WHERE id = :v AND user_id = :u"
                " AND status = 'completed'"
            ),
            {"v": dataset_version_id, "u": claim.user_id},
        )
    if not source:
        raise BatchFailed(f"dataset version {dataset_version_id} is gone or not ingested")
    model = load_model(
        context.storage,
        key=str(version_id),
        location=model_row.s3_path,
        signature=signature,
        environment=environment,
        size_bytes=model_row.size_bytes,
    )
    key = f"predictions/{claim.user_id}/{claim.id}/{uuid.uuid4().hex}.parquet"
    rows = 0
    fd, scratch = tempfile.mkstemp(suffix=".parquet")
    os.close(fd)
    try:
        writer: pq.ParquetWriter | None = None
        with context.storage.open_read(source) as handle:
            parquet = pq.ParquetFile(handle)
            for batch in parquet.iter_batches(batch_size=CHUNK_ROWS):
                if context.stop.is_set():
                    if writer is not None:
                        writer.close()
                    with Session(context.engine) as session:
                        jobs.release(session, claim)
                    return "released"
                with context.engine.begin() as conn:
                    if jobs.check_job(conn, claim, context.lease_seconds):
                        if writer is not None:
                            writer.close()
                        with Session(context.engine) as session:
                            jobs.finish_job(
                                session, claim, JobStatus.CANCELLED, error="cancelled by its owner"
                            )
                        return "cancelled"
                frame = frame_for_model(model, batch.to_pandas())
                table = pa.table(_columns(model, frame))
                if writer is None:
                    writer = pq.ParquetWriter(scratch, table.schema)
                writer.write_table(table)
                rows += len(frame)
        if writer is None:
            raise BatchFailed("the dataset version holds no rows")
        writer.close()
        with open(scratch, "rb") as output:
            size = context.storage.save(key, output)
        location = context.storage.location(key)
    finally:
        os.unlink(scratch)
    recorded = False
    try:
        with Session(context.engine) as session:
            # Counted in the user's storage from the moment the file is there.
            deployments.record_batch_output(
                session, job_id=claim.id, user_id=claim.user_id, location=location, size_bytes=size
            )
            session.commit()
            recorded = True
            jobs.finish_job(
                session,
                claim,
                JobStatus.COMPLETED,
                results={
                    "output": location,
                    "rows": rows,
                    "bytes": size,
                    "model_version_id": str(version_id),
                },
            )
    except Exception:
        context.storage.delete(location)
        if recorded:
            with Session(context.engine) as session:
                deployments.forget_batch_output(session, claim.id)
                session.commit()
        raise
    log.info("batch %s: %d rows scored into %s", claim.id, rows, location)
    return "completed"
