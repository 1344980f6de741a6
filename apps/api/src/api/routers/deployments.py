"""Deployments: create, list, read, stop; predict; batch predictions (docs/serving.md).

The rules are :mod:`database.deployments`'; a prediction is :mod:`api.serving`'s
(answered here in process, or forwarded to ``automl-serve`` when ``SERVING_URL`` is
set). Another user's deployment is answered like a missing one (404).
``GET /deployments/{id}/requests`` is the metering router's (``routers/usage.py``).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, Request, Response
from pydantic import Field, StrictInt, StringConstraints, model_validator
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.deps import Reader, SessionDep, SessionFactoryDep, SettingsDep, StorageDep, Writer
from api.errors import ApiError, error_responses, not_found
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.schemas import Input, Name, Output
from api.serving import proxy
from api.serving.service import Predictor, respond
from api.storage import safe_filename
from database import deployments
from database.models import (
    Deployment,
    DeploymentStatus,
    Job,
    JobKind,
    JobStatus,
    WorkflowSnapshot,
)
from database.models.deployment import MAX_BATCH_ROWS, MAX_TIMEOUT_MS
from database.models.model_alias import ALIAS_PATTERN


@asynccontextmanager
async def _lifespan(app: Any) -> AsyncIterator[None]:
    """A graceful shutdown writes the predictor's buffered request log."""
    try:
        yield
    finally:
        found: Predictor | None = getattr(app.state, "predictor", None)
        if found is not None:
            await run_in_threadpool(found.close)


router = APIRouter(prefix="/deployments", tags=["deployments"], lifespan=_lifespan)

Alias = Annotated[str, StringConstraints(pattern=ALIAS_PATTERN)]


class DeploymentConfig(Input):
    """Limits of a deployment: rows per request (and per batch chunk), and a time."""

    max_batch_rows: StrictInt | None = Field(default=None, ge=1, le=MAX_BATCH_ROWS)
    timeout_ms: StrictInt | None = Field(default=None, ge=1, le=MAX_TIMEOUT_MS)


class DeploymentIn(Input):
    """``{"name", "model_version_id"}`` or ``{"name", "registered_model_id", "alias"}``."""

    name: Name
    model_version_id: uuid.UUID | None = None
    registered_model_id: uuid.UUID | None = None
    alias: Alias | None = None
    config: DeploymentConfig | None = None

    @model_validator(mode="after")
    def _one_target(self) -> DeploymentIn:
        by_version = self.model_version_id is not None
        by_alias = self.registered_model_id is not None or self.alias is not None
        if by_version == by_alias or (
            by_alias and (self.registered_model_id is None or self.alias is None)
        ):
            raise ValueError('give either "model_version_id", or "registered_model_id" and "alias"')
        return self


class DeploymentOut(Output):
    id: uuid.UUID
    name: str
    status: DeploymentStatus
    model_version_id: uuid.UUID | None
    registered_model_id: uuid.UUID | None
    alias: str | None
    config: dict[str, Any]
    error_message: str | None
    created_at: dt.datetime
    updated_at: dt.datetime


class BatchIn(Input):
    dataset_version_id: uuid.UUID


class BatchOut(Output):
    job_id: uuid.UUID
    status: JobStatus
    credit_cost: int
    model_version_id: uuid.UUID | None = None
    rows: int | None = None
    output_bytes: int | None = None
    error_message: str | None = None
    created_at: dt.datetime
    completed_at: dt.datetime | None = None


@router.post(
    "",
    status_code=201,
    response_model=DeploymentOut,
    responses=error_responses(401, 403, 404, 409, 422),
    summary="Deploy a model version, or an alias of a registered model",
)
def create_deployment(principal: Writer, session: SessionDep, body: DeploymentIn) -> DeploymentOut:
    """The model's owner, or a user granted ``deploy`` on it, may deploy it; the
    deployment is the caller's, who pays for its predictions. ``active`` at once when
    the version can be served here, ``failed`` with ``error_message`` otherwise."""
    config = body.config.model_dump(exclude_none=True) if body.config else {}
    deployment = deployments.create(
        session,
        principal.user_id,
        body.name,
        model_version_id=body.model_version_id,
        registered_model_id=body.registered_model_id,
        alias=body.alias,
        config=config,
    )
    session.commit()
    return DeploymentOut.model_validate(deployment)


@router.get(
    "",
    response_model=Page[DeploymentOut],
    responses=error_responses(401, 403, 422),
    summary="The caller's deployments, newest first",
)
def list_deployments(
    principal: Reader,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[DeploymentOut]:
    rows, next_cursor = paginate(
        session,
        select(Deployment).where(Deployment.user_id == principal.user_id),
        Deployment.created_at,
        Deployment.id,
        limit=limit,
        cursor=cursor,
    )
    return Page[DeploymentOut](
        items=[DeploymentOut.model_validate(d) for d in rows], next_cursor=next_cursor
    )


@router.get(
    "/{deployment_id}",
    response_model=DeploymentOut,
    responses=error_responses(401, 403, 404, 422),
    summary="A deployment",
)
def get_deployment(
    principal: Reader, session: SessionDep, deployment_id: uuid.UUID
) -> DeploymentOut:
    return DeploymentOut.model_validate(deployments.get(session, principal.user_id, deployment_id))


@router.post(
    "/{deployment_id}/stop",
    response_model=DeploymentOut,
    responses=error_responses(401, 403, 404, 409, 422),
    summary="Stop a deployment (final)",
)
def stop_deployment(
    principal: Writer, session: SessionDep, deployment_id: uuid.UUID
) -> DeploymentOut:
    deployment = deployments.stop(session, principal.user_id, deployment_id)
    session.commit()
    return DeploymentOut.model_validate(deployment)


_PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "description": 'One of {"records": [...]}, {"dataframe_records": [...]},'
                ' {"dataframe_split": {"columns": [...], "data": [[...]]}},'
                ' {"instances": [...]}, {"inputs": [...]}',
            }
        },
        "text/csv": {"schema": {"type": "string"}},
        "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
    },
}


