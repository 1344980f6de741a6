"""Deployments' rules, in one place (issue 14; docs/serving.md).

A deployment is a user's named endpoint serving one model version, or following an
alias (``champion``) of a registered model: the alias is resolved per request, in
the statement that also checks the deployment (:func:`resolve`), so a moved alias is
served from the next request on, with no cache to expire and no extra round trip.

The database keeps (``sql/triggers/deployments.sql``): ``models.is_deployed`` from
the active deployments and the aliases they follow (refused to clients, ML080), the
status life (ML081: pending -> active | failed | stopped; active -> stopped |
failed), the fixed target (ML082), exactly one target
(``ck_deployments_one_target``), the config's bounds (``ck_deployments_config_shape``)
and a name unique per user. This module adds what needs a decision:

- **who may deploy**: the model's owner, or a user granted ``deploy`` on it
  (:func:`database.registry.can`); anyone else gets "not found". The deployment is
  its creator's: its **owner pays** for its predictions and batches, whoever owns
  the model. A grant taken back stops serving at the next request (:func:`resolve`
  checks ``can`` again when the deployment's owner is not the model's);
- **activation**: a new deployment is ``pending``, then ``active`` when its version
  has an artifact that this environment can load, else ``failed`` with the reason;
- **stop**: ``active`` or ``pending`` -> ``stopped`` (final); stopping a stopped one
  changes nothing.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    Text,
    and_,
    bindparam,
    case,
    cast,
    delete,
    func,
    literal,
    select,
    text,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.engine import Connection, Dialect
from sqlalchemy.orm import Session

from database import errors, registry
from database.models import (
    Deployment,
    DeploymentStatus,
    Model,
    ModelAlias,
    ModelPermission,
    ModelVersion,
    RegisteredModel,
)
from database.models.deployment import MAX_ERROR

DeploymentNotFound = errors.DeploymentNotFound
DeploymentNotServing = errors.DeploymentNotServing


@dataclass(frozen=True)
class Target:
    """What a deployment serves at this moment (:func:`resolve`)."""

    deployment_id: uuid.UUID
    user_id: uuid.UUID
    status: DeploymentStatus
    config: dict[str, Any]
    alias: str | None
    #: None: the alias points at no version now.
    model_version_id: uuid.UUID | None
    version: int | None
    registered_model_id: uuid.UUID | None
    model_owner_id: uuid.UUID | None
    model_id: uuid.UUID | None
    location: str | None
    size_bytes: int | None
    problem_type: str | None


def _version_target(
    session: Session, user_id: uuid.UUID, model_version_id: uuid.UUID
) -> ModelVersion:
    version = session.get(ModelVersion, model_version_id)
    if version is None or not registry.can(
        session, user_id, version.registered_model_id, ModelPermission.DEPLOY
    ):
        raise errors.ModelVersionNotFound(f"model version {model_version_id} not found")
    return version


def _alias_target(
    session: Session, user_id: uuid.UUID, registered_model_id: uuid.UUID, alias: str
) -> ModelVersion:
    if not registry.can(session, user_id, registered_model_id, ModelPermission.DEPLOY):
        raise errors.RegisteredModelNotFound(f"registered model {registered_model_id} not found")
    version = session.scalar(
        text(
            "SELECT model_version_id FROM model_aliases"
            " WHERE registered_model_id = :rm AND alias = :alias"
        ),
        {"rm": registered_model_id, "alias": alias},
    )
    if version is None:
        raise errors.ModelVersionNotFound(
            f"alias {alias!r} of registered model {registered_model_id} points at no version"
        )
    found = session.get(ModelVersion, version)
    assert found is not None
    return found


def _load_problem(session: Session, version: ModelVersion) -> str | None:
    """Why the version cannot be served here, or None."""
    location = session.scalar(
        text("SELECT s3_path FROM models WHERE id = :m"), {"m": version.model_id}
    )
    if not location:
        return "the model has no artifact"
    problems = registry.environment_problems(
        version.environment or {}, registry.current_environment()
    )
    if problems:
        return "the model cannot be loaded here: " + "; ".join(problems)
    return None


def create(
    session: Session,
    user_id: uuid.UUID,
    name: str,
    *,
    model_version_id: uuid.UUID | None = None,
    registered_model_id: uuid.UUID | None = None,
    alias: str | None = None,
    config: Mapping[str, Any] | None = None,
) -> Deployment:
    """A new deployment of ``user_id``: of the version, or following ``alias`` of the
    registered model (exactly one of the two). ``active`` when its version can be
    served here, ``failed`` (with ``error_message``) otherwise.

    Raises ``ModelVersionNotFound`` / ``RegisteredModelNotFound`` (none, or not
    deployable by the user: no ``deploy`` permission), ``DeploymentTargetInvalid``
    (both targets or none), ``DeploymentNameTaken``, ``InvalidDeploymentConfig``.
    """
    if (model_version_id is None) == (registered_model_id is None or alias is None):
        raise errors.DeploymentTargetInvalid(
            "a deployment serves a model_version_id, or a registered_model_id and an alias"
        )
    if model_version_id is not None:
        version = _version_target(session, user_id, model_version_id)
    else:
        assert registered_model_id is not None and alias is not None
        version = _alias_target(session, user_id, registered_model_id, alias)
    deployment = Deployment(
        user_id=user_id,
        name=name,
        model_version_id=model_version_id,
        registered_model_id=registered_model_id,
        alias=alias,
        config=dict(config or {}),
        status=DeploymentStatus.PENDING,
    )
    session.add(deployment)
    session.flush()
    problem = _load_problem(session, version)
    _set_status(
        session,
        deployment,
        DeploymentStatus.FAILED if problem else DeploymentStatus.ACTIVE,
        error=problem,
    )
    return deployment


def _set_status(
    session: Session, deployment: Deployment, status: DeploymentStatus, *, error: str | None = None
) -> None:
    session.execute(
        update(Deployment)
        .where(Deployment.id == deployment.id)
        .values(status=status, error_message=error[:MAX_ERROR] if error else None)
        .execution_options(synchronize_session=False)
    )
    session.refresh(deployment)


def get(session: Session, user_id: uuid.UUID, deployment_id: uuid.UUID) -> Deployment:
    """The user's deployment; ``DeploymentNotFound`` for none or another user's."""
    found = session.scalar(
        select(Deployment).where(Deployment.id == deployment_id, Deployment.user_id == user_id)
    )
    if found is None:
        raise DeploymentNotFound(f"deployment {deployment_id} not found")
    return found


def stop(session: Session, user_id: uuid.UUID, deployment_id: uuid.UUID) -> Deployment:
    """Stop the user's deployment (final). A stopped one is returned as it is; a
    failed one cannot be stopped (``DeploymentStatusTransition``, ML081)."""
    deployment = get(session, user_id, deployment_id)
    if deployment.status != DeploymentStatus.STOPPED:
        _set_status(session, deployment, DeploymentStatus.STOPPED)
    return deployment


_RESOLVE = text(
    "SELECT d.id, d.user_id, d.status::text AS status, d.config, d.alias,"
    "       v.id AS version_id, v.version, v.registered_model_id, r.user_id AS owner_id,"
    "       m.id AS model_id, m.s3_path, m.size_bytes, m.problem_type::text AS problem_type"
    "  FROM deployments AS d"
    "  LEFT JOIN model_aliases AS a"
    "         ON a.registered_model_id = d.registered_model_id AND a.alias = d.alias"
    "  LEFT JOIN model_versions AS v ON v.id = COALESCE(d.model_version_id, a.model_version_id)"
    "  LEFT JOIN registered_models AS r ON r.id = v.registered_model_id"
    "  LEFT JOIN models AS m ON m.id = v.model_id"
    " WHERE d.id = :id AND d.user_id = :user"
)


def resolve(session: Session | Connection, user_id: uuid.UUID, deployment_id: uuid.UUID) -> Target:
    """What the user's deployment serves now, in one statement (its alias resolved
    there: an alias moved is served from the next call on). ``DeploymentNotFound``
    for none or another user's."""
    row = session.execute(_RESOLVE, {"id": deployment_id, "user": user_id}).one_or_none()
    if row is None:
        raise DeploymentNotFound(f"deployment {deployment_id} not found")
    return _target(row)


