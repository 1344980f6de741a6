"""Evaluation's rules, in one place (issue 15; docs/evaluation.md).

The API and the worker call these functions; each runs in the caller's session and
transaction (it flushes, the caller commits) unless it says otherwise. The database
holds what must hold for any client (``sql/triggers/evaluation.sql``, the CHECKs of
``evaluation_criteria``): a dataset's target and ignored columns are columns of its
current version (ML115, ML116), per-row results are written once (ML117), a run's
results are written once (ML118). This module adds what needs a decision:

- **datasets**: :func:`update_dataset` (name, target column, problem type, ignored
  columns, checked against the current version's columns with messages naming the
  column; the trigger is the backstop);
- **criteria**: :func:`create_criterion`, :func:`criteria_snapshot` (the caller's
  criteria as a run keeps them);
- **runs**: :func:`start_evaluation` (the model version readable by the caller
  through :func:`database.registry.can`, the caller's ingested dataset version, the
  job queued and charged through :func:`database.jobs.enqueue_run`, the run row, one
  transaction), :func:`write_row_results` (COPY), :func:`record_results`, and
  :func:`failing_rows_after` (keyset over the failing rows' partial index).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from database import jobs, registry
from database.models import (
    Dataset,
    DatasetVersion,
    EvaluationCriterion,
    EvaluationRowResult,
    EvaluationRun,
    IngestionStatus,
    Job,
    JobKind,
    Model,
    ModelPermission,
    ModelVersion,
    ProblemType,
)
from database.models.enums import CriterionKind, CriterionOperator, RowRule

#: Criteria one run may test at most (``ck_evaluation_runs_criteria_shape``).
MAX_CRITERIA = 100
#: Column kinds (``pipeline.profile.column_kind``) a regression target may have.
REGRESSION_KINDS = frozenset({"numeric"})
#: The COPY columns of ``evaluation_row_results``, in order.
ROW_COLUMNS = (
    "evaluation_run_id",
    "row_index",
    "prediction",
    "actual",
    "score",
    "error",
    "criteria_passed",
    "passed",
)


class EvaluationProblem(Exception):
    """A request evaluation refuses: ``status`` (404, 409, 422), a stable ``code``, a
    message for the user and ``details``."""

    def __init__(
        self, status: int, code: str, message: str, details: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})


def _not_found(what: str) -> EvaluationProblem:
    return EvaluationProblem(404, "not_found", f"{what} not found")


# --- datasets ---------------------------------------------------------------------------
def version_columns(version: DatasetVersion | None) -> dict[str, str] | None:
    """``{column name: kind}`` of an ingested version, or None while unknown."""
    if version is None or not isinstance(version.columns_metadata, dict):
        return None
    columns = version.columns_metadata.get("columns")
    if not isinstance(columns, list):
        return None
    return {str(c.get("name")): str(c.get("kind") or "") for c in columns if isinstance(c, dict)}


def dataset_problems(
    columns: Mapping[str, str],
    *,
    target_column: str | None,
    problem_type: ProblemType | None,
    ignored_columns: Sequence[str],
) -> list[dict[str, Any]]:
    """What is wrong with these settings for a version with ``columns``: a list of
    ``{"field", "code", "message", "column"?}`` (empty: fine)."""
    found: list[dict[str, Any]] = []
    if target_column is not None and target_column not in columns:
        found.append(
            {
                "field": "target_column",
                "code": "target_not_a_column",
                "column": target_column,
                "message": f"target column {target_column!r} is not a column of the current"
                " version",
            }
        )
    unknown = [c for c in ignored_columns if c not in columns]
    if unknown:
        found.append(
            {
                "field": "ignored_columns",
                "code": "ignored_columns_invalid",
                "columns": unknown,
                "message": "ignored columns that are not columns of the current version: "
                + ", ".join(repr(c) for c in unknown[:20]),
            }
        )
    if target_column is not None and target_column in ignored_columns:
        found.append(
            {
                "field": "ignored_columns",
                "code": "ignored_columns_invalid",
                "columns": [target_column],
                "message": f"the target column {target_column!r} cannot be ignored",
            }
        )
    if (
        problem_type == ProblemType.REGRESSION
        and target_column is not None
        and target_column in columns
        and columns[target_column] not in REGRESSION_KINDS
    ):
        found.append(
            {
                "field": "problem_type",
                "code": "problem_type_mismatch",
                "column": target_column,
                "message": f"regression needs a numeric target; {target_column!r} is"
                f" {columns[target_column] or 'not numeric'}",
            }
        )
    return found


def update_dataset(session: Session, dataset: Dataset, changes: Mapping[str, Any]) -> Dataset:
    """Apply ``changes`` (any of ``name``, ``target_column``, ``problem_type``,
    ``ignored_columns``; a key present with None clears it) to ``dataset``, locked
    by the caller. Column settings are checked against the current version's columns:
    422 naming the column; 409 ``columns_unknown`` while the current version is not
    ingested (there is nothing to check them against)."""
    target = changes.get("target_column", dataset.target_column)
    problem = changes.get("problem_type", dataset.problem_type)
    problem = ProblemType(problem) if problem is not None else None
    ignored = list(changes.get("ignored_columns", dataset.ignored_columns) or [])
    if len(set(ignored)) != len(ignored):
        raise EvaluationProblem(
            422, "ignored_columns_invalid", "ignored_columns lists a column twice"
        )
    touches_columns = {"target_column", "problem_type", "ignored_columns"} & set(changes)
    if touches_columns:
        version = (
            session.get(DatasetVersion, dataset.current_version_id)
            if dataset.current_version_id
            else None
        )
        columns = version_columns(version)
        if columns is None:
            raise EvaluationProblem(
                409,
                "columns_unknown",
                "the dataset's current version is not ingested yet: its columns are unknown",
                {"status": version.status.value if version else None},
            )
        problems = dataset_problems(
            columns, target_column=target, problem_type=problem, ignored_columns=ignored
        )
        if problems:
            first = problems[0]
            raise EvaluationProblem(422, first["code"], first["message"], {"problems": problems})
    if "name" in changes:
        dataset.name = changes["name"]
    if "target_column" in changes:
        dataset.target_column = target
    if "problem_type" in changes:
        dataset.problem_type = problem
    if "ignored_columns" in changes:
        dataset.ignored_columns = ignored
    session.flush()
    return dataset


# --- criteria ---------------------------------------------------------------------------
def create_criterion(
    session: Session,
    user_id: uuid.UUID,
    *,
    name: str,
    kind: CriterionKind | str,
    metric: str | None = None,
    operator: CriterionOperator | str | None = None,
    threshold: float | None = None,
    rule: RowRule | str | None = None,
    tolerance: float | None = None,
    slice: Mapping[str, Any] | None = None,
) -> EvaluationCriterion:
    """A new criterion of ``user_id``; the table's CHECKs refuse a wrong shape
    (``InvalidValue``), a name in use is ``AlreadyExists``."""
    criterion = EvaluationCriterion(
        user_id=user_id,
        name=name,
        kind=CriterionKind(kind),
        metric=metric,
        operator=CriterionOperator(operator) if operator is not None else None,
        threshold=threshold,
        rule=RowRule(rule) if rule is not None else None,
        tolerance=tolerance,
        slice=dict(slice) if slice is not None else None,
    )
    session.add(criterion)
    session.flush()
    return criterion


def criterion_dict(criterion: EvaluationCriterion) -> dict[str, Any]:
    """A criterion as a run keeps it (and :func:`pipeline.evaluate.score` reads it)."""
    return {
        "id": str(criterion.id),
        "name": criterion.name,
        "kind": criterion.kind.value,
        "metric": criterion.metric,
        "operator": criterion.operator.value if criterion.operator else None,
        "threshold": criterion.threshold,
        "rule": criterion.rule.value if criterion.rule else None,
        "tolerance": criterion.tolerance,
        "slice": criterion.slice,
    }


def criteria_snapshot(
    session: Session, user_id: uuid.UUID, criteria_ids: Sequence[uuid.UUID]
) -> list[dict[str, Any]]:
    """The caller's criteria ``criteria_ids`` in the order given; one that is not
    theirs (or does not exist) is a 404 naming it."""
    if len(criteria_ids) > MAX_CRITERIA:
        raise EvaluationProblem(422, "too_many_criteria", f"at most {MAX_CRITERIA} criteria")
    if len(set(criteria_ids)) != len(criteria_ids):
        raise EvaluationProblem(422, "duplicate_criteria", "criteria_ids lists a criterion twice")
    found = {
        c.id: c
        for c in session.scalars(
            select(EvaluationCriterion).where(
                EvaluationCriterion.user_id == user_id,
                EvaluationCriterion.id.in_(list(criteria_ids)),
            )
        )
    }
    missing = [str(i) for i in criteria_ids if i not in found]
    if missing:
        raise EvaluationProblem(
            404, "not_found", "evaluation criterion not found", {"criteria_ids": missing}
        )
    return [criterion_dict(found[i]) for i in criteria_ids]


# --- runs -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """What a run scores: the trained model's artifact and problem type, the target."""

    model_location: str
    problem_type: ProblemType
    target_column: str
    data_location: str


