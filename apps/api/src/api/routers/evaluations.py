"""Evaluation: criteria, runs, their per-row results and plots (issue 15; docs/evaluation.md).

Thin: the rules are :mod:`database.evaluation`'s, the scoring the worker's
(``workers.kinds.evaluation``), the drawing :mod:`pipeline.plots`'s.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status
from pydantic import AfterValidator, ConfigDict, Field, Strict, StrictBool, StringConstraints
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import Reader, SessionDep, SettingsDep, Writer
from api.errors import ApiError, error_responses
from api.pagination import (
    DEFAULT_LIMIT,
    CursorQuery,
    LimitQuery,
    Page,
    decode_seq_cursor,
    encode_seq_cursor,
    paginate,
)
from api.policy import check_running_jobs, evaluation_quote, lock_user
from api.schemas import Input, Name, Output, no_nul
from database import billing, evaluation
from database.models import (
    CriterionKind,
    CriterionOperator,
    EvaluationCriterion,
    EvaluationRun,
    Model,
    ProblemType,
    RowRule,
)
from pipeline import plots

router = APIRouter(tags=["evaluation"])

Finite = Annotated[float, Strict(), Field(allow_inf_nan=False)]
ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=200), AfterValidator(no_nul)]
SliceValue = Annotated[str, StringConstraints(max_length=200), AfterValidator(no_nul)]


def _problem(exc: evaluation.EvaluationProblem) -> ApiError:
    return ApiError(exc.status, exc.code, exc.message, exc.details)


# --- criteria ---------------------------------------------------------------------------
class SliceIn(Input):
    """The rows a criterion looks at: ``column`` equal to ``equals``."""

    column: ColumnName
    """The column compared."""
    equals: StrictBool | Finite | SliceValue
    """The value it must equal (text, number or boolean)."""


class CriterionIn(Input):
    """An evaluation criterion: a metric compared with a threshold, or a rule every row
    must pass."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "name": "f1 at least 0.8",
                    "kind": "metric_threshold",
                    "metric": "f1",
                    "operator": ">=",
                    "threshold": 0.8,
                }
            ]
        }
    )

    name: Name
    """The criterion's name."""
    kind: CriterionKind
    """metric_threshold (one number for the whole set) or row_rule (checked per row)."""
    metric: Annotated[str, StringConstraints(pattern=r"^[a-z][a-z0-9_]{0,63}$")] | None = None
    """The metric (kind metric_threshold), e.g. accuracy or rmse."""
    operator: CriterionOperator | None = None
    """How the metric compares with the threshold (kind metric_threshold)."""
    threshold: Finite | None = None
    """The value compared with (kind metric_threshold)."""
    rule: RowRule | None = None
    """The per-row rule (kind row_rule)."""
    tolerance: Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)] | None = None
    """The largest |prediction - actual| that passes (rule absolute_error_le)."""
    slice: SliceIn | None = None
    """Only the rows where a column equals a value; null: every row."""


class CriterionOut(Output):
    """An evaluation criterion."""

    id: uuid.UUID
    """The criterion's id (UUID)."""
    name: str
    """The criterion's name."""
    kind: CriterionKind
    """metric_threshold or row_rule."""
    metric: str | None
    """The metric compared."""
    operator: CriterionOperator | None
    """How it is compared."""
    threshold: float | None
    """The value compared with."""
    rule: RowRule | None
    """The per-row rule."""
    tolerance: float | None
    """The largest error that passes."""
    slice: dict[str, Any] | None
    """The rows it looks at (column, equals)."""
    created_at: dt.datetime
    """When the criterion was created (UTC)."""


def _shape_problem(body: CriterionIn) -> str | None:
    if body.kind == CriterionKind.METRIC_THRESHOLD:
        missing = [f for f in ("metric", "operator", "threshold") if getattr(body, f) is None]
        extra = [f for f in ("rule", "tolerance") if getattr(body, f) is not None]
        if missing:
            return f"a metric_threshold criterion needs {', '.join(missing)}"
        if extra:
            return f"a metric_threshold criterion takes no {', '.join(extra)}"
        return None
    if body.rule is None:
        return "a row_rule criterion needs rule"
    extra = [f for f in ("metric", "operator", "threshold") if getattr(body, f) is not None]
    if extra:
        return f"a row_rule criterion takes no {', '.join(extra)}"
    if (body.rule == RowRule.ABSOLUTE_ERROR_LE) != (body.tolerance is not None):
        return "tolerance goes with the absolute_error_le rule, and only with it"
    return None