def serving(session: Session, user_id: uuid.UUID, deployment_id: uuid.UUID) -> Target:
    """:func:`resolve`, refusing what cannot answer now with ``DeploymentNotServing``:
    a deployment not active, an alias that points at no version, a model whose
    ``deploy`` permission the deployment's owner lost."""
    target = resolve(session, user_id, deployment_id)
    if target.status != DeploymentStatus.ACTIVE:
        raise DeploymentNotServing(
            f"deployment {deployment_id} is {target.status}: it does not serve predictions"
        )
    if target.model_version_id is None or target.registered_model_id is None:
        raise DeploymentNotServing(
            f"deployment {deployment_id} follows alias {target.alias!r}, which points at no"
            " version now"
        )
    if target.model_owner_id != user_id and not registry.can(
        session, user_id, target.registered_model_id, ModelPermission.DEPLOY
    ):
        raise DeploymentNotServing(
            f"deployment {deployment_id}: its owner may no longer deploy this model"
        )
    return target


@lru_cache(maxsize=16)
def _admit_serving_statement(default_max_rows: int, admission: bool = True) -> Any:
    """The statement of :func:`admit_serving` (its values bound by name); without
    ``admission``, the same checks with no ``usage_hold`` call (nothing to count)."""
    d, a, v, r, m = Deployment, ModelAlias, ModelVersion, RegisteredModel, Model
    user = bindparam("user", type_=UUID(as_uuid=True))
    rows = bindparam("rows", type_=BigInteger)
    # readable() binds the caller's id; here it is the statement's :user. The owner's
    # own model (the common case) is settled by the CASE's first branch: the grant's
    # subqueries run only for a model of another user.
    may_deploy = case(
        (r.user_id == user, true()),
        else_=registry.readable(user, ModelPermission.DEPLOY, r),  # type: ignore[arg-type]
    )
    max_rows = func.coalesce(
        cast(d.config["max_batch_rows"].astext, Integer), literal(default_max_rows, Integer)
    )
    servable = and_(
        d.status == DeploymentStatus.ACTIVE,
        v.id == bindparam("version", type_=UUID(as_uuid=True)),
        may_deploy,
        rows <= max_rows,
    )
    hold = func.public.usage_hold(
        user,
        bindparam("key", type_=UUID(as_uuid=True)),
        d.id,
        rows,
        bindparam("amount", type_=BigInteger),
        bindparam("request_id", type_=Text),
        bindparam("hold_seconds", type_=Integer),
        type_=UUID(as_uuid=True),
    )
    return (
        select(
            d.id,
            d.user_id,
            cast(d.status, Text).label("status"),
            d.config,
            d.alias,
            v.id.label("version_id"),
            v.version,
            v.registered_model_id,
            r.user_id.label("owner_id"),
            m.id.label("model_id"),
            m.s3_path,
            m.size_bytes,
            cast(m.problem_type, Text).label("problem_type"),
            servable.label("admitted"),
            # CASE evaluates the admission only for a deployment that can serve
            # the version asked for (a volatile function is never evaluated ahead).
            (
                case((servable, hold), else_=None)
                if admission
                else literal(None, UUID(as_uuid=True))
            ).label("hold_id"),
        )
        .select_from(d)
        .outerjoin(a, and_(a.registered_model_id == d.registered_model_id, a.alias == d.alias))
        .outerjoin(v, v.id == func.coalesce(d.model_version_id, a.model_version_id))
        .outerjoin(r, r.id == v.registered_model_id)
        .outerjoin(m, m.id == v.model_id)
        .where(d.id == bindparam("id", type_=UUID(as_uuid=True)), d.user_id == user)
    )


