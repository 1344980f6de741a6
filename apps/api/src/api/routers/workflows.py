"""Workflows: create, read, update, soft delete and restore, list; and runs."""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Response, status
from pydantic import ValidationError
from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from api.deps import Principal, Reader, SessionDep, SettingsDep, Trainer, Writer
from api.errors import ApiError, error_responses, not_found
from api.liveness import WorkerCheck
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.policy import check_running_jobs, check_workflows, lock_user, price, quote
from api.schemas import (
    JobOut,
    RunIn,
    RunOut,
    WorkflowDefinition,
    WorkflowIn,
    WorkflowOut,
    WorkflowPatch,
)
from database import billing, jobs, lifecycle
from database.billing import Book
from database.errors import NoPriceBook
from database.models import (
    Dataset,
    DatasetVersion,
    IngestionStatus,
    JobStatus,
    NodeType,
    User,
    Workflow,
)
from pipeline.definition import DatasetConfig, DatasetInfo, DefinitionError, check_runnable

router = APIRouter(prefix="/workflows", tags=["workflows"])


def _book(session: Session, principal: Principal) -> Book | None:
    """The caller's tier's price book in force (None: no book, estimates read 0)."""
    try:
        return billing.book_in_force(session, principal.user.tier)
    except NoPriceBook:
        return None


def _out(book: Book | None, workflow: Workflow) -> WorkflowOut:
    try:
        definition = WorkflowDefinition.model_validate(workflow.definition)
        estimate = 0 if book is None else quote(book, definition).total
    except (ValueError, NoPriceBook):  # written by something other than this API
        estimate = 0
    return WorkflowOut.model_validate(
        {
            **{
                c: getattr(workflow, c)
                for c in WorkflowOut.model_fields
                if c != "estimated_credits"
            },
            "estimated_credits": estimate,
        }
    )


def _owned(
    session: Session, user_id: uuid.UUID, workflow_id: uuid.UUID, *, lock: bool = False
) -> Workflow:
    stmt = select(Workflow).where(Workflow.id == workflow_id, Workflow.user_id == user_id)
    if lock:
        stmt = stmt.with_for_update()
    workflow = session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()
    if workflow is None:
        raise not_found("workflow")
    return workflow


def _check_datasets(
    session: Session, user_id: uuid.UUID, definition: WorkflowDefinition
) -> dict[str, Dataset]:
    """The caller's datasets the definition names (node id -> dataset); 422 otherwise."""
    wanted = definition.dataset_ids()
    if not wanted:
        return {}
    found = {
        d.id: d
        for d in session.scalars(
            select(Dataset).where(Dataset.user_id == user_id, Dataset.id.in_(set(wanted.values())))
        )
    }
    unknown = sorted(node for node, ds in wanted.items() if ds not in found)
    if unknown:
        raise ApiError(
            422,
            "invalid_workflow",
            f"dataset node {unknown[0]!r} names a dataset that does not exist",
            {"nodes": unknown},
        )
    return {node: found[ds] for node, ds in wanted.items()}


def _versions(
    session: Session, definition: WorkflowDefinition, datasets: dict[str, Dataset]
) -> dict[str, DatasetVersion]:
    """node id -> the version each dataset node reads: ``config.version`` (a version
    number of the dataset), else the dataset's current version.

    422 ``invalid_workflow`` when that version does not exist; 409 ``dataset_not_ready``
    when its ingestion has not completed (pending, processing or failed).
    """
    wanted = {
        node: definition.node(node).config_as(DatasetConfig).version for node in sorted(datasets)
    }
    conditions = [
        and_(DatasetVersion.dataset_id == datasets[node].id, DatasetVersion.version_number == n)
        if n is not None
        else DatasetVersion.id == datasets[node].current_version_id
        for node, n in wanted.items()
        if n is not None or datasets[node].current_version_id is not None
    ]
    found = (
        session.scalars(select(DatasetVersion).where(or_(*conditions))).all() if conditions else []
    )
    by_number = {(v.dataset_id, v.version_number): v for v in found}
    by_id = {v.id: v for v in found}
    out: dict[str, DatasetVersion] = {}
    for node, number in wanted.items():
        dataset = datasets[node]
        if number is not None:
            version = by_number.get((dataset.id, number))
            missing = f"dataset node {node!r}: the dataset has no version {number}"
        else:
            version = by_id.get(dataset.current_version_id) if dataset.current_version_id else None
            missing = f"dataset node {node!r}: the dataset has no current version"
        if version is None:
            raise ApiError(
                422,
                "invalid_workflow",
                missing,
                {"node": node, "dataset_id": str(dataset.id), "version": number},
            )
        out[node] = version
    for node, version in out.items():
        if version.status != IngestionStatus.COMPLETED:
            raise ApiError(
                409,
                "dataset_not_ready",
                f"dataset node {node!r}: version {version.version_number} of the dataset is"
                f" {version.status}, not completed",
                {
                    "node": node,
                    "dataset_id": str(version.dataset_id),
                    "version": version.version_number,
                    "status": version.status.value,
                },
            )
    return out


