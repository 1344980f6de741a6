"""The life of queued work: every change of state of ``jobs``, ``job_nodes`` and
``ingestion_jobs``, in one place.

The API and the workers call these functions; nothing else writes a status of
those tables (the database refuses a change their life does not allow either:
``sql/triggers/jobs.sql``, :class:`database.errors.InvalidStatusTransition`).

Two tables, one queue:

- ``jobs`` holds every kind of work but ingestion (``jobs.kind``, :class:`JobKind`:
  today ``workflow_run``), ``queued`` -> ``running`` -> ``completed`` / ``failed`` /
  ``cancelled``;
- ``ingestion_jobs`` (one per dataset version), ``pending`` -> ``processing`` ->
  ``completed`` / ``failed``. Its claims are :class:`Claim` objects of kind
  ``ingestion``, like the jobs', so the worker dispatches both the same way.

The operations:

- **enqueue**: :func:`enqueue_run` (snapshot, job, nodes and the charge, all or
  nothing) and :func:`enqueue_ingestion`;
- **claim**: :func:`claim` takes the next waiting row with ``FOR UPDATE SKIP
  LOCKED`` whose ``run_after`` has passed, marks it taken by ``worker`` until the
  lease ends and counts the attempt;
- **lease**: :func:`renew` (the heartbeat) and :func:`check_job` (between two
  nodes: renew, and is a cancel asked?). Every write about held work names the
  lease: a worker whose lease was taken over gets :class:`LeaseLost`;
- **progress**: :func:`record_node`, :func:`record_model` (a saved model and its
  node's success, one transaction);
- **end**: :func:`finish_job` (completed, or failed / cancelled and refunded),
  :func:`complete_ingestion`, :func:`fail_ingestion`, :func:`fail` (either queue);
- **back to the queue**: :func:`release` (a stopping worker: the attempt is not
  counted), :func:`retry_later` (a transient error: waits ``backoff_seconds``,
  or fails once the attempts are used up), :func:`recover_expired` (leases of
  dead workers);
- **the owner**: :func:`cancel_job` (a waiting job is cancelled and refunded at once;
  a running one is marked for its worker).

Locks: every transaction here that moves credits or counters locks the user's row
first (:mod:`database.locks`), then the work's row, the order the API uses.
Errors are classed by :func:`is_transient`: only a lost connection, a lock or
serialization conflict is worth another attempt.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from sqlalchemy import (
    BindParameter,
    Connection,
    Engine,
    Float,
    String,
    bindparam,
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from database import credits, errors, locks
from database._tx import atomic
from database.limits import Limits, storage_refusal
from database.models import (
    DatasetProfile,
    DatasetVersion,
    IngestionJob,
    IngestionStatus,
    Job,
    JobKind,
    JobNode,
    JobStatus,
    Model,
    NodeStatus,
    NodeType,
    ProblemType,
    WorkflowSnapshot,
)

log = logging.getLogger(__name__)

__all__ = [
    "CHANNEL",
    "FINISHED",
    "CancelOutcome",
    "Claim",
    "LeaseLost",
    "Queue",
    "Recovered",
    "backoff_seconds",
    "cancel_job",
    "check_job",
    "claim",
    "OverQuota",
    "complete_ingestion",
    "enqueue_ingestion",
    "enqueue_run",
    "fail",
    "fail_ingestion",
    "finish_job",
    "is_transient",
    "record_model",
    "record_node",
    "recover_expired",
    "release",
    "renew",
    "retry_later",
]

#: The channel the queue's triggers notify (sql/triggers/queue.sql).
CHANNEL = "automl_queue"

#: Which table a claim came from: ``jobs`` or ``ingestion_jobs``.
Queue = Literal["job", "ingestion"]

#: A job in one of these has ended.
FINISHED = (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)

#: Backoff of a transient failure: BACKOFF_BASE_SECONDS * 2 ** (attempts - 1), capped.
BACKOFF_BASE_SECONDS = 5.0
BACKOFF_MAX_SECONDS = 300.0
#: Error messages are stored on one line of at most this many characters.
MAX_ERROR_CHARS = 2000


class OverQuota(Exception):
    """What a worker stores (a model file) does not fit in its owner's storage quota."""


class LeaseLost(Exception):
    """This worker no longer holds the work's lease (it expired and was recovered)."""


@dataclass(frozen=True)
class Claim:
    """Work a worker holds: which table (``queue``), what kind, whose, which attempt."""

    queue: Queue
    kind: JobKind
    id: uuid.UUID
    user_id: uuid.UUID
    attempts: int
    worker: str
    #: Seconds the work waited in the queue before this claim: from when it became
    #: due (``run_after``, else its creation) to the claim (the database's clock).
    waited_seconds: float | None = None


@dataclass
class Recovered:
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    refunded_credits: int = 0


@dataclass(frozen=True)
class CancelOutcome:
    job: Job
    refunded_credits: int


# --- helpers ------------------------------------------------------------------------------
def _lease_end(seconds: float | Any) -> Any:
    if not isinstance(seconds, BindParameter):
        seconds = float(seconds)
    return func.now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)


def _now() -> Any:
    return func.clock_timestamp()