def readable_version(
    session: Session, user_id: uuid.UUID | None, model_version_id: uuid.UUID
) -> ModelVersion:
    """The model version if ``user_id`` may read it (:func:`registry.can`), else 404."""
    version = session.get(ModelVersion, model_version_id)
    if version is None or not registry.can(
        session, user_id, version.registered_model_id, ModelPermission.READ
    ):
        raise _not_found("model version")
    return version


def start_evaluation(
    session: Session,
    *,
    user_id: uuid.UUID,
    model_version_id: uuid.UUID,
    dataset_version_id: uuid.UUID,
    criteria_ids: Sequence[uuid.UUID],
    credit_cost: int,
) -> EvaluationRun:
    """Queue an evaluation: checks, then the job (charged ``credit_cost``) and its
    run, in the caller's transaction. 404 for a model version the caller may not
    read or a dataset version not theirs; 409 for a version not ingested or a model
    without a target to compare with; ``InsufficientCredits`` leaves nothing."""
    version = readable_version(session, user_id, model_version_id)
    model = session.get(Model, version.model_id)
    if model is None or not model.s3_path:  # pragma: no cover - a version names a model
        raise EvaluationProblem(409, "model_not_stored", "the model version has no artifact")
    if model.problem_type not in (ProblemType.CLASSIFICATION, ProblemType.REGRESSION):
        raise EvaluationProblem(
            422,
            "problem_type_not_evaluable",
            f"a {model.problem_type} model has no target to be evaluated against",
        )
    data = session.scalars(
        select(DatasetVersion).where(
            DatasetVersion.id == dataset_version_id, DatasetVersion.user_id == user_id
        )
    ).one_or_none()
    if data is None:
        raise _not_found("dataset version")
    if data.status != IngestionStatus.COMPLETED or not data.s3_path:
        raise EvaluationProblem(
            409,
            "dataset_version_not_ready",
            "the dataset version is not ingested",
            {"status": data.status.value},
        )
    dataset = session.get(Dataset, data.dataset_id)
    assert dataset is not None
    columns = version_columns(data) or {}
    if not dataset.target_column or dataset.target_column not in columns:
        raise EvaluationProblem(
            409,
            "no_target_column",
            "the dataset has no target column in this version: set one with PATCH"
            " /v1/datasets/{id}",
            {"target_column": dataset.target_column},
        )
    criteria = criteria_snapshot(session, user_id, criteria_ids)
    job = jobs.enqueue_run(
        session,
        user_id=user_id,
        workflow_id=None,
        snapshot_data={
            "evaluation": {
                "model_version_id": str(version.id),
                "dataset_version_id": str(data.id),
                "criteria_ids": [str(c) for c in criteria_ids],
            }
        },
        nodes=(),
        credit_cost=credit_cost,
        description="evaluation",
        kind=JobKind.EVALUATION,
    )
    run = EvaluationRun(
        user_id=user_id,
        job_id=job.id,
        model_version_id=version.id,
        dataset_version_id=data.id,
        criteria=criteria,
        problem_type=model.problem_type,
    )
    session.add(run)
    session.flush()
    return run