def _stored(definition: WorkflowDefinition) -> dict[str, Any]:
    return definition.model_dump(mode="json", exclude_none=True)


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=WorkflowOut,
    responses=error_responses(401, 403, 422),
    summary="Create a workflow",
)
def create_workflow(
    principal: Writer, session: SessionDep, settings: SettingsDep, body: WorkflowIn
) -> WorkflowOut:
    """Over the tier's workflow count: 403 ``workflow_limit_reached``."""
    user = lock_user(session, principal.user_id)
    check_workflows(settings, user)
    _check_datasets(session, user.id, body.definition)
    workflow = Workflow(
        user_id=user.id,
        name=body.name,
        description=body.description,
        definition=_stored(body.definition),
    )
    session.add(workflow)
    session.flush()
    session.commit()
    return _out(_book(session, principal), workflow)


@router.get(
    "",
    response_model=Page[WorkflowOut],
    responses=error_responses(401, 403, 422),
    summary="The caller's workflows, newest first",
)
def list_workflows(
    principal: Reader,
    session: SessionDep,
    settings: SettingsDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    deleted: Annotated[
        bool, Query(description="List the soft-deleted workflows (the trash) instead.")
    ] = False,
) -> Page[WorkflowOut]:
    """The caller's workflows, newest first; soft-deleted ones are left out. Each carries
    `estimated_credits`, what a run of it costs now."""
    rows, next_cursor = paginate(
        session,
        select(Workflow).where(
            Workflow.user_id == principal.user_id, Workflow.is_deleted == deleted
        ),
        Workflow.created_at,
        Workflow.id,
        limit=limit,
        cursor=cursor,
    )
    book = _book(session, principal)
    return Page[WorkflowOut](items=[_out(book, w) for w in rows], next_cursor=next_cursor)


@router.get(
    "/{workflow_id}",
    response_model=WorkflowOut,
    responses=error_responses(401, 403, 404, 422),
    summary="A workflow (soft-deleted ones too, with is_deleted)",
)
def get_workflow(
    principal: Reader, session: SessionDep, settings: SettingsDep, workflow_id: uuid.UUID
) -> WorkflowOut:
    """A workflow of the caller's, soft-deleted ones included (`is_deleted`), with its definition
    and the credits a run costs."""
    return _out(_book(session, principal), _owned(session, principal.user_id, workflow_id))


@router.patch(
    "/{workflow_id}",
    response_model=WorkflowOut,
    responses=error_responses(401, 403, 404, 409, 422),
    summary="Change a workflow's name, description or definition",
)
def update_workflow(
    principal: Writer,
    session: SessionDep,
    settings: SettingsDep,
    workflow_id: uuid.UUID,
    body: WorkflowPatch,
) -> WorkflowOut:
    """A soft-deleted workflow cannot be changed (409 ``workflow_deleted``): restore it first."""
    workflow = _owned(session, principal.user_id, workflow_id, lock=True)
    if workflow.is_deleted:
        raise ApiError(409, "workflow_deleted", "restore the workflow before changing it")
    if body.name is not None:
        workflow.name = body.name
    if "description" in body.model_fields_set:
        workflow.description = body.description
    if body.definition is not None:
        _check_datasets(session, principal.user_id, body.definition)
        workflow.definition = _stored(body.definition)
    session.flush()
    session.commit()
    return _out(_book(session, principal), workflow)


@router.delete(
    "/{workflow_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422),
    summary="Soft-delete a workflow (restorable; purged after the retention window)",
)
def delete_workflow(principal: Writer, session: SessionDep, workflow_id: uuid.UUID) -> Response:
    """Soft-deletes the workflow: it leaves the lists, its jobs and models stay, and `POST
    /v1/workflows/{id}/restore` brings it back until it is purged. 204 on success; 404 when it is
    not the caller's."""
    lock_user(session, principal.user_id)  # workflow_count moves: the user's lock first
    workflow = _owned(session, principal.user_id, workflow_id, lock=True)
    lifecycle.soft_delete_workflow(session, workflow.id)
    session.commit()
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/{workflow_id}/restore",
    response_model=WorkflowOut,
    responses=error_responses(401, 403, 404, 422),
    summary="Restore a soft-deleted workflow",
)
def restore_workflow(
    principal: Writer, session: SessionDep, settings: SettingsDep, workflow_id: uuid.UUID
) -> WorkflowOut:
    """It counts against the tier's workflows again (403 when that is full)."""
    user = lock_user(session, principal.user_id)
    workflow = _owned(session, principal.user_id, workflow_id, lock=True)
    if workflow.is_deleted:
        check_workflows(settings, user)
        workflow = lifecycle.restore_workflow(session, workflow.id)
    session.commit()
    return _out(_book(session, principal), workflow)


