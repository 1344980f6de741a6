"""Trained models: list, detail with metrics and hyperparameters, artifact download."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, Response
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import Downloader, Reader, SessionDep, StorageDep
from api.errors import ApiError, error_responses, not_found
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.schemas import ModelDetail, ModelOut
from api.storage import safe_filename
from database import audit
from database.models import AuditOutcome, Model

router = APIRouter(prefix="/models", tags=["models"])


def _owned(session: Session, user_id: uuid.UUID, model_id: uuid.UUID) -> Model:
    model = session.scalars(
        select(Model).where(Model.id == model_id, Model.user_id == user_id)
    ).one_or_none()
    if model is None:
        raise not_found("model")
    return model


def _out(model: Model) -> ModelOut:
    return ModelOut.model_validate(model).model_copy(update={"has_artifact": bool(model.s3_path)})


@router.get(
    "",
    response_model=Page[ModelOut],
    responses=error_responses(401, 403, 422),
    summary="The caller's trained models, newest first",
)
def list_models(
    principal: Reader,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[ModelOut]:
    """The caller's trained models, newest first (keyset pagination). Register one in the model
    registry to version, share and deploy it."""
    rows, next_cursor = paginate(
        session,
        select(Model).where(Model.user_id == principal.user_id),
        Model.created_at,
        Model.id,
        limit=limit,
        cursor=cursor,
    )
    return Page[ModelOut](items=[_out(m) for m in rows], next_cursor=next_cursor)


@router.get(
    "/{model_id}",
    response_model=ModelDetail,
    responses=error_responses(401, 403, 404, 422),
    summary="A model, with its metrics and hyperparameters",
)
def get_model(principal: Reader, session: SessionDep, model_id: uuid.UUID) -> ModelDetail:
    """A trained model of the caller's with its metrics on the held-out rows and the hyperparameters
    it was trained with."""
    model = _owned(session, principal.user_id, model_id)
    return ModelDetail(
        **_out(model).model_dump(),
        metrics=model.metrics,
        hyperparameters=model.hyperparameters,
    )


@router.get(
    "/{model_id}/artifact",
    response_class=Response,
    responses={
        200: {
            "description": "The model file",
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        },
        307: {"description": "Redirect to a short-lived download URL (S3 storage)"},
        **error_responses(401, 403, 404, 422),
    },
    summary="Download a model's artifact",
)
def download_artifact(
    principal: Downloader, session: SessionDep, storage: StorageDep, model_id: uuid.UUID
) -> Response:
    """The file itself from local storage, or a redirect to S3. 404
    ``artifact_not_found`` when the model has no artifact (yet) or it is gone."""
    model = _owned(session, principal.user_id, model_id)
    if not model.s3_path:
        raise ApiError(404, "artifact_not_found", "this model has no artifact")
    name = safe_filename(model.s3_path.rsplit("/", 1)[-1], default=f"model-{model.id}")
    answer = storage.download(model.s3_path, name)
    # A read that matters: recorded (with the request's actor) before the answer goes.
    audit.record(
        session,
        "model.downloaded",
        "model",
        model.id,
        AuditOutcome.SUCCESS if answer is not None else AuditOutcome.FAILED,
        {"file": name} if answer is not None else {"reason": "artifact_not_in_storage"},
        subject_user_id=model.user_id,
    )
    session.commit()
    if answer is None:
        raise ApiError(404, "artifact_not_found", "the model's artifact is not in storage")
    return answer