#: The values :func:`admit_serving` binds per call (the statement's other parameters
#: are constants of the statement: the status, the grant's permissions, the default).
_ADMIT_PARAMS = ("id", "user", "version", "rows", "amount", "key", "request_id", "hold_seconds")


@lru_cache(maxsize=16)
def _admit_serving_sql(
    default_max_rows: int, admission: bool, dialect: Dialect
) -> tuple[str, dict[str, Any]]:
    """:func:`_admit_serving_statement` compiled ONCE for the engine's driver: its SQL and its
    constant parameters. Run with ``exec_driver_sql``, a request pays neither the
    statement's cache key (a walk of its joins and subqueries) nor the expansion of
    the grant's ``IN`` list that SQLAlchemy's execution of it does every time (issue
    14: about 50 µs of the serving process's CPU a request)."""
    compiled = _admit_serving_statement(default_max_rows, admission).compile(dialect=dialect)
    state = compiled.construct_expanded_state({name: None for name in _ADMIT_PARAMS})
    constants = {
        name: value.value if isinstance(value, enum.Enum) else value
        for name, value in state.parameters.items()
        if name not in _ADMIT_PARAMS
    }
    return state.statement, constants


@dataclass(frozen=True)
class Admitted:
    """What :func:`admit_serving` found: the target, and whether the request was admitted."""

    target: Target
    #: True: admitted (counted against the key's quotas, and ``hold_id`` held).
    admitted: bool
    #: The admission's hold (None: admitted at no cost, or not admitted).
    hold_id: uuid.UUID | None