def run_of_job(session: Session, job_id: uuid.UUID) -> EvaluationRun | None:
    return session.scalars(select(EvaluationRun).where(EvaluationRun.job_id == job_id)).first()


def target_of(session: Session, run: EvaluationRun) -> Target:
    """Where the worker finds what ``run`` scores (the target as the dataset names it now)."""
    row = session.execute(
        select(Model.s3_path, Model.problem_type, Dataset.target_column, DatasetVersion.s3_path)
        .select_from(ModelVersion)
        .join(Model, Model.id == ModelVersion.model_id)
        .join(DatasetVersion, DatasetVersion.id == run.dataset_version_id)
        .join(Dataset, Dataset.id == DatasetVersion.dataset_id)
        .where(ModelVersion.id == run.model_version_id)
    ).one_or_none()
    if row is None or not row[0] or not row[2] or not row[3]:
        raise EvaluationProblem(409, "evaluation_inputs_gone", "the model or the data is gone")
    return Target(
        model_location=row[0], problem_type=row[1], target_column=row[2], data_location=row[3]
    )


def _copy_value(value: Any) -> Any:
    if hasattr(value, "item") and not isinstance(value, list | tuple):
        value = value.item()  # a numpy scalar
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_row_results(session: Session, run_id: uuid.UUID, rows: Iterable[Sequence[Any]]) -> int:
    """COPY per-row results of ``run_id`` (tuples of :data:`ROW_COLUMNS` after the
    run id: row_index, prediction, actual, score, error, criteria_passed, passed) in
    the session's transaction; returns the number of rows. psycopg's binary-free
    text COPY: one round trip for the lot, no per-row statement."""
    connection = session.connection().connection.driver_connection
    assert connection is not None
    count = 0
    columns = ", ".join(ROW_COLUMNS)
    statement = f"COPY evaluation_row_results ({columns}) FROM STDIN"
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        for row in rows:
            copy.write_row((run_id, *(_copy_value(v) for v in row)))
            count += 1
    return count


