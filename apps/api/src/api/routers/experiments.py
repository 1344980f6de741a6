"""Experiments: groups of runs (a job, the model it made) whose metrics are compared."""

from __future__ import annotations

import math
import uuid
from typing import Any

from fastapi import APIRouter, status
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import Reader, SessionDep, Writer
from api.errors import ApiError, error_responses, not_found
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.schemas import (
    Comparison,
    ExperimentDetail,
    ExperimentIn,
    ExperimentOut,
    ExperimentRunIn,
    ExperimentRunOut,
)
from database.models import Dataset, Experiment, ExperimentRun, Job, Model

router = APIRouter(prefix="/experiments", tags=["experiments"])

#: Metrics where lower is better; any other numeric metric is ranked highest first.
LOWER_IS_BETTER = {"rmse", "mse", "mae", "mape", "loss", "log_loss", "logloss", "error", "brier"}


def direction(metric: str) -> str:
    name = metric.lower()
    if name in LOWER_IS_BETTER or name.endswith(("_error", "_loss", "_rmse", "_mae", "_mse")):
        return "min"
    return "max"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def compare(experiment: Experiment, runs: list[ExperimentRun]) -> Comparison:
    names = sorted(
        {k for r in runs for k, v in (r.metrics or {}).items() if _number(v) is not None}
    )
    metric = experiment.primary_metric or (names[0] if names else None)
    if metric is None:
        return Comparison(metric=None, direction=None, ranking=[], best_run_id=None, metrics=names)
    way = direction(metric)
    scored = [(v, r) for r in runs if (v := _number((r.metrics or {}).get(metric))) is not None]
    scored.sort(key=lambda p: (-p[0] if way == "max" else p[0], p[1].created_at, p[1].id))
    ranking = [r.id for _, r in scored]
    return Comparison(
        metric=metric,
        direction=way,  # type: ignore[arg-type]
        ranking=ranking,
        best_run_id=ranking[0] if ranking else None,
        metrics=names,
    )


def _owned(session: Session, user_id: uuid.UUID, experiment_id: uuid.UUID) -> Experiment:
    experiment = session.scalars(
        select(Experiment).where(Experiment.id == experiment_id, Experiment.user_id == user_id)
    ).one_or_none()
    if experiment is None:
        raise not_found("experiment")
    return experiment


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentOut,
    responses=error_responses(401, 403, 404, 422),
    summary="Create an experiment",
)
def create_experiment(principal: Writer, session: SessionDep, body: ExperimentIn) -> ExperimentOut:
    """``dataset_id``, when given, must be one of the caller's datasets (404 otherwise)."""
    if body.dataset_id is not None:
        found = session.scalar(
            select(Dataset.id).where(
                Dataset.id == body.dataset_id, Dataset.user_id == principal.user_id
            )
        )
        if found is None:
            raise not_found("dataset")
    experiment = Experiment(user_id=principal.user_id, **body.model_dump())
    session.add(experiment)
    session.flush()
    session.commit()
    return ExperimentOut.model_validate(experiment)


@router.get(
    "",
    response_model=Page[ExperimentOut],
    responses=error_responses(401, 403, 422),
    summary="The caller's experiments, newest first",
)
def list_experiments(
    principal: Reader,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[ExperimentOut]:
    """The caller's experiments, newest first (keyset pagination)."""
    rows, next_cursor = paginate(
        session,
        select(Experiment).where(Experiment.user_id == principal.user_id),
        Experiment.created_at,
        Experiment.id,
        limit=limit,
        cursor=cursor,
    )
    return Page[ExperimentOut](
        items=[ExperimentOut.model_validate(e) for e in rows], next_cursor=next_cursor
    )


@router.get(
    "/{experiment_id}",
    response_model=ExperimentDetail,
    responses=error_responses(401, 403, 404, 422),
    summary="An experiment, its runs and how their metrics compare",
)
def get_experiment(
    principal: Reader, session: SessionDep, experiment_id: uuid.UUID
) -> ExperimentDetail:
    """An experiment with its runs and their comparison: the runs ranked by the experiment's metric,
    best first."""
    experiment = _owned(session, principal.user_id, experiment_id)
    runs = list(
        session.scalars(
            select(ExperimentRun)
            .where(
                ExperimentRun.experiment_id == experiment.id,
                ExperimentRun.user_id == principal.user_id,
            )
            .order_by(ExperimentRun.created_at, ExperimentRun.id)
        )
    )
    return ExperimentDetail(
        **ExperimentOut.model_validate(experiment).model_dump(),
        runs=[ExperimentRunOut.model_validate(r) for r in runs],
        comparison=compare(experiment, runs),
    )


@router.post(
    "/{experiment_id}/runs",
    status_code=status.HTTP_201_CREATED,
    response_model=ExperimentRunOut,
    responses=error_responses(401, 403, 404, 409, 422),
    summary="Record a run (a model, its job, or both) in an experiment",
)
def add_run(
    principal: Writer, session: SessionDep, experiment_id: uuid.UUID, body: ExperimentRunIn
) -> ExperimentRunOut:
    """The model's metrics are copied into the run, so the comparison outlives the
    model. The model's job is recorded when no job is given. A model already in the
    experiment: 409 ``run_exists``. Another user's model or job is a missing one: 404."""
    experiment = _owned(session, principal.user_id, experiment_id)
    model = None
    if body.model_id is not None:
        model = session.scalars(
            select(Model).where(Model.id == body.model_id, Model.user_id == principal.user_id)
        ).one_or_none()
        if model is None:
            raise not_found("model")
        dup = session.scalar(
            select(ExperimentRun.id).where(
                ExperimentRun.experiment_id == experiment.id,
                ExperimentRun.model_id == model.id,
            )
        )
        if dup is not None:
            raise ApiError(409, "run_exists", "this model is already in the experiment")
    job = None
    job_id = body.job_id if body.job_id is not None else (model.job_id if model else None)
    if job_id is not None:
        job = session.scalars(
            select(Job).where(Job.id == job_id, Job.user_id == principal.user_id)
        ).one_or_none()
        if job is None:
            raise not_found("job")
    metrics: dict[str, Any] | None = None
    if model is not None:
        metrics = dict(model.metrics)
    elif job is not None and isinstance((job.results or {}).get("metrics"), dict):
        metrics = dict((job.results or {})["metrics"])
    run = ExperimentRun(
        experiment_id=experiment.id,
        user_id=principal.user_id,
        job_id=job.id if job else None,
        model_id=model.id if model else None,
        name=body.name or (model.name if model else None),
        notes=body.notes,
        metrics=metrics,
    )
    session.add(run)
    session.flush()
    session.commit()
    return ExperimentRunOut.model_validate(run)