def admit_serving(
    bind: Session | Connection,
    user_id: uuid.UUID,
    deployment_id: uuid.UUID,
    *,
    model_version_id: uuid.UUID,
    rows: int,
    amount_micro: int | None = None,
    api_key_id: uuid.UUID | None,
    request_id: str | None,
    hold_seconds: int,
    default_max_rows: int,
    key_has_quota: bool = True,
) -> Admitted:
    """The predict path's one round trip: the user's deployment and what it serves
    now (its alias resolved, as :func:`resolve`) and, when it can serve
    ``model_version_id`` (the version whose signature the request was checked
    against; active, the owner may deploy the model, ``rows`` within the config's
    ``max_batch_rows``), the admission of ``rows`` in the same statement
    (``public.usage_hold``: the key's quotas and the credit hold of ``amount_micro``,
    by default None: the rows priced by the book in force for the user's tier, the
    price the usage is recorded at; the rules of
    :func:`database.metering.admit`, which raises ``QuotaExceeded`` /
    ``PaymentRequired`` here too).

    Not admitted (``admitted`` False, nothing counted) when the deployment cannot
    serve that version now: an alias moved, the deployment stopped, a grant taken
    back. The caller then takes the long way (:func:`serving`, the model of the
    version found, :func:`database.metering.admit`), which says why. So a version
    a process remembers for a deployment is only ever a guess checked here, never
    served past an alias move. ``DeploymentNotFound`` for none or another user's.
    Run it in autocommit (the user's row stays locked until the statement's
    transaction ends).

    ``key_has_quota`` False (the caller's key lookup found no ``rate_limit_per_minute``
    nor ``monthly_row_quota`` on it) with ``amount_micro`` 0 (the credit taken from a
    lease): there is nothing for ``usage_hold`` to count or hold, so the statement
    leaves it out (issue 14: its call cost a fifth of a millisecond a request). A quota
    put on the key meanwhile counts from its next lookup, the next request."""
    admission = not (amount_micro == 0 and (api_key_id is None or not key_has_quota))
    conn = bind.connection() if isinstance(bind, Session) else bind
    sql, constants = _admit_serving_sql(default_max_rows, admission, conn.dialect)
    row = conn.exec_driver_sql(
        sql,
        {
            **constants,
            "id": deployment_id,
            "user": user_id,
            "version": model_version_id,
            "rows": rows,
            "amount": amount_micro,
            "key": api_key_id,
            "request_id": request_id,
            "hold_seconds": hold_seconds,
        },
    ).one_or_none()
    if row is None:
        raise DeploymentNotFound(f"deployment {deployment_id} not found")
    return Admitted(_target(row), bool(row.admitted), row.hold_id)


def _target(row: Any) -> Target:
    return Target(
        deployment_id=row.id,
        user_id=row.user_id,
        status=DeploymentStatus(row.status),
        config=dict(row.config or {}),
        alias=row.alias,
        model_version_id=row.version_id,
        version=row.version,
        registered_model_id=row.registered_model_id,
        model_owner_id=row.owner_id,
        model_id=row.model_id,
        location=row.s3_path,
        size_bytes=row.size_bytes,
        problem_type=row.problem_type,
    )