@router.post(
    "/evaluation-criteria",
    status_code=status.HTTP_201_CREATED,
    response_model=CriterionOut,
    responses=error_responses(401, 403, 409, 422),
    summary="Create a named evaluation criterion",
)
def create_criterion(principal: Writer, session: SessionDep, body: CriterionIn) -> Any:
    """``{"name", "kind": "metric_threshold", "metric": "accuracy", "operator": ">=",
    "threshold": 0.9}`` or ``{"name", "kind": "row_rule", "rule": "absolute_error_le",
    "tolerance": 5}``; either with an optional ``"slice": {"column": "region",
    "equals": "EU"}``. A name already used: 409."""
    problem = _shape_problem(body)
    if problem:
        raise ApiError(422, "invalid_criterion", problem)
    criterion = evaluation.create_criterion(
        session,
        principal.user_id,
        name=body.name,
        kind=body.kind,
        metric=body.metric,
        operator=body.operator,
        threshold=body.threshold,
        rule=body.rule,
        tolerance=body.tolerance,
        slice=body.slice.model_dump() if body.slice else None,
    )
    session.commit()
    return CriterionOut.model_validate(criterion)


@router.get(
    "/evaluation-criteria",
    response_model=Page[CriterionOut],
    responses=error_responses(401, 403, 422),
    summary="The caller's evaluation criteria, newest first",
)
def list_criteria(
    principal: Reader,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[CriterionOut]:
    """The caller's evaluation criteria, newest first (keyset pagination)."""
    rows, next_cursor = paginate(
        session,
        select(EvaluationCriterion).where(EvaluationCriterion.user_id == principal.user_id),
        EvaluationCriterion.created_at,
        EvaluationCriterion.id,
        limit=limit,
        cursor=cursor,
    )
    return Page[CriterionOut](
        items=[CriterionOut.model_validate(c) for c in rows], next_cursor=next_cursor
    )


# --- runs -------------------------------------------------------------------------------
class EvaluationIn(Input):
    """An evaluation of a model version on a dataset version against criteria."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "model_version_id": "3f2b8c1e-5a4d-4c2e-9b7a-1d2e3f4a5b6c",
                    "dataset_version_id": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d",
                    "criteria_ids": ["0d1c2b3a-4f5e-4d6c-8b7a-9e8d7c6b5a4f"],
                }
            ]
        }
    )

    model_version_id: uuid.UUID
    """The model version evaluated."""
    dataset_version_id: uuid.UUID
    """The data it is evaluated on (with the target column)."""
    criteria_ids: list[uuid.UUID] = Field(default_factory=list, max_length=100)
    """The criteria checked (GET /v1/evaluation-criteria); none: metrics only."""


class EvaluationOut(Output):
    """An evaluation run and, once done, its results."""

    id: uuid.UUID
    """The evaluation's id (UUID)."""
    job_id: uuid.UUID
    """The job running it."""
    status: str = "queued"
    """The job's: queued, running, completed, failed or cancelled."""
    error_message: str | None = None
    """Why it failed."""
    model_version_id: uuid.UUID
    """The model version evaluated."""
    dataset_version_id: uuid.UUID
    """The data it was evaluated on."""
    problem_type: ProblemType | None
    """classification or regression."""
    criteria: list[Any]
    """The criteria checked, as they were when it started."""
    metrics: dict[str, Any] | None
    """The metrics on the whole set."""
    criteria_results: list[Any] | None
    """Each criterion's result (value, passed)."""
    passed: bool | None
    """Whether every criterion passed (null: not done)."""
    row_count: int | None
    """Rows evaluated."""
    failed_row_count: int | None
    """Rows that failed a row criterion."""
    created_at: dt.datetime
    """When the evaluation was created (UTC)."""
    completed_at: dt.datetime | None
    """When it ended."""


def _run_out(session: Session, run: EvaluationRun) -> EvaluationOut:
    job_status, error = evaluation.job_status(session, run)
    return EvaluationOut.model_validate(run).model_copy(
        update={"status": job_status, "error_message": error}
    )


@router.post(
    "/evaluations",
    status_code=status.HTTP_202_ACCEPTED,
    response_model=EvaluationOut,
    responses=error_responses(401, 402, 403, 404, 409, 422, 429),
    summary="Score a model version on a dataset version against criteria (a charged job)",
)
def create_evaluation(
    principal: Writer, session: SessionDep, settings: SettingsDep, body: EvaluationIn
) -> Any:
    """The model version must be readable by the caller (theirs, shared or public),
    the dataset version theirs and ingested, with the dataset's target column among
    its columns; the criteria theirs. Charged like any job; 402 without the credits."""
    user = lock_user(session, principal.user_id)
    check_running_jobs(settings, session, user)
    quote = evaluation_quote(session, user.tier)
    try:
        run = evaluation.start_evaluation(
            session,
            user_id=principal.user_id,
            model_version_id=body.model_version_id,
            dataset_version_id=body.dataset_version_id,
            criteria_ids=body.criteria_ids,
            credit_cost=quote.total,
        )
    except evaluation.EvaluationProblem as exc:
        raise _problem(exc) from None
    billing.record_job_prices(session, run.job_id, quote)
    session.commit()
    return _run_out(session, run)


@router.get(
    "/evaluations/{evaluation_id}",
    response_model=EvaluationOut,
    responses=error_responses(401, 403, 404, 422),
    summary="An evaluation run: its status, metrics and criteria results",
)
def get_evaluation(principal: Reader, session: SessionDep, evaluation_id: uuid.UUID) -> Any:
    """An evaluation run: its status and, once completed, the metrics on the whole set, each
    criterion's result and whether all passed."""
    try:
        run = evaluation.visible_run(session, principal.user_id, evaluation_id)
    except evaluation.EvaluationProblem as exc:
        raise _problem(exc) from None
    return _run_out(session, run)


class RowOut(Output):
    """One evaluated row."""

    row_index: int
    """The row's position in the dataset version (0-based)."""
    prediction: str | None
    """What the model predicted."""
    actual: str | None
    """The target's value."""
    score: float | None
    """The model's score for the row, when it gives one."""
    error: float | None
    """|prediction - actual| (regression)."""
    criteria_passed: list[bool | None]
    """Each row criterion's result, in the evaluation's order (null: not applicable)."""
    passed: bool
    """Whether the row passed every row criterion."""


@router.get(
    "/evaluations/{evaluation_id}/rows",
    response_model=Page[RowOut],
    responses=error_responses(401, 403, 404, 422),
    summary="Per-row results of an evaluation, by row index (keyset pages)",
)
def list_rows(
    principal: Reader,
    session: SessionDep,
    evaluation_id: uuid.UUID,
    passed: Annotated[bool | None, Query(description="false: the failing rows only")] = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[RowOut]:
    """The evaluated rows, by row index (keyset pagination), optionally only the failing ones:
    prediction, actual value, error and each row criterion's result."""
    after = decode_seq_cursor(cursor) if cursor else None  # a bad cursor: 422 first
    try:
        run = evaluation.visible_run(session, principal.user_id, evaluation_id)
    except evaluation.EvaluationProblem as exc:
        raise _problem(exc) from None
    rows = evaluation.rows_page(session, run.id, passed=passed, after=after, limit=limit + 1)
    next_cursor = None
    if len(rows) > limit:
        rows = rows[:limit]
        next_cursor = encode_seq_cursor(rows[-1].row_index)
    return Page[RowOut](items=[RowOut.model_validate(r) for r in rows], next_cursor=next_cursor)


# --- plots ------------------------------------------------------------------------------
_PLOT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {media: {} for media in plots.MEDIA_TYPES.values()},
        "description": "The plot as PNG, SVG or its JSON data",
    }
}