def clean_message(message: str | None) -> str | None:
    """A message the database can store: no NUL byte (text refuses it), bounded."""
    if message is None:
        return None
    return message.replace("\x00", "")[:MAX_ERROR_CHARS]


_Json = TypeVar("_Json", dict[str, Any], list[Any])


def _json_safe(value: _Json | None) -> _Json | None:
    """Refuse NaN and infinities here (jsonb would, less clearly); drop NUL bytes."""
    if value is None:
        return None
    text = json.dumps(value, allow_nan=False)
    if "\\u0000" in text:
        text = text.replace("\\u0000", "")
    loaded: _Json = json.loads(text)
    return loaded


def backoff_seconds(
    attempts: int, *, base: float = BACKOFF_BASE_SECONDS, cap: float = BACKOFF_MAX_SECONDS
) -> float:
    """How long work waits after its ``attempts``-th attempt failed transiently:
    ``base``, then twice as long each attempt, at most ``cap``."""
    return float(min(cap, base * 2 ** max(0, attempts - 1)))


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt may succeed: a lost connection, a lock not granted in
    time, a serialization conflict or deadlock, a network error of the storage.
    Anything else (a file that cannot be read, a value the database refuses, a bug)
    is permanent: retrying gives the same answer."""
    if isinstance(exc, errors.DatabaseError):
        return exc.retryable
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        return isinstance(exc, sa_exc.OperationalError)
    if isinstance(exc, sa_exc.TimeoutError):  # the pool had no connection to give
        return True
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        psycopg = None  # type: ignore[assignment]
    if psycopg is not None and isinstance(exc, psycopg.OperationalError):
        return True
    return isinstance(exc, ConnectionError | TimeoutError)


def _lost(claim: Claim) -> LeaseLost:
    return LeaseLost(f"{claim.queue} {claim.id}: the lease of {claim.worker} was lost")


# --- enqueue --------------------------------------------------------------------------------
def enqueue_run(
    session: Session,
    *,
    user_id: uuid.UUID,
    workflow_id: uuid.UUID | None,
    snapshot_data: dict[str, Any],
    nodes: Iterable[tuple[str, NodeType]],
    credit_cost: int,
    priority: int = 0,
    description: str | None = None,
    kind: JobKind = JobKind.WORKFLOW_RUN,
) -> Job:
    """Queue a run: its snapshot, the job (``queued``), its nodes (``pending``) and the
    charge of ``credit_cost``, in one transaction (the session's, or a savepoint in
    the caller's). ``InsufficientCredits`` leaves none of it."""
    if kind == JobKind.INGESTION:
        raise ValueError("ingestions are queued with enqueue_ingestion")
    with atomic(session):
        locks.lock_users(session, [user_id])
        snapshot = WorkflowSnapshot(
            workflow_id=workflow_id, user_id=user_id, snapshot_data=snapshot_data
        )
        session.add(snapshot)
        session.flush()
        job = Job(
            user_id=user_id,
            workflow_snapshot_id=snapshot.id,
            kind=kind,
            status=JobStatus.QUEUED,
            credit_cost=credit_cost,
            priority=priority,
        )
        session.add(job)
        session.flush()
        session.add_all(
            JobNode(
                job_id=job.id,
                user_id=user_id,
                node_id=node_id,
                node_type=node_type,
                status=NodeStatus.PENDING,
            )
            for node_id, node_type in nodes
        )
        session.flush()
        credits.charge_job(session, job, user=user_id, description=description)
    return job


def enqueue_ingestion(
    session: Session, *, user_id: uuid.UUID, dataset_version_id: uuid.UUID, source_path: str
) -> IngestionJob:
    """Queue the ingestion of an uploaded version (``pending``), in the caller's
    transaction (the upload's: the version and its ingestion commit together)."""
    ingestion = IngestionJob(
        user_id=user_id,
        dataset_version_id=dataset_version_id,
        source_path=source_path,
        status=IngestionStatus.PENDING,
    )
    session.add(ingestion)
    session.flush()
    return ingestion


# --- claim and lease ------------------------------------------------------------------------
def _due(run_after: Any) -> Any:
    return or_(run_after.is_(None), run_after <= func.now())


def _waited(due_at: Any) -> Any:
    """Seconds from ``due_at`` to now (the claim's time), never negative."""
    return func.greatest(func.extract("epoch", func.now() - due_at), 0).label("waited")


def _claim_job_statement() -> Any:
    """The job's claim, built once (the hot path: building a statement costs the
    client more than running it); parameters ``worker`` and ``lease``."""
    next_job = (
        select(Job.id, func.coalesce(Job.run_after, Job.created_at).label("due_at"))
        .where(Job.status == JobStatus.QUEUED, _due(Job.run_after))
        .order_by(Job.priority.desc(), Job.created_at)  # ix_jobs_queue
        .limit(1)
        .with_for_update(skip_locked=True)
        .subquery("next_job")
    )
    return (
        update(Job)
        .where(Job.id == next_job.c.id)
        .values(
            status=JobStatus.RUNNING,
            leased_by=bindparam("worker", type_=String),
            lease_expires_at=_lease_end(bindparam("lease", type_=Float)),
            attempts=Job.attempts + 1,
            started_at=func.coalesce(Job.started_at, func.now()),
            run_after=None,
        )
        .returning(Job.id, Job.user_id, Job.attempts, Job.kind, _waited(next_job.c.due_at))
    )


_CLAIM_JOB = _claim_job_statement()


@contextmanager
def _autocommit(engine: Engine) -> Iterator[Connection]:
    """A pooled connection in autocommit: each statement its own transaction, with no
    ``BEGIN`` or ``COMMIT`` round trips. For work that is one statement."""
    with engine.connect() as conn:
        yield conn.execution_options(isolation_level="AUTOCOMMIT")


def claim(engine: Engine, queue: Queue, worker: str, lease_seconds: float) -> Claim | None:
    """Take the next waiting job (or ingestion) for ``worker``; None when none waits.

    A job's claim is one statement (``UPDATE ... WHERE id = (SELECT ... FOR UPDATE
    SKIP LOCKED) RETURNING``), run in autocommit: one round trip. An ingestion's
    also marks its version, in one transaction."""
    if queue == "job":
        with _autocommit(engine) as conn:
            row = conn.execute(
                _CLAIM_JOB, {"worker": worker, "lease": float(lease_seconds)}
            ).one_or_none()
        if row is None:
            return None
        return Claim("job", row.kind, row.id, row.user_id, row.attempts, worker, float(row.waited))
    with engine.begin() as conn:
        next_ingestion = (
            select(
                IngestionJob.id,
                func.coalesce(IngestionJob.run_after, IngestionJob.created_at).label("due_at"),
            )
            .where(IngestionJob.status == IngestionStatus.PENDING, _due(IngestionJob.run_after))
            .order_by(IngestionJob.created_at)  # ix_ingestion_jobs_pending_created_at
            .limit(1)
            .with_for_update(skip_locked=True)
            .subquery("next_ingestion")
        )
        taken = conn.execute(
            update(IngestionJob)
            .where(IngestionJob.id == next_ingestion.c.id)
            .values(
                status=IngestionStatus.PROCESSING,
                leased_by=worker,
                lease_expires_at=_lease_end(lease_seconds),
                attempts=IngestionJob.attempts + 1,
                started_at=func.coalesce(IngestionJob.started_at, func.now()),
                error_message=None,
                run_after=None,
            )
            .returning(
                IngestionJob.id,
                IngestionJob.user_id,
                IngestionJob.attempts,
                IngestionJob.dataset_version_id,
                _waited(next_ingestion.c.due_at),
            )
        ).one_or_none()
        if taken is None:
            return None
        # The version shows 'processing' with its ingestion: what the API shows.
        conn.execute(
            update(DatasetVersion)
            .where(
                DatasetVersion.id == taken.dataset_version_id,
                DatasetVersion.status != IngestionStatus.COMPLETED,
            )
            .values(status=IngestionStatus.PROCESSING, error_message=None)
        )
        return Claim(
            "ingestion",
            JobKind.INGESTION,
            taken.id,
            taken.user_id,
            taken.attempts,
            worker,
            float(taken.waited),
        )


def _table(queue: Queue) -> type[Job] | type[IngestionJob]:
    return Job if queue == "job" else IngestionJob


def _busy(queue: Queue) -> JobStatus | IngestionStatus:
    return JobStatus.RUNNING if queue == "job" else IngestionStatus.PROCESSING


def renew(engine: Engine, claims: Sequence[Claim], lease_seconds: float) -> set[uuid.UUID]:
    """The heartbeat: renew every lease this worker holds; the ids whose lease is lost."""
    lost: set[uuid.UUID] = set()
    for queue in ("job", "ingestion"):
        held = [c for c in claims if c.queue == queue]
        if not held:
            continue
        table = _table(queue)
        ids = [c.id for c in held]
        with engine.begin() as conn:
            kept = set(
                conn.execute(
                    update(table)
                    .where(
                        table.id.in_(ids),
                        table.leased_by == held[0].worker,
                        table.status == _busy(queue),
                    )
                    .values(lease_expires_at=_lease_end(lease_seconds))
                    .returning(table.id)
                ).scalars()
            )
        lost.update(set(ids) - kept)
    return lost


def check_job(conn: Connection | Session, claim: Claim, lease_seconds: float) -> bool:
    """Between two nodes: renew the lease and say whether a cancel was asked.

    Raises :class:`LeaseLost` when the job is no longer this worker's.
    """
    row = conn.execute(
        update(Job)
        .where(Job.id == claim.id, Job.leased_by == claim.worker, Job.status == JobStatus.RUNNING)
        .values(lease_expires_at=_lease_end(lease_seconds))
        .returning(Job.cancel_requested_at)
    ).one_or_none()
    if row is None:
        raise _lost(claim)
    return row.cancel_requested_at is not None


# --- progress -------------------------------------------------------------------------------
_STAMPS: dict[NodeStatus, dict[str, Any]] = {
    NodeStatus.RUNNING: {"started_at": _now(), "completed_at": None},
    NodeStatus.SUCCESS: {"completed_at": _now()},
    NodeStatus.FAILED: {"completed_at": _now()},
    NodeStatus.SKIPPED: {"completed_at": None},
}


def record_node(
    conn: Connection | Session,
    claim: Claim,
    node_id: str,
    status: NodeStatus,
    *,
    output: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """A node of the held job moves to ``status`` (running, success, failed, skipped),
    with its output or error. In the caller's transaction: call :func:`check_job`
    in it first, so a worker that lost the job writes nothing."""
    values: dict[str, Any] = {"status": status, "error_message": clean_message(error)}
    values.update(_STAMPS[status])
    if output is not None:
        values["output_data"] = _json_safe(output)
    conn.execute(
        update(JobNode)
        .where(
            JobNode.job_id == claim.id,
            JobNode.user_id == claim.user_id,
            JobNode.node_id == node_id,
        )
        .values(**values)
    )


def record_model(
    session: Session,
    claim: Claim,
    node_id: str,
    *,
    lease_seconds: float,
    model_id: uuid.UUID,
    name: str,
    algorithm: str,
    problem_type: ProblemType | str,
    metrics: dict[str, Any],
    hyperparameters: dict[str, Any],
    location: str,
    output: dict[str, Any],
    size_bytes: int,
    limits: Limits | None = None,
    signature: dict[str, Any] | None = None,
    input_example: list[Any] | None = None,
    environment: dict[str, Any] | None = None,
    register: Registration | None = None,
) -> dict[str, Any] | None:
    """A saved model's row (its bytes in ``size_bytes``; its ``signature``, input
    example and ``environment``) and its node's success, in one transaction that
    locks the user first (``model_count`` and ``storage_used_bytes`` move) and checks
    the lease (:class:`LeaseLost`). A model that does not fit in the owner's storage
    quota (``limits``, default the defaults) is not saved: :class:`OverQuota`,
    nothing written.

    With ``register`` (the save node's ``register``), the same transaction registers
    the model as the next version of the owner's registered model of that name
    (created if absent), with its lineage (the job, the workflow snapshot, the
    dataset versions) and the alias (``database.registry.register_saved_model``);
    returns what was registered (also in the node's output, ``registered``). A
    registration the registry refuses saves nothing: :class:`RegistrationRefused`."""
    with session.begin():
        locks.lock_users(session, [claim.user_id])
        check_job(session, claim, lease_seconds)
        refusal = storage_refusal(session, claim.user_id, size_bytes, limits or Limits())
        if refusal is not None:
            raise OverQuota(f"the model ({size_bytes} bytes) was not saved: {refusal}")
        session.add(
            Model(
                id=model_id,
                user_id=claim.user_id,
                job_id=claim.id,
                name=name,
                algorithm=algorithm,
                problem_type=ProblemType(problem_type),
                metrics=_json_safe(metrics) or {},
                hyperparameters=_json_safe(hyperparameters) or {},
                s3_path=location,
                size_bytes=size_bytes,
                signature=_json_safe(signature) or {},
                input_example=_json_safe(input_example),
                environment=_json_safe(environment) or {},
            )
        )
        session.flush()
        registered = None
        if register is not None:
            registered = _register(session, claim, model_id, metrics, register)
            output = {**output, "registered": registered}
        record_node(session, claim, node_id, NodeStatus.SUCCESS, output=output)
    return registered


@dataclass(frozen=True)
class Registration:
    """A save node's ``register``: the registered model's name, the alias to point
    at the new version, and the dataset versions the model was trained on."""

    name: str
    alias: str | None = None
    dataset_version_ids: tuple[uuid.UUID, ...] = ()


class RegistrationRefused(Exception):
    """The registry refused a save node's registration (a bad name or alias, a
    metric it cannot record): the model is not saved, the node fails."""


def _register(
    session: Session,
    claim: Claim,
    model_id: uuid.UUID,
    metrics: dict[str, Any],
    register: Registration,
) -> dict[str, Any]:
    from database import registry

    numbers = {
        k: float(v)
        for k, v in metrics.items()
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
    }
    try:
        with session.begin_nested():
            version = registry.register_saved_model(
                session,
                claim.user_id,
                model_id,
                register.name,
                alias=register.alias,
                metrics=numbers,
                dataset_version_ids=register.dataset_version_ids,
            )
    except errors.RuleViolation as exc:
        raise RegistrationRefused(
            f"the model was not registered as {register.name!r}: {exc}"
        ) from exc
    return {
        "registered_model_id": str(version.registered_model_id),
        "model_version_id": str(version.id),
        "name": register.name,
        "version": version.version,
        "alias": register.alias,
    }


# --- ending a job ---------------------------------------------------------------------------
def _refund(session: Session, job_id: uuid.UUID, user_id: uuid.UUID, reason: str) -> int:
    """Refund the job's charge once; 0 when it was free or never charged. The one
    refund of a job's end: a worker's failure or cancel, recovery, the owner's cancel."""
    try:
        entry = credits.refund_job(session, job_id, reason, user=user_id)
    except errors.JobNotCharged:
        return 0
    return entry.amount


def _end_job(
    session: Session,
    job_id: uuid.UUID,
    status: JobStatus,
    *,
    extra: Any = None,
    results: dict[str, Any] | None = None,
    error: str | None = None,
    traceback: str | None = None,
) -> bool:
    values: dict[str, Any] = {
        "status": status,
        "error_message": clean_message(error),
        "error_traceback": clean_message(traceback),
        "completed_at": _now(),
        "leased_by": None,
        "lease_expires_at": None,
    }
    if results is not None:
        values["results"] = _json_safe(results)
    stmt = update(Job).where(Job.id == job_id)
    if extra is not None:
        stmt = stmt.where(extra)
    ended = session.execute(stmt.values(**values).returning(Job.id)).one_or_none()
    return ended is not None


def finish_job(
    session: Session,
    claim: Claim,
    status: JobStatus | Literal["completed", "failed", "cancelled"],
    *,
    results: dict[str, Any] | None = None,
    error: str | None = None,
    traceback: str | None = None,
    refund: bool = True,
) -> int:
    """End the job this worker holds, in one transaction, refunding a failed or
    cancelled one; returns the credits refunded. Raises :class:`LeaseLost`.
    ``refund=False``: a cancelled job that delivered what it was charged for (an
    automl search that kept its best model so far) keeps its charge.

    A completion moves no credits: it is one statement in autocommit that locks the
    user's row, then ends the job if this worker's lease holds
    (:func:`_complete_in_one_statement`). A failure or cancel locks the user, ends the
    job, skips a cancelled job's waiting nodes and refunds, in one transaction."""
    status = JobStatus(status)
    if status not in FINISHED:
        raise ValueError(f"a job ends completed, failed or cancelled, not {status}")
    if status == JobStatus.COMPLETED and _complete_in_one_statement(session, claim, results):
        return 0
    with session.begin():
        locks.lock_users(session, [claim.user_id])  # the API's lock order: user, then job
        held = (Job.leased_by == claim.worker) & (Job.status == JobStatus.RUNNING)
        if not _end_job(
            session,
            claim.id,
            status,
            extra=held,
            results=results,
            error=error,
            traceback=traceback,
        ):
            raise _lost(claim)
        if status == JobStatus.CANCELLED:
            _skip_waiting_nodes(session, claim.id, "skipped: the job was cancelled")
        refunded = 0
        if status != JobStatus.COMPLETED and refund:
            refunded = _refund(session, claim.id, claim.user_id, error or f"job {status}")
    return refunded


def _complete_in_one_statement(
    session: Session, claim: Claim, results: dict[str, Any] | None
) -> bool:
    """The completed job in one statement: ``UPDATE jobs ... WHERE id = :job AND
    leased_by = :worker AND status = 'running' AND user_id = (the user's row, locked:
    :func:`database.locks.locked_user_id`)``, in autocommit. The same rules as the
    transaction of :func:`finish_job`: the user's row is locked before the job's, the
    lease is checked by the UPDATE itself, and the status triggers log the change.

    True when the job was completed. False when this path cannot be taken (the
    session is in a transaction, or bound to a connection) or the statement ended no
    job: the caller then runs the general path, which raises the precise error
    (:class:`LeaseLost`, ``UserNotFound``)."""
    if session.in_transaction():
        return False
    try:
        bind = session.get_bind()
    except sa_exc.UnboundExecutionError:
        return False
    if not isinstance(bind, Engine):
        return False
    params: dict[str, Any] = {
        "job": claim.id,
        "worker": claim.worker,
        "user": claim.user_id,
        "timeout": locks.lock_timeout_value(),
    }
    if results is None:
        statement = _COMPLETE_JOB
    else:
        statement, params["results"] = _COMPLETE_JOB_WITH_RESULTS, _json_safe(results)
    with _autocommit(bind) as conn:
        ended = conn.execute(statement, params).one_or_none()
    return ended is not None


def _complete_job_statement(with_results: bool) -> Any:
    """The completion, built once; parameters ``job``, ``worker``, ``user``,
    ``timeout`` (the ``lock_timeout``) and ``results`` if ``with_results``."""
    values: dict[str, Any] = {
        "status": JobStatus.COMPLETED,
        "error_message": None,
        "error_traceback": None,
        "completed_at": _now(),
        "leased_by": None,
        "lease_expires_at": None,
    }
    if with_results:
        values["results"] = bindparam("results", type_=Job.__table__.c.results.type)
    return (
        update(Job)
        .where(
            Job.id == bindparam("job", type_=Job.__table__.c.id.type),
            Job.leased_by == bindparam("worker", type_=String),
            Job.status == JobStatus.RUNNING,
            Job.user_id
            == locks.locked_user_id(
                bindparam("user", type_=Job.__table__.c.user_id.type),
                lock_timeout=bindparam("timeout", type_=String),
            ),
        )
        .values(**values)
        .returning(Job.id)
    )


_COMPLETE_JOB = _complete_job_statement(False)
_COMPLETE_JOB_WITH_RESULTS = _complete_job_statement(True)


def _skip_waiting_nodes(session: Session, job_id: uuid.UUID, reason: str) -> None:
    session.execute(
        update(JobNode)
        .where(JobNode.job_id == job_id, JobNode.status == NodeStatus.PENDING)
        .values(status=NodeStatus.SKIPPED, error_message=clean_message(reason))
    )


def _reset_nodes(session: Session, job_id: uuid.UUID) -> list[str]:
    """The nodes of a job queued again go back to pending (the database allows it
    only once the job is queued), and the models its attempt saved are deleted;
    returns their artifacts' locations, for the caller to remove after commit."""
    session.execute(
        update(JobNode)
        .where(JobNode.job_id == job_id, JobNode.status != NodeStatus.PENDING)
        .values(
            status=NodeStatus.PENDING,
            output_data=None,
            error_message=None,
            started_at=None,
            completed_at=None,
        )
    )
    paths = session.execute(delete(Model).where(Model.job_id == job_id).returning(Model.s3_path))
    return [p for p in paths.scalars() if p]


def _requeue_job(
    session: Session,
    job_id: uuid.UUID,
    *,
    extra: Any = None,
    uncount: bool = False,
    after_seconds: float | None = None,
    error: str | None = None,
) -> bool:
    values: dict[str, Any] = {
        "status": JobStatus.QUEUED,
        "leased_by": None,
        "lease_expires_at": None,
        "error_message": clean_message(error),
        "run_after": None if after_seconds is None else _lease_end(after_seconds),
    }
    if uncount:
        values["attempts"] = func.greatest(Job.attempts - 1, 0)
    stmt = update(Job).where(Job.id == job_id, Job.status == JobStatus.RUNNING)
    if extra is not None:
        stmt = stmt.where(extra)
    return session.execute(stmt.values(**values).returning(Job.id)).one_or_none() is not None


def _requeue_ingestion(
    session: Session,
    ingestion_id: uuid.UUID,
    *,
    extra: Any = None,
    uncount: bool = False,
    after_seconds: float | None = None,
    error: str | None = None,
) -> uuid.UUID | None:
    values: dict[str, Any] = {
        "status": IngestionStatus.PENDING,
        "leased_by": None,
        "lease_expires_at": None,
        "error_message": clean_message(error),
        "run_after": None if after_seconds is None else _lease_end(after_seconds),
    }
    if uncount:
        values["attempts"] = func.greatest(IngestionJob.attempts - 1, 0)
    stmt = update(IngestionJob).where(
        IngestionJob.id == ingestion_id, IngestionJob.status == IngestionStatus.PROCESSING
    )
    if extra is not None:
        stmt = stmt.where(extra)
    version_id = session.execute(
        stmt.values(**values).returning(IngestionJob.dataset_version_id)
    ).scalar_one_or_none()
    if version_id is not None:
        session.execute(
            update(DatasetVersion)
            .where(
                DatasetVersion.id == version_id,
                DatasetVersion.status == IngestionStatus.PROCESSING,
            )
            .values(status=IngestionStatus.PENDING, error_message=clean_message(error))
        )
    return version_id


def _held(table: type[Job] | type[IngestionJob], claim: Claim) -> Any:
    return table.leased_by == claim.worker


def release(session: Session, claim: Claim) -> list[str]:
    """Give held work back to the queue (a worker stopping): it waits again, this
    attempt not counted. Returns artifact locations to remove. Raises LeaseLost."""
    with session.begin():
        locks.lock_users(session, [claim.user_id])
        if claim.queue == "job":
            if not _requeue_job(session, claim.id, extra=_held(Job, claim), uncount=True):
                raise _lost(claim)
            return _reset_nodes(session, claim.id)
        if _requeue_ingestion(session, claim.id, extra=_held(IngestionJob, claim), uncount=True):
            return []
        raise _lost(claim)


def retry_later(
    session: Session,
    claim: Claim,
    error: str,
    *,
    max_attempts: int,
    traceback: str | None = None,
) -> tuple[str, list[str]]:
    """A transient failure of held work: back to the queue, not claimed before
    :func:`backoff_seconds` of its attempts has passed (the attempt counts); or, when
    the attempts are used up, failed with ``error`` (a job refunded). Returns the
    outcome (``retry`` or ``failed``) and artifact locations to remove after commit.
    Raises :class:`LeaseLost`."""
    if claim.attempts >= max_attempts:
        message = f"gave up after {claim.attempts} attempts: {error}"
        return "failed", fail(session, claim, message, traceback=traceback)
    delay = backoff_seconds(claim.attempts)
    message = f"attempt {claim.attempts} failed, retried in {delay:g}s: {error}"
    with session.begin():
        locks.lock_users(session, [claim.user_id])
        if claim.queue == "job":
            if not _requeue_job(
                session, claim.id, extra=_held(Job, claim), after_seconds=delay, error=message
            ):
                raise _lost(claim)
            files = _reset_nodes(session, claim.id)
        else:
            if (
                _requeue_ingestion(
                    session,
                    claim.id,
                    extra=_held(IngestionJob, claim),
                    after_seconds=delay,
                    error=message,
                )
                is None
            ):
                raise _lost(claim)
            files = []
    log.info("%s %s: %s", claim.queue, claim.id, message)
    return "retry", files


def fail(session: Session, claim: Claim, error: str, *, traceback: str | None = None) -> list[str]:
    """Fail held work at once with ``error`` (a permanent error): a job is failed and
    refunded, an ingestion and its version failed. Returns artifact locations to
    remove (none today). Raises :class:`LeaseLost`."""
    if claim.queue == "job":
        finish_job(session, claim, JobStatus.FAILED, error=error, traceback=traceback)
        return []
    fail_ingestion(session, claim, error)
    return []


# --- ingestion ------------------------------------------------------------------------------
def _hold_ingestion(session: Session, claim: Claim) -> tuple[bool, uuid.UUID] | None:
    """Lock the ingestion row: (held by this worker, its version); None when gone."""
    row = session.execute(
        select(IngestionJob.leased_by, IngestionJob.status, IngestionJob.dataset_version_id)
        .where(IngestionJob.id == claim.id)
        .with_for_update()
    ).one_or_none()
    if row is None:
        return None
    held = row.leased_by == claim.worker and row.status == IngestionStatus.PROCESSING
    return held, row.dataset_version_id


def complete_ingestion(
    session: Session,
    claim: Claim,
    *,
    location: str,
    parquet_size_bytes: int,
    row_count: int,
    column_count: int,
    columns_metadata: dict[str, Any],
    profile: dict[str, Any],
    limits: Limits | None = None,
) -> Literal["completed", "failed", "gone"]:
    """Record an ingested version (its Parquet file, shape, columns, profile) and
    complete its ingestion, in one transaction that locks the user first
    (``storage_used_bytes`` moves) and checks the lease. ``gone`` when the version was
    deleted meanwhile, ``failed`` when the Parquet copy does not fit in the owner's
    storage quota (``limits``; the ingestion and version are failed with the reason);
    the caller removes the file in both cases. Raises :class:`LeaseLost`."""
    with session.begin():
        try:
            locks.lock_users(session, [claim.user_id])
        except errors.UserNotFound:
            return "gone"
        held = _hold_ingestion(session, claim)
        if held is None:
            return "gone"
        if not held[0]:
            raise _lost(claim)
        version_id = held[1]
        refusal = storage_refusal(session, claim.user_id, parquet_size_bytes, limits or Limits())
        if refusal is not None:
            message = (
                f"the processed Parquet copy ({parquet_size_bytes} bytes) was not kept: {refusal}"
            )
            _fail_held_ingestion(session, claim, version_id, message)
            return "failed"
        session.execute(
            update(DatasetVersion)
            .where(DatasetVersion.id == version_id)
            .values(
                s3_path=location,
                parquet_size_bytes=parquet_size_bytes,
                row_count=row_count,
                column_count=column_count,
                columns_metadata=_json_safe(columns_metadata),
                status=IngestionStatus.COMPLETED,
                error_message=None,
                processed_at=_now(),
            )
        )
        values = {"dataset_version_id": version_id, **profile}
        upsert = insert(DatasetProfile).values(**values)
        session.execute(
            upsert.on_conflict_do_update(
                index_elements=["dataset_version_id"],
                set_={k: upsert.excluded[k] for k in values if k != "dataset_version_id"},
            )
        )
        session.execute(
            update(IngestionJob)
            .where(IngestionJob.id == claim.id)
            .values(
                status=IngestionStatus.COMPLETED,
                error_message=None,
                completed_at=_now(),
                leased_by=None,
                lease_expires_at=None,
            )
        )
    return "completed"


def fail_ingestion(session: Session, claim: Claim, message: str) -> bool:
    """Fail the held ingestion and its version with ``message`` (for the user); False
    when they were deleted meanwhile. Raises :class:`LeaseLost`."""
    message = clean_message(message) or "ingestion failed"
    with session.begin():
        try:
            locks.lock_users(session, [claim.user_id])  # the API's lock order
        except errors.UserNotFound:
            return False
        held = _hold_ingestion(session, claim)
        if held is None:
            return False
        if not held[0]:
            raise _lost(claim)
        _fail_held_ingestion(session, claim, held[1], message)
    log.info("ingestion %s failed: %s", claim.id, message)
    return True


def _fail_held_ingestion(
    session: Session, claim: Claim, version_id: uuid.UUID, message: str
) -> None:
    session.execute(
        update(DatasetVersion)
        .where(DatasetVersion.id == version_id)
        .values(status=IngestionStatus.FAILED, error_message=message)
    )
    session.execute(
        update(IngestionJob)
        .where(IngestionJob.id == claim.id)
        .values(
            status=IngestionStatus.FAILED,
            error_message=message,
            completed_at=_now(),
            leased_by=None,
            lease_expires_at=None,
        )
    )


# --- the owner's cancel ---------------------------------------------------------------------
def cancel_job(session: Session, user_id: uuid.UUID, job_id: uuid.UUID) -> CancelOutcome:
    """The owner cancels a job, in the caller's transaction (the caller commits).

    A pending or queued job is cancelled (its nodes skipped) and refunded at once. A
    running job is marked (``cancel_requested_at``) for its worker, which stops it
    before its next node and settles its credits; asking twice keeps the first time.
    Raises ``UserNotFound``, ``JobNotFound`` (not this user's), ``JobAlreadyFinished``.
    """
    if locks.lock_user(session, user_id) is None:  # the lock the refund takes, taken first
        raise errors.UserNotFound(f"user {user_id} does not exist")
    job = session.scalars(
        select(Job)
        .where(Job.id == job_id, Job.user_id == user_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one_or_none()
    if job is None:
        raise errors.JobNotFound(f"job {job_id} does not exist")
    if job.status in FINISHED:
        raise errors.JobAlreadyFinished(
            f"the job has already ended ({job.status.value})", detail=f"status={job.status.value}"
        )
    now = session.scalar(select(func.now()))
    if job.status == JobStatus.RUNNING:
        if job.cancel_requested_at is None:
            job.cancel_requested_at = now
        session.flush()
        return CancelOutcome(job, 0)
    job.status = JobStatus.CANCELLED
    job.completed_at = now
    job.cancel_requested_at = job.cancel_requested_at or now
    session.flush()
    _skip_waiting_nodes(session, job.id, "skipped: the job was cancelled")
    refunded = _refund(session, job.id, user_id, "cancelled before it started")
    session.flush()
    return CancelOutcome(job, refunded)


# --- recovery -------------------------------------------------------------------------------
def _expired(conn: Connection, queue: Queue, limit: int) -> list[tuple[uuid.UUID, uuid.UUID]]:
    table = _table(queue)
    rows = conn.execute(
        select(table.id, table.user_id)
        .where(table.status == _busy(queue), table.lease_expires_at < func.now())
        .order_by(table.lease_expires_at)
        .limit(limit)
    )
    return [(r.id, r.user_id) for r in rows]


def recover_expired(
    engine: Engine,
    max_attempts: int,
    *,
    limit: int = 100,
    remove_file: Callable[[str], object] | None = None,
) -> Recovered:
    """Take back work whose lease expired: wait again, or fail (and refund) a job
    that used up its attempts; a job whose cancel was asked is cancelled. One
    transaction per row; rows another worker is recovering are skipped."""
    out = Recovered()
    with engine.connect() as conn:
        jobs = _expired(conn, "job", limit)
        ingestions = _expired(conn, "ingestion", limit)
    for job_id, user_id in jobs:
        with Session(engine) as session:
            files = _recover_job(session, job_id, user_id, max_attempts, out)
        for location in files:
            if remove_file is not None:
                remove_file(location)
    for ingestion_id, user_id in ingestions:
        with Session(engine) as session:
            _recover_ingestion(session, ingestion_id, user_id, max_attempts, out)
    if jobs or ingestions:
        log.info(
            "recovered expired leases: %d requeued, %d failed, %d cancelled",
            out.requeued,
            out.failed,
            out.cancelled,
        )
    return out


def _recover_job(
    session: Session, job_id: uuid.UUID, user_id: uuid.UUID, max_attempts: int, out: Recovered
) -> list[str]:
    with session.begin():
        try:
            locks.lock_users(session, [user_id])
        except errors.UserNotFound:
            return []
        row = session.execute(
            select(Job.attempts, Job.cancel_requested_at)
            .where(
                Job.id == job_id,
                Job.status == JobStatus.RUNNING,
                Job.lease_expires_at < func.now(),
            )
            .with_for_update(skip_locked=True)
        ).one_or_none()
        if row is None:  # renewed, finished, or taken by another recovery meanwhile
            return []
        if row.cancel_requested_at is None and row.attempts < max_attempts:
            _requeue_job(session, job_id)
            out.requeued += 1
            return _reset_nodes(session, job_id)
        if row.cancel_requested_at is not None:
            status, reason = JobStatus.CANCELLED, "cancelled while its worker was lost"
            out.cancelled += 1
        else:
            status = JobStatus.FAILED
            reason = f"its worker stopped responding {row.attempts} times; the job was given up"
            out.failed += 1
        _end_job(session, job_id, status, error=reason)
        # The node its worker was running when it died failed with it; the rest
        # will not run.
        session.execute(
            update(JobNode)
            .where(JobNode.job_id == job_id, JobNode.status == NodeStatus.RUNNING)
            .values(status=NodeStatus.FAILED, error_message=reason, completed_at=_now())
        )
        _skip_waiting_nodes(session, job_id, reason)
        files = [
            p
            for p in session.execute(
                delete(Model).where(Model.job_id == job_id).returning(Model.s3_path)
            ).scalars()
            if p
        ]
        out.refunded_credits += _refund(session, job_id, user_id, reason)
    return files


def _recover_ingestion(
    session: Session,
    ingestion_id: uuid.UUID,
    user_id: uuid.UUID,
    max_attempts: int,
    out: Recovered,
) -> None:
    with session.begin():
        try:
            locks.lock_users(session, [user_id])
        except errors.UserNotFound:
            return
        row = session.execute(
            select(IngestionJob.attempts, IngestionJob.dataset_version_id)
            .where(
                IngestionJob.id == ingestion_id,
                IngestionJob.status == IngestionStatus.PROCESSING,
                IngestionJob.lease_expires_at < func.now(),
            )
            .with_for_update(skip_locked=True)
        ).one_or_none()
        if row is None:
            return
        if row.attempts < max_attempts:
            _requeue_ingestion(session, ingestion_id)
            out.requeued += 1
            return
        reason = f"its worker stopped responding {row.attempts} times; ingestion was given up"
        out.failed += 1
        session.execute(
            update(IngestionJob)
            .where(IngestionJob.id == ingestion_id)
            .values(
                status=IngestionStatus.FAILED,
                error_message=reason,
                leased_by=None,
                lease_expires_at=None,
                completed_at=_now(),
            )
        )
        session.execute(
            update(DatasetVersion)
            .where(
                DatasetVersion.id == row.dataset_version_id,
                DatasetVersion.status == IngestionStatus.PROCESSING,
            )
            .values(status=IngestionStatus.FAILED, error_message=reason)
        )