def version_details(session: Session, model_version_id: uuid.UUID) -> tuple[dict, dict]:
    """A version's ``signature`` and ``environment`` (read when its model is loaded)."""
    row = session.execute(
        text("SELECT signature, environment FROM model_versions WHERE id = :v"),
        {"v": model_version_id},
    ).one_or_none()
    if row is None:
        raise errors.ModelVersionNotFound(f"model version {model_version_id} not found")
    return dict(row.signature or {}), dict(row.environment or {})


# --- batch predictions ----------------------------------------------------------------------
def enqueue_batch(
    session: Session,
    user_id: uuid.UUID,
    deployment_id: uuid.UUID,
    dataset_version_id: uuid.UUID,
    *,
    quote: Callable[[int], Any],
) -> Any:
    """Queue a batch prediction: the deployment's version now (an alias is resolved
    here and frozen in the job's snapshot) scores the user's ingested dataset version.
    Charged to the deployment's owner like any job (:func:`database.jobs.enqueue_run`:
    the job and its charge in one transaction; ``InsufficientCredits`` leaves none).

    ``DeploymentNotFound``, ``DeploymentNotServing`` (see :func:`serving`);
    ``DatasetVersionNotReady`` for a version that is not the user's or not ingested.
    """
    from database import jobs
    from database.models import JobKind

    target = serving(session, user_id, deployment_id)
    row = session.execute(
        text(
            "SELECT v.id, v.status::text AS status, v.s3_path, v.row_count"
            " FROM dataset_versions AS v WHERE v.id = :v AND v.user_id = :u"
        ),
        {"v": dataset_version_id, "u": user_id},
    ).one_or_none()
    if row is None:
        raise errors.DatasetVersionNotReady(f"dataset version {dataset_version_id} not found")
    if row.status != "completed" or not row.s3_path:
        raise errors.DatasetVersionNotReady(
            f"dataset version {dataset_version_id} is not ingested (status {row.status})"
        )
    rows = int(row.row_count or 0)
    # Priced by the caller's price book (api.policy.batch_quote: database.billing
    # Quote for this many rows); the job keeps the lines it was priced with.
    price = quote(rows)
    snapshot = {
        "batch_prediction": {
            "deployment_id": str(target.deployment_id),
            "model_version_id": str(target.model_version_id),
            "dataset_version_id": str(dataset_version_id),
            "rows": rows,
        }
    }
    job = jobs.enqueue_run(
        session,
        user_id=user_id,
        workflow_id=None,
        snapshot_data=snapshot,
        nodes=[],
        credit_cost=price.total,
        description=f"batch prediction of {rows} rows by deployment {target.deployment_id}",
        kind=JobKind.BATCH_PREDICTION,
    )
    from database import billing

    billing.record_job_prices(session, job.id, price)
    return job


def record_batch_output(
    session: Session, *, job_id: uuid.UUID, user_id: uuid.UUID, location: str, size_bytes: int
) -> None:
    """A batch prediction's output file, stored: counted in ``user_id``'s storage
    (``users.storage_used_bytes`` follows ``batch_outputs``, sql/triggers/storage.sql)
    until the purge removes it with its file. Its own transaction when the session
    has none open."""
    from database._tx import atomic
    from database.models import BatchOutput

    with atomic(session):
        session.add(
            BatchOutput(job_id=job_id, user_id=user_id, location=location, size_bytes=size_bytes)
        )


def forget_batch_output(session: Session, job_id: uuid.UUID) -> None:
    """The output of a batch that did not complete after all (its file deleted)."""
    from database._tx import atomic
    from database.models import BatchOutput

    with atomic(session):
        session.execute(delete(BatchOutput).where(BatchOutput.job_id == job_id))


__all__ = [
    "Admitted",
    "forget_batch_output",
    "record_batch_output",
    "admit_serving",
    "enqueue_batch",
    "DeploymentNotFound",
    "DeploymentNotServing",
    "Target",
    "create",
    "get",
    "resolve",
    "serving",
    "stop",
    "version_details",
]