def predictor(request: Request) -> Predictor:
    """The app's predictor (its model cache), made on first use."""
    found: Predictor | None = getattr(request.app.state, "predictor", None)
    if found is None:
        settings = request.app.state.settings
        found = Predictor(request.app.state.storage.backend, settings.serve_cache_bytes)
        request.app.state.predictor = found
    return found


@router.post(
    "/{deployment_id}/predict",
    responses={
        200: {
            "description": '{"predictions": [...], "probabilities": [{class: p}, ...]'
            ' (classifiers), "model_version_id"}',
            "content": {"application/json": {"schema": {"type": "object"}}},
        },
        **error_responses(401, 402, 403, 404, 409, 413, 415, 422, 429, 503, 504),
    },
    openapi_extra={"x-body-limit": "predict", "requestBody": _PREDICT_BODY},
    summary="Predict with a deployment",
)
async def predict(
    deployment_id: uuid.UUID,
    request: Request,
    settings: SettingsDep,
    factory: SessionFactoryDep,
) -> Response:
    """JSON records (null is a missing value), MLflow's shapes, CSV or Parquet; the
    input is checked against the version's signature (422 naming missing columns and
    wrong types; unknown columns are ignored). 409 for a deployment that is not
    active; 402 / 429 before the model runs (credits, the key's quotas); 504
    ``prediction_timeout`` past the deployment's ``timeout_ms``; 503 while the database
    is unavailable. Forwarded to ``automl-serve`` when ``SERVING_URL`` is set."""
    if settings.serving_url:
        return await proxy.forward(request, settings.serving_url)
    return await respond(predictor(request), factory, request, deployment_id)


# --- batch predictions ------------------------------------------------------------------------
def _batch_out(job: Job) -> BatchOut:
    results = job.results or {}
    snapshot_version = results.get("model_version_id")
    return BatchOut(
        job_id=job.id,
        status=job.status,
        credit_cost=job.credit_cost,
        model_version_id=uuid.UUID(snapshot_version) if snapshot_version else None,
        rows=results.get("rows"),
        output_bytes=results.get("bytes"),
        error_message=job.error_message,
        created_at=job.created_at,
        completed_at=job.completed_at,
    )


@router.post(
    "/{deployment_id}/batch",
    status_code=202,
    response_model=BatchOut,
    responses=error_responses(401, 402, 403, 404, 409, 422),
    summary="Score a dataset version with a deployment (a job), into Parquet",
)
def create_batch(
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
    deployment_id: uuid.UUID,
    body: BatchIn,
) -> BatchOut:
    """A ``batch_prediction`` job, charged like any job (``PRICING__BASE_CREDITS`` plus
    ``PRICING__BATCH_CREDITS_PER_10K_ROWS`` per started 10,000 rows). Follow it with
    ``GET /v1/jobs/{job_id}`` or ``GET /v1/deployments/{id}/batch/{job_id}``; the
    Parquet file (the dataset's columns and ``prediction``, plus ``probability_<class>``
    for a classifier) is at ``.../output`` once completed."""
    job = deployments.enqueue_batch(
        session,
        principal.user_id,
        deployment_id,
        body.dataset_version_id,
        base_credits=settings.pricing.base_credits,
        credits_per_10k_rows=settings.pricing.batch_credits_per_10k_rows,
    )
    session.commit()
    return _batch_out(job)


def _batch_job(
    session: Any, user_id: uuid.UUID, deployment_id: uuid.UUID, job_id: uuid.UUID
) -> Job:
    deployments.get(session, user_id, deployment_id)
    job = session.scalar(
        select(Job)
        .join(WorkflowSnapshot, WorkflowSnapshot.id == Job.workflow_snapshot_id)
        .where(Job.id == job_id, Job.user_id == user_id, Job.kind == JobKind.BATCH_PREDICTION)
        .where(
            WorkflowSnapshot.snapshot_data["batch_prediction"]["deployment_id"].astext
            == str(deployment_id)
        )
    )
    if job is None:
        raise not_found("batch")
    return job


@router.get(
    "/{deployment_id}/batch/{job_id}",
    response_model=BatchOut,
    responses=error_responses(401, 403, 404, 422),
    summary="A batch prediction of a deployment",
)
def get_batch(
    principal: Reader, session: SessionDep, deployment_id: uuid.UUID, job_id: uuid.UUID
) -> BatchOut:
    return _batch_out(_batch_job(session, principal.user_id, deployment_id, job_id))


@router.get(
    "/{deployment_id}/batch/{job_id}/output",
    response_class=Response,
    responses={
        200: {
            "description": "The predictions, as Parquet",
            "content": {
                "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        307: {"description": "Redirect to a short-lived download URL (S3 storage)"},
        **error_responses(401, 403, 404, 409, 422),
    },
    summary="Download a batch prediction's Parquet file",
)
def download_batch(
    principal: Reader,
    session: SessionDep,
    storage: StorageDep,
    deployment_id: uuid.UUID,
    job_id: uuid.UUID,
) -> Response:
    job = _batch_job(session, principal.user_id, deployment_id, job_id)
    location = (job.results or {}).get("output")
    if job.status != JobStatus.COMPLETED or not location:
        raise ApiError(409, "batch_not_ready", f"the batch is {job.status}: no output to download")
    answer = storage.download(location, safe_filename(f"predictions-{job.id}.parquet"))
    if answer is None:
        raise ApiError(404, "output_not_found", "the batch's output is not in storage")
    return answer