def record_results(
    session: Session,
    run_id: uuid.UUID,
    *,
    metrics: Mapping[str, Any],
    criteria_results: list[dict[str, Any]],
    plot_data: Mapping[str, Any],
    passed: bool,
    row_count: int,
    failed_row_count: int,
) -> bool:
    """Write a run's results once (ML118 refuses a second time); False if the run
    already has them (a retried job whose first attempt got this far)."""
    done = session.execute(
        update(EvaluationRun)
        .where(EvaluationRun.id == run_id, EvaluationRun.completed_at.is_(None))
        .values(
            metrics=dict(metrics),
            criteria_results=criteria_results,
            plot_data=dict(plot_data),
            passed=passed,
            row_count=row_count,
            failed_row_count=failed_row_count,
            completed_at=func.now(),
        )
        .returning(EvaluationRun.id)
    ).one_or_none()
    return done is not None


def visible_run(session: Session, user_id: uuid.UUID, run_id: uuid.UUID) -> EvaluationRun:
    run = session.scalars(
        select(EvaluationRun).where(EvaluationRun.id == run_id, EvaluationRun.user_id == user_id)
    ).one_or_none()
    if run is None:
        raise _not_found("evaluation")
    return run


def job_status(session: Session, run: EvaluationRun) -> tuple[str, str | None]:
    row = session.execute(select(Job.status, Job.error_message).where(Job.id == run.job_id)).one()
    return row[0].value, row[1]


def rows_page(
    session: Session,
    run_id: uuid.UUID,
    *,
    passed: bool | None,
    after: int | None,
    limit: int,
) -> list[EvaluationRowResult]:
    """Up to ``limit`` rows of the run after row ``after``, by row index; ``passed``
    False reads the failing rows through their partial index."""
    stmt = select(EvaluationRowResult).where(EvaluationRowResult.evaluation_run_id == run_id)
    if passed is not None:
        stmt = stmt.where(
            EvaluationRowResult.passed.is_(True) if passed else ~EvaluationRowResult.passed
        )
    if after is not None:
        stmt = stmt.where(EvaluationRowResult.row_index > after)
    return list(session.scalars(stmt.order_by(EvaluationRowResult.row_index).limit(limit)))


def latest_completed_run(
    session: Session, user_id: uuid.UUID, model_version_id: uuid.UUID
) -> EvaluationRun | None:
    """The caller's newest completed evaluation of a model version (what its plots
    are drawn from)."""
    return session.scalars(
        select(EvaluationRun)
        .where(
            EvaluationRun.user_id == user_id,
            EvaluationRun.model_version_id == model_version_id,
            EvaluationRun.completed_at.is_not(None),
        )
        .order_by(EvaluationRun.completed_at.desc(), EvaluationRun.id.desc())
        .limit(1)
    ).first()


def trial_runs(session: Session, model_version_id: uuid.UUID) -> list[dict[str, Any]]:
    """The experiment runs of the job that trained the version (an automl search
    records each trial as one), oldest first, as ``{"name", "metrics"}``."""
    rows = session.execute(
        text(
            "SELECT r.name, r.metrics FROM model_versions AS v"
            " JOIN models AS m ON m.id = v.model_id"
            " JOIN experiment_runs AS r ON r.job_id = m.job_id"
            " WHERE v.id = :v AND m.job_id IS NOT NULL"
            " ORDER BY r.created_at, r.id"
        ),
        {"v": model_version_id},
    ).all()
    return [{"name": r[0], "metrics": r[1] or {}} for r in rows]
