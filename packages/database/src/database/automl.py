"""AutoML searches: each search is an experiment, each of its trials an experiment run.

The worker calls these from the parent process as the job's child reports the trials
of an ``automl`` node (``workers.execution``); the search itself is
``pipeline.automl``'s. One search, one :class:`Experiment` (``primary_metric`` the
searched metric, ``dataset_id`` the dataset searched on); one trial, one
:class:`ExperimentRun` linked to the job (``job_id``) with its number, learner and
hyperparameters (``parameters``), cross-validated score (``metrics``), seconds and
status. A trial is written as soon as it is reported, in its own transaction, so a
cancelled or failed job keeps every trial that finished before it ended, and
:func:`best_trial` names the best of them.

Lineage: a trial is a run, not a model version, so ``model_lineage`` (whose parents
are versions, dataset versions, snapshots and jobs) cannot point at it. A version
made from a search's model is ``produced_by`` its job, and the job's experiment runs
are the trials: version -> job -> runs is the path, every trial on it.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from database.models import Experiment, ExperimentRun, ExperimentRunStatus, ProblemType

#: Longest experiment and run names (the columns are text; names stay readable).
MAX_NAME = 200


def start_search(
    session: Session,
    *,
    user_id: uuid.UUID,
    job_id: uuid.UUID,
    node_id: str,
    metric: str | None,
    dataset_id: uuid.UUID | None = None,
    problem_type: ProblemType | str | None = None,
) -> uuid.UUID:
    """The experiment of an automl node's search in job ``job_id``; commits."""
    experiment = Experiment(
        user_id=user_id,
        name=f"automl {node_id} of job {job_id}"[:MAX_NAME],
        description="Trials of an automl search, one run each (recorded by the worker).",
        problem_type=None if problem_type is None else ProblemType(problem_type),
        dataset_id=dataset_id,
        primary_metric=metric,
    )
    session.add(experiment)
    session.commit()
    return experiment.id


def _float(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def record_trial(
    session: Session,
    *,
    experiment_id: uuid.UUID,
    user_id: uuid.UUID,
    job_id: uuid.UUID,
    record: Mapping[str, Any],
) -> uuid.UUID:
    """One trial (``pipeline.automl``'s record: number, learner, config, metric, score,
    loss, fold scores, seconds, status) as a run of ``experiment_id``; commits."""
    number = int(record["number"])
    metric = str(record.get("metric") or "score")
    metrics: dict[str, Any] = {}
    score = _float(record.get("score"))
    if score is not None:
        metrics[metric] = score
    loss = _float(record.get("loss"))
    if loss is not None:
        metrics["loss"] = loss
    for key, value in dict(record.get("logged") or {}).items():
        if _float(value) is not None and key not in metrics:
            metrics[str(key)] = _float(value)
    seconds = _float(record.get("seconds"))
    folds = record.get("fold_scores")
    fold_scores = (
        [_float(v) if _float(v) is None or math.isfinite(float(v)) else None for v in folds]
        if isinstance(folds, list | tuple) and folds
        else None
    )
    failed = record.get("status") == ExperimentRunStatus.FAILED.value
    run = ExperimentRun(
        experiment_id=experiment_id,
        user_id=user_id,
        job_id=job_id,
        name=f"trial {number}: {record.get('learner')}"[:MAX_NAME],
        trial_number=number,
        parameters={
            "learner": record.get("learner"),
            "hyperparameters": dict(record.get("config") or {}),
            "sample_size": record.get("sample_size"),
        },
        metrics=metrics,
        duration_seconds=None if seconds is None else max(0.0, seconds),
        fold_scores=fold_scores,
        status=ExperimentRunStatus.FAILED if failed else ExperimentRunStatus.FINISHED,
    )
    session.add(run)
    session.commit()
    return run.id


def best_trial(session: Session, experiment_id: uuid.UUID) -> ExperimentRun | None:
    """The finished trial with the best score of the experiment's metric (highest, or
    lowest for a loss-like metric: log_loss, rmse, mae, mse); ties to the earliest."""
    experiment = session.get(Experiment, experiment_id)
    if experiment is None or experiment.primary_metric is None:
        return None
    metric = experiment.primary_metric
    value = ExperimentRun.metrics[metric].as_float()
    lower = metric in {"log_loss", "rmse", "mae", "mse"}
    return session.scalars(
        select(ExperimentRun)
        .where(
            ExperimentRun.experiment_id == experiment_id,
            ExperimentRun.status == ExperimentRunStatus.FINISHED,
            ExperimentRun.metrics.has_key(metric),
        )
        .order_by(value.asc() if lower else value.desc(), ExperimentRun.trial_number)
        .limit(1)
    ).one_or_none()


def attach_model(
    session: Session, experiment_id: uuid.UUID, run_id: uuid.UUID, model_id: uuid.UUID
) -> None:
    """The saved model of the search is the best trial's (``run_id``); commits."""
    session.execute(
        update(ExperimentRun)
        .where(ExperimentRun.id == run_id, ExperimentRun.experiment_id == experiment_id)
        .values(model_id=model_id)
    )
    session.commit()


__all__ = ["attach_model", "best_trial", "record_trial", "start_search"]