def _split(name: str) -> tuple[str, str]:
    kind, _, fmt = name.rpartition(".")
    if kind not in plots.KINDS or fmt not in plots.FORMATS:
        raise ApiError(
            422,
            "unknown_plot",
            f"plot names are KIND.FORMAT, KIND one of {', '.join(plots.KINDS)},"
            " FORMAT one of png, svg, json",
        )
    return kind, fmt


def _plot_response(kind: str, fmt: str, data: Any) -> Response:
    return Response(content=plots.render(kind, data, fmt), media_type=plots.MEDIA_TYPES[fmt])


def _trials(session: Session, model_version_id: uuid.UUID, metric: str | None) -> Any:
    runs = evaluation.trial_runs(session, model_version_id)
    if not runs:
        raise ApiError(404, "no_trials", "this model version was not found by a search")
    return plots.trials_data(runs, metric)


def _run_plot(session: Session, run: EvaluationRun, kind: str, fmt: str) -> Response:
    problem = plots.kind_problem(kind, run.problem_type)
    if problem:
        raise ApiError(422, "plot_not_for_problem_type", problem)
    if kind == "trials":
        return _plot_response(kind, fmt, _trials(session, run.model_version_id, None))
    if run.completed_at is None or run.plot_data is None:
        raise ApiError(409, "evaluation_not_completed", "the evaluation has no results yet")
    data = run.plot_data.get(kind)
    if data is None:
        raise ApiError(
            404,
            "plot_unavailable",
            f"no {kind} plot: the model gives no probabilities or the data holds a single class",
        )
    return _plot_response(kind, fmt, data)


