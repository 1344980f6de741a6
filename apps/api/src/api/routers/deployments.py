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
from pydantic import ConfigDict, Field, StrictInt, StringConstraints, model_validator
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from api.deps import Reader, SessionDep, SessionFactoryDep, SettingsDep, StorageDep, Writer
from api.errors import ApiError, error_responses, not_found
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.policy import batch_quote
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
    """Rows at most per prediction request (and per chunk of a batch); null: the server's
    default."""
    timeout_ms: StrictInt | None = Field(default=None, ge=1, le=MAX_TIMEOUT_MS)
    """Milliseconds a prediction may take before it is answered 504; null: the server's default."""


class DeploymentIn(Input):
    """``{"name", "model_version_id"}`` or ``{"name", "registered_model_id", "alias"}``."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "churn-prod",
                    "registered_model_id": "3f2b8c1e-5a4d-4c2e-9b7a-1d2e3f4a5b6c",
                    "alias": "production",
                    "config": {"max_batch_rows": 1000, "timeout_ms": 2000},
                }
            ]
        }
    )

    name: Name
    """The deployment's name."""
    model_version_id: uuid.UUID | None = None
    """Deploy this model version (fixed)."""
    registered_model_id: uuid.UUID | None = None
    """Deploy the version an alias of this registered model points at (with alias)."""
    alias: Alias | None = None
    """The alias followed, e.g. production: moving it redeploys."""
    config: DeploymentConfig | None = None
    """Limits of the deployment."""

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
    """A deployment: a model version served for predictions."""

    id: uuid.UUID
    """The deployment's id (UUID)."""
    name: str
    """The deployment's name."""
    status: DeploymentStatus
    """pending, active, failed or stopped: only an active one predicts."""
    model_version_id: uuid.UUID | None
    """The model version served."""
    registered_model_id: uuid.UUID | None
    """The registered model, when deployed by alias."""
    alias: str | None
    """The alias followed, if any."""
    config: dict[str, Any]
    """Its limits (max_batch_rows, timeout_ms)."""
    error_message: str | None
    """Why it failed."""
    created_at: dt.datetime
    """When the deployment was created (UTC)."""
    updated_at: dt.datetime
    """When the deployment last changed (UTC)."""


class BatchIn(Input):
    """A batch prediction over a dataset version."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"dataset_version_id": "3f2b8c1e-5a4d-4c2e-9b7a-1d2e3f4a5b6c"}]
        }
    )

    dataset_version_id: uuid.UUID
    """The rows to predict (a completed dataset version of the caller's)."""


class BatchOut(Output):
    """A batch prediction job."""

    job_id: uuid.UUID
    """The job."""
    status: JobStatus
    """pending, queued, running, completed, failed or cancelled."""
    credit_cost: int
    """Credits charged for it."""
    model_version_id: uuid.UUID | None = None
    """The model version that predicts."""
    rows: int | None = None
    """Rows predicted (when done)."""
    output_bytes: int | None = None
    """Size of the output file (when done)."""
    error_message: str | None = None
    """Why it failed."""
    created_at: dt.datetime
    """When it was queued (UTC)."""
    completed_at: dt.datetime | None = None
    """When it ended."""


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
    """The caller's deployments, newest first, stopped ones included (keyset pagination)."""
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
    """A deployment of the caller's: the model version it serves, its status and limits. 404 when it
    is not the caller's."""
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
    """Stops the deployment for good: it answers no more predictions and the model no longer counts
    as deployed. Stopping a stopped one returns it unchanged; a failed one cannot be stopped
    (409)."""
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
            },
            "example": {"records": [{"age": 42, "plan": "pro", "monthly_spend": 59.5}]},
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
    """A ``batch_prediction`` job, charged like any job, by the caller's price book:
    the ``job`` sku plus ``batch_rows`` for each started 1,000 rows (``GET
    /v1/price-book``). Follow it with ``GET /v1/jobs/{job_id}`` or ``GET
    /v1/deployments/{id}/batch/{job_id}``; the Parquet file (the dataset's columns and
    ``prediction``, plus ``probability_<class>`` for a classifier) is at ``.../output``
    once completed."""
    tier = principal.user.tier
    job = deployments.enqueue_batch(
        session,
        principal.user_id,
        deployment_id,
        body.dataset_version_id,
        quote=lambda rows: batch_quote(session, tier, rows),
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
    """A batch prediction of the deployment: its status, cost, and once done the rows predicted and
    the output's size."""
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
    """The batch prediction's output, a Parquet file with the input's rows and a `prediction`
    column. 409 while the job has not completed."""
    job = _batch_job(session, principal.user_id, deployment_id, job_id)
    location = (job.results or {}).get("output")
    if job.status != JobStatus.COMPLETED or not location:
        raise ApiError(409, "batch_not_ready", f"the batch is {job.status}: no output to download")
    answer = storage.download(location, safe_filename(f"predictions-{job.id}.parquet"))
    if answer is None:
        raise ApiError(404, "output_not_found", "the batch's output is not in storage")
    return answer
