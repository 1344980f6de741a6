"""Jobs: list (by status), detail with node statuses, cancel."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.deps import Reader, SessionDep, Writer
from api.errors import ApiError, error_responses, not_found
from api.liveness import WorkerCheck
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.policy import lock_user
from api.schemas import CancelOut, JobDetail, JobNodeOut, JobOut
from database import errors, jobs
from database.models import (
    Job,
    JobNode,
    JobStatus,
    WorkflowSnapshot,
)

router = APIRouter(prefix="/jobs", tags=["jobs"])

#: A job in one of these has ended: it cannot be cancelled.
FINISHED = jobs.FINISHED


def _workflow_ids(session: Session, jobs: list[Job]) -> dict[uuid.UUID, uuid.UUID | None]:
    snapshot_ids = {j.workflow_snapshot_id for j in jobs}
    if not snapshot_ids:
        return {}
    found = session.execute(
        select(WorkflowSnapshot.id, WorkflowSnapshot.workflow_id).where(
            WorkflowSnapshot.id.in_(snapshot_ids)
        )
    )
    return {snapshot_id: workflow_id for snapshot_id, workflow_id in found}


def _out(job: Job, workflows: dict[uuid.UUID, uuid.UUID | None], workers: WorkerCheck) -> JobOut:
    return JobOut.model_validate(job).model_copy(
        update={
            "workflow_id": workflows.get(job.workflow_snapshot_id),
            "waiting_for": workers.waiting_for(job.status == JobStatus.QUEUED),
        }
    )


def _owned(session: Session, user_id: uuid.UUID, job_id: uuid.UUID, *, lock: bool = False) -> Job:
    stmt = select(Job).where(Job.id == job_id, Job.user_id == user_id)
    if lock:
        stmt = stmt.with_for_update()
    job = session.scalars(stmt.execution_options(populate_existing=True)).one_or_none()
    if job is None:
        raise not_found("job")
    return job


@router.get(
    "",
    response_model=Page[JobOut],
    responses=error_responses(401, 403, 422),
    summary="The caller's jobs, newest first, optionally by status",
)
def list_jobs(
    principal: Reader,
    session: SessionDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
    status: Annotated[JobStatus | None, Query(description="Only jobs in this status.")] = None,
) -> Page[JobOut]:
    """The caller's jobs, newest first, optionally only those in one `status` (keyset pagination).
    `waiting_for` says `worker` when a queued job waits for a worker to start."""
    stmt = select(Job).where(Job.user_id == principal.user_id)
    if status is not None:
        stmt = stmt.where(Job.status == status)  # ix_jobs_user_id_status_created_at
    rows, next_cursor = paginate(session, stmt, Job.created_at, Job.id, limit=limit, cursor=cursor)
    workflows = _workflow_ids(session, list(rows))
    workers = WorkerCheck(session)
    return Page[JobOut](items=[_out(j, workflows, workers) for j in rows], next_cursor=next_cursor)


@router.get(
    "/{job_id}",
    response_model=JobDetail,
    responses=error_responses(401, 403, 404, 422),
    summary="A job, with the status of each of its nodes",
)
def get_job(principal: Reader, session: SessionDep, job_id: uuid.UUID) -> JobDetail:
    """A job of the caller's with its results and each node's status, progress and output. Follow a
    running job live with `GET /v1/jobs/{id}/events`."""
    job = _owned(session, principal.user_id, job_id)
    nodes = session.scalars(
        select(JobNode)
        .where(JobNode.job_id == job.id, JobNode.user_id == principal.user_id)
        .order_by(JobNode.created_at, JobNode.node_id)
    ).all()
    base = _out(job, _workflow_ids(session, [job]), WorkerCheck(session))
    return JobDetail(
        **base.model_dump(),
        results=job.results,
        nodes=[JobNodeOut.model_validate(n) for n in nodes],
    )


@router.post(
    "/{job_id}/cancel",
    response_model=CancelOut,
    responses=error_responses(401, 403, 404, 409, 422, 503),
    summary="Cancel a job",
)
def cancel_job(principal: Writer, session: SessionDep, job_id: uuid.UUID) -> CancelOut:
    """A pending or queued job is cancelled and refunded at once, in one transaction.
    A running job is marked (``cancel_requested_at``) for the worker, which stops it
    and settles its credits. A finished job: 409 ``job_finished``. Cancelling a
    running job twice keeps the first request's time."""
    lock_user(session, principal.user_id)  # 404 for a deleted user; the refund's lock
    try:
        outcome = jobs.cancel_job(session, principal.user_id, job_id)
    except errors.JobNotFound:
        raise not_found("job") from None
    except errors.JobAlreadyFinished as exc:
        raise ApiError(
            409,
            "job_finished",
            f"the job has already ended ({exc.status})",
            {"status": exc.status},
        ) from None
    session.commit()
    job, refunded = outcome.job, outcome.refunded_credits
    return CancelOut(
        job=_out(job, _workflow_ids(session, [job]), WorkerCheck(session)),
        refunded_credits=refunded,
    )