@router.get(
    "/evaluations/{evaluation_id}/plots/{plot}",
    response_class=Response,
    responses={**error_responses(401, 403, 404, 409, 422), **_PLOT_RESPONSES},
    summary="A plot of an evaluation run: roc, pr, confusion_matrix, calibration, residuals,"
    " feature_importance, trials; as .png, .svg or .json",
)
def get_plot(
    principal: Reader,
    session: SessionDep,
    evaluation_id: uuid.UUID,
    plot: str,
) -> Response:
    """A plot of the evaluation: `roc`, `pr`, `confusion_matrix`, `calibration`, `residuals`,
    `feature_importance` or `trials`, with the extension `.png`, `.svg` or `.json` (the plot's
    data). 422 `plot_not_for_problem_type` when the plot does not suit the problem type, 409
    while the evaluation has no results."""
    kind, fmt = _split(plot)
    try:
        run = evaluation.visible_run(session, principal.user_id, evaluation_id)
    except evaluation.EvaluationProblem as exc:
        raise _problem(exc) from None
    return _run_plot(session, run, kind, fmt)


@router.get(
    "/model-versions/{model_version_id}/plots/{plot}",
    response_class=Response,
    responses={**error_responses(401, 403, 404, 409, 422), **_PLOT_RESPONSES},
    summary="A plot of a model version (from the caller's newest completed evaluation of it;"
    " trials from the search that found it)",
)
def get_model_version_plot(
    principal: Reader,
    session: SessionDep,
    model_version_id: uuid.UUID,
    plot: str,
) -> Response:
    """The data is the caller's newest completed evaluation of this version (a model
    version keeps no held-out predictions of its training): 404 ``no_evaluation``
    without one. ``trials`` comes from the experiment runs of the job that trained it:
    404 ``no_trials`` when it was not found by a search."""
    kind, fmt = _split(plot)
    try:
        version = evaluation.readable_version(session, principal.user_id, model_version_id)
    except evaluation.EvaluationProblem as exc:
        raise _problem(exc) from None
    model = session.get(Model, version.model_id)
    problem = plots.kind_problem(kind, model.problem_type if model else None)
    if problem:
        raise ApiError(422, "plot_not_for_problem_type", problem)
    if kind == "trials":
        metric = version.primary_metric
        return _plot_response(kind, fmt, _trials(session, version.id, metric))
    run = evaluation.latest_completed_run(session, principal.user_id, version.id)
    if run is None:
        raise ApiError(
            404,
            "no_evaluation",
            "plots of a model version are drawn from an evaluation of it: POST /v1/evaluations",
        )
    return _run_plot(session, run, kind, fmt)
