"""Tier limits and prices: what a caller may hold, run and pay.

Limits are read from the counters the triggers keep on ``users`` (dataset_count,
workflow_count, storage_used_bytes) and, for running jobs, from the jobs index.
A create, upload or run takes the user's row lock first (:func:`lock_user`), so two
concurrent requests cannot both pass a limit that only one fits under: the second
waits and then reads the counter the first moved. Refusals come before anything
is stored or charged.
"""

from __future__ import annotations

import math
import uuid

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from api.errors import ApiError, not_found
from api.schemas import WorkflowDefinition
from api.settings import ApiSettings
from database import billing, locks
from database.billing import Book, Quote
from database.limits import TierLimits
from database.models import Job, JobStatus, NodeType, User, UserTier
from pipeline.definition import AutoMLConfig

#: Jobs that count against the concurrent-jobs limit.
ACTIVE_JOB_STATUSES = (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING)


def limits_for(settings: ApiSettings, user: User) -> TierLimits:
    return settings.tier_limits.for_tier(user.tier)


def lock_user(session: Session, user_id: uuid.UUID) -> User:
    """The user's row, locked (FOR NO KEY UPDATE) and re-read, for the transaction."""
    user = locks.lock_user(session, user_id)
    if user is None or user.is_deleted:
        raise not_found("user")
    return user


def active_jobs(session: Session, user_id: uuid.UUID) -> int:
    # ix_jobs_user_id_status_created_at: one index range per status.
    return (
        session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.user_id == user_id, Job.status.in_(ACTIVE_JOB_STATUSES))
        )
        or 0
    )


def _limit(code: str, what: str, limit: int, current: int, tier: str) -> ApiError:
    return ApiError(
        403,
        code,
        f"the {tier} tier allows {limit} {what}",
        {"limit": limit, "current": current, "tier": tier},
    )


def check_datasets(settings: ApiSettings, user: User, adding: int = 1) -> None:
    limit = limits_for(settings, user).max_datasets
    if user.dataset_count + adding > limit:
        raise _limit("dataset_limit_reached", "datasets", limit, user.dataset_count, user.tier)


def check_workflows(settings: ApiSettings, user: User, adding: int = 1) -> None:
    limit = limits_for(settings, user).max_workflows
    if user.workflow_count + adding > limit:
        raise _limit("workflow_limit_reached", "workflows", limit, user.workflow_count, user.tier)


def check_running_jobs(settings: ApiSettings, session: Session, user: User) -> None:
    limit = limits_for(settings, user).max_running_jobs
    current = active_jobs(session, user.id)
    if current + 1 > limit:
        raise _limit("job_limit_reached", "queued or running jobs", limit, current, user.tier)


def storage_left(settings: ApiSettings, user: User) -> int:
    return max(0, limits_for(settings, user).storage_bytes - user.storage_used_bytes)


def check_storage(settings: ApiSettings, user: User, incoming_bytes: int) -> None:
    quota = limits_for(settings, user).storage_bytes
    if user.storage_used_bytes + incoming_bytes > quota:
        raise ApiError(
            413,
            "storage_quota_exceeded",
            f"the {user.tier} tier stores at most {quota} bytes",
            {
                "quota_bytes": quota,
                "used_bytes": user.storage_used_bytes,
                "requested_bytes": incoming_bytes,
                "tier": user.tier,
            },
        )


def quote(book: Book, definition: WorkflowDefinition) -> Quote:
    """What a run of ``definition`` costs under ``book``: the ``job`` sku plus each
    node's type (``database.billing``), and an automl node's budget, one
    ``automl_minute`` a started minute. The one pricing of a run: the estimate of a
    workflow and the charge of its run both come from here."""
    minutes = sum(
        math.ceil(n.config_as(AutoMLConfig).time_budget_s / 60)
        for n in definition.nodes
        if n.type == NodeType.AUTOML
    )
    return billing.quote_job(book, (n.type for n in definition.nodes), [("automl_minute", minutes)])


def price(
    session: Session, tier: UserTier | str, definition: WorkflowDefinition, book: Book | None = None
) -> Quote:
    """What a run of ``definition`` costs under the ``tier``'s price book in force
    (or ``book``): :func:`quote`. ``quote.total`` is the credits; the run keeps the
    quote's items (``billing.record_job_prices``)."""
    return quote(book or billing.book_in_force(session, tier), definition)


def batch_quote(session: Session, tier: UserTier | str, rows: int) -> Quote:
    """What a batch prediction of ``rows`` rows costs under the ``tier``'s book in
    force: the ``job`` sku once plus ``batch_rows`` (credits per 1,000 rows) for each
    started 1,000 rows (at least one), like a run's nodes (:func:`quote`)."""
    book = billing.book_in_force(session, tier)
    thousands = max(1, -(-rows // billing.ROWS_PER_UNIT))
    return Quote(
        book=book,
        lines=((book.price(billing.SKU_JOB), 1), (book.price(billing.SKU_BATCH_ROWS), thousands)),
    )


def evaluation_quote(session: Session, tier: UserTier | str) -> Quote:
    """What an evaluation run costs: one ``evaluation`` (sku, unit ``job``) of the
    ``tier``'s book in force, like a run's nodes (:func:`quote`); the run keeps the
    line (``billing.record_job_prices``)."""
    book = billing.book_in_force(session, tier)
    return Quote(book=book, lines=((book.price(billing.SKU_EVALUATION), 1),))