@router.post(
    "/{workflow_id}/run",
    status_code=status.HTTP_201_CREATED,
    response_model=RunOut,
    responses=error_responses(401, 402, 403, 404, 409, 422, 503),
    summary="Run a workflow: snapshot, price, queue and charge, in one transaction",
)
def run_workflow(
    principal: Trainer,
    session: SessionDep,
    settings: SettingsDep,
    workflow_id: uuid.UUID,
    body: Annotated[RunIn | None, Body()] = None,
) -> RunOut:
    """Freezes the definition in a snapshot, prices it, creates the job as queued
    with its nodes, and charges the credits: all or nothing. Too few credits is 402
    ``insufficient_credits`` with ``details.balance`` and ``details.price``, and
    nothing is written. Over the tier's concurrent jobs: 403 ``job_limit_reached``.

    Each dataset node reads ``config.version`` (a version number of its dataset) or
    the dataset's current version: 422 ``invalid_workflow`` when there is no such
    version, 409 ``dataset_not_ready`` (details: node, dataset_id, version, status)
    while its ingestion has not completed. The definition must then be runnable on
    those versions (``pipeline.definition.check_runnable``: target columns, problem
    types, hyperparameters), else 422 ``invalid_workflow`` with ``details.problems``.
    Every refusal comes before anything is written or charged."""
    run = body or RunIn()
    user: User = lock_user(session, principal.user_id)
    workflow = _owned(session, user.id, workflow_id)
    if workflow.is_deleted:
        raise ApiError(409, "workflow_deleted", "restore the workflow before running it")
    try:
        definition = WorkflowDefinition.model_validate(workflow.definition)
    except ValidationError as exc:
        problems = [str(e.get("msg", "")).removeprefix("Value error, ") for e in exc.errors()]
        raise ApiError(
            422,
            "invalid_workflow",
            f"the stored definition is not valid: {'; '.join(problems)}",
            {"problems": problems},
        ) from None
    if not definition.nodes:
        raise ApiError(422, "invalid_workflow", "the workflow has no nodes")
    datasets = _check_datasets(session, user.id, definition)
    unnamed = sorted(
        n.id for n in definition.nodes if n.type == NodeType.DATASET and n.id not in datasets
    )
    if unnamed:
        raise ApiError(
            422,
            "invalid_workflow",
            f"dataset node {unnamed[0]!r} names no dataset (config.dataset_id)",
            {"nodes": unnamed},
        )
    versions = _versions(session, definition, datasets)
    infos = {
        node: DatasetInfo.from_metadata(
            datasets[node].problem_type, datasets[node].target_column, v.columns_metadata
        )
        for node, v in versions.items()
    }
    try:
        check_runnable(definition, infos)
    except DefinitionError as exc:
        raise ApiError(
            422, "invalid_workflow", exc.problems[0], {"problems": exc.problems}
        ) from None
    check_running_jobs(settings, session, user)
    # The tier's price book in force; the job keeps the items it was priced with.
    quote = price(session, user.tier, definition)
    cost = quote.total

    # Snapshot, job, nodes and charge: one transaction (database.jobs); InsufficientCredits
    # (402) leaves none of them.
    job = jobs.enqueue_run(
        session,
        user_id=user.id,
        workflow_id=workflow.id,
        snapshot_data={
            "workflow_id": str(workflow.id),
            "name": workflow.name,
            "definition": workflow.definition,
            # What each dataset node reads, frozen now: the worker loads the version's
            # Parquet by version_id and trains with this problem type and target.
            "dataset_versions": {
                node: {
                    "dataset_id": str(ds.id),
                    "version_id": str(versions[node].id),
                    "version_number": versions[node].version_number,
                    "problem_type": ds.problem_type.value if ds.problem_type else None,
                    "target_column": ds.target_column,
                    "ignored_columns": list(ds.ignored_columns or []),
                }
                for node, ds in datasets.items()
            },
            "price": {"credits": cost, "price_book_id": str(quote.book.id)},
        },
        nodes=[(node.id, node.type) for node in definition.nodes],
        credit_cost=cost,
        priority=run.priority,
        description=f"run of workflow {workflow.name}",
    )
    billing.record_job_prices(session, job.id, quote)
    session.commit()
    session.refresh(user, ["credit_balance"])
    out = JobOut.model_validate(job).model_copy(
        update={
            "workflow_id": workflow.id,
            "waiting_for": WorkerCheck(session).waiting_for(job.status == JobStatus.QUEUED),
        }
    )
    return RunOut(job=out, balance=user.credit_balance)
