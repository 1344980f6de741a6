"""The model registry's rules, in one place (issue 13; docs/schema.md, "Model registry").

The API and the workers call these functions; each runs in the caller's session and
transaction (it flushes, the caller commits). The database holds the rules that must
hold for any client (``sql/triggers/registry.sql``): versions numbered from the
registered model's counter, one version per trained model, aliases pointing at a
version of their own model, append-only downloads and their counter, no permission
for the owner, lineage without cycles. This module adds what needs a decision:

- **registering**: :func:`create_registered_model`, :func:`register_saved_model`
  (a save node's registration: the model by name, created if absent, and an
  alias), :func:`register_version` (a
  trained model of the owner becomes the next version, with its signature, input
  example, environment, metrics as rows, and its lineage: the job and workflow
  snapshot it came from, the dataset versions named, a parent version);
- **aliases**: :func:`set_alias` (one statement: creates or moves the alias
  atomically), :func:`delete_alias`;
- **lineage**: :func:`record_lineage`, :func:`lineage` (up: what made this version;
  down: what was made from it) and :func:`made_from_dataset_version`, by recursive
  SQL with a depth limit;
- **environment**: :func:`current_environment` (what ``environment`` records) and
  :func:`environment_problems` (why a version cannot be loaded here, for the
  loader's refusal);
- **access**: :func:`can`, the one access check of the registry, :func:`readable`
  (the same rule as a SQL condition, for every list), :func:`authorize` /
  :func:`authorize_version` (read, or manage: the owner's alone), :func:`find_grantee`,
  :func:`grant_permission` / :func:`revoke_permission`, :func:`visible_lineage`;
- **downloads**: :func:`record_download` (checks ``download`` with :func:`can` and
  records the attempt, granted or refused);
- **search**: :func:`parse_filter` (MLflow's filter language, parsed into bound SQL
  conditions), :func:`parse_order`, :func:`search_versions` (keyset pages, NULLS
  LAST), :func:`search_registered_models` and :func:`name_matches` (full text);
  :func:`register_trained_model` (the API's registration: :func:`register_version`
  with what the database knows of the trained model).

Who may do what (:func:`can`):

- the owner may do anything;
- a ``public`` model may be read and downloaded by anyone, signed in or not;
- on a ``shared`` or ``public`` model, a user granted a permission has it and the
  ones below it (``deploy`` ⊇ ``download`` ⊇ ``read``: the enum's order);
- a ``private`` model is the owner's alone: its grants are kept but suspended, so
  making a model private again is one switch;
- the models of a soft-deleted owner are nobody's until restored (the owner's
  requests are refused before, by the API's authentication).

Anything else is refused; the API answers a refusal like a missing model (404).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import math
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    delete,
    false,
    func,
    literal_column,
    or_,
    select,
    text,
    tuple_,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session, aliased

from database import errors
from database.models.enums import (
    LineageRelation,
    ModelFormat,
    ModelPermission,
    ModelVersionStatus,
    ModelVisibility,
)
from database.models.model import Model
from database.models.model_alias import ModelAlias
from database.models.model_download import MAX_REASON, MAX_USER_AGENT, ModelDownload
from database.models.model_lineage import ModelLineage
from database.models.model_version import ModelVersion
from database.models.model_version_metric import ModelVersionMetric
from database.models.registered_model import RegisteredModel
from database.models.registered_model_permission import RegisteredModelPermission
from database.models.user import User
from database.types import check_datetime

#: The deepest a lineage query walks.
MAX_LINEAGE_DEPTH = 50
#: The split a metric given without one is recorded under.
DEFAULT_SPLIT = "test"

Direction = Literal["up", "down"]


RegisteredModelNotFound = errors.RegisteredModelNotFound
ModelVersionNotFound = errors.ModelVersionNotFound
TrainedModelNotFound = errors.TrainedModelNotFound


@dataclass(frozen=True)
class LineageEdge:
    """One edge met by :func:`lineage`: ``child_version_id`` --relation--> the parent.

    ``parent_kind`` is ``model_version``, ``dataset_version``, ``workflow_snapshot``
    or ``job``; ``depth`` is 1 for the edges of the version asked about.
    """

    id: uuid.UUID
    depth: int
    child_version_id: uuid.UUID
    relation: LineageRelation
    parent_kind: str
    parent_id: uuid.UUID


# --- registering ------------------------------------------------------------------


def create_registered_model(
    session: Session,
    user_id: uuid.UUID,
    name: str,
    *,
    description: str | None = None,
    model_card: str | None = None,
    license: str | None = None,
    tags: Mapping[str, str] | None = None,
    visibility: ModelVisibility = ModelVisibility.PRIVATE,
) -> RegisteredModel:
    """A new registered model of ``user_id``. ``RegisteredModelNameTaken`` when the
    owner has one of this name; ``InvalidValue`` for a bad name, card or tags."""
    registered = RegisteredModel(
        user_id=user_id,
        name=name,
        description=description,
        model_card=model_card,
        license=license,
        tags=dict(tags or {}),
        visibility=visibility,
    )
    session.add(registered)
    session.flush()
    return registered


def _metric_rows(
    metrics: Mapping[str, float] | Iterable[tuple[str, str, float]] | None,
) -> list[tuple[str, str, float]]:
    if metrics is None:
        return []
    if isinstance(metrics, Mapping):
        return [(name, DEFAULT_SPLIT, float(value)) for name, value in metrics.items()]
    return [(name, split, float(value)) for name, split, value in metrics]


def register_version(
    session: Session,
    registered_model_id: uuid.UUID,
    model_id: uuid.UUID,
    *,
    signature: Mapping[str, Any] | None = None,
    input_example: list[Any] | None = None,
    environment: Mapping[str, Any] | None = None,
    metrics: Mapping[str, float] | Iterable[tuple[str, str, float]] | None = None,
    primary_metric: str | None = None,
    description: str | None = None,
    dataset_version_ids: Iterable[uuid.UUID] = (),
    parent_version_id: uuid.UUID | None = None,
    parent_relation: LineageRelation = LineageRelation.RETRAINED_FROM,
) -> ModelVersion:
    """Register the trained model ``model_id`` as the next version of the registered
    model (the database numbers it), with the signature, input example and
    environment the worker recorded on the trained model (``models``; the arguments
    override them), its metrics as rows (a mapping is recorded
    on the ``test`` split) and its lineage: ``produced_by`` the job and the workflow
    snapshot that trained it (when still there), ``trained_on`` each dataset version
    named, and ``parent_relation`` to ``parent_version_id``.

    Raises ``RegisteredModelNotFound``, ``TrainedModelNotFound`` (none, or another
    user's), ``ModelAlreadyRegistered`` (a trained model is one version at most).
    """
    owner = session.scalar(
        select(RegisteredModel.user_id).where(RegisteredModel.id == registered_model_id)
    )
    if owner is None:
        raise RegisteredModelNotFound(f"registered model {registered_model_id} does not exist")
    trained = session.execute(
        text(
            "SELECT m.job_id, j.workflow_snapshot_id, m.signature, m.input_example,"
            " m.environment FROM models AS m"
            " LEFT JOIN jobs AS j ON j.id = m.job_id"
            " WHERE m.id = :m AND m.user_id = :u"
        ),
        {"m": model_id, "u": owner},
    ).one_or_none()
    if trained is None:
        raise TrainedModelNotFound(f"trained model {model_id} does not exist or is not the owner's")
    # What the worker recorded with the trained model, unless the caller says otherwise.
    if signature is None:
        signature = trained.signature
    if input_example is None:
        input_example = trained.input_example
    if environment is None:
        environment = trained.environment
    version = ModelVersion(
        registered_model_id=registered_model_id,
        model_id=model_id,
        signature=dict(signature or {}),
        input_example=input_example,
        environment=dict(environment or {}),
        primary_metric=primary_metric,
        description=description,
    )
    session.add(version)
    session.flush()
    for name, split, value in _metric_rows(metrics):
        session.add(
            ModelVersionMetric(model_version_id=version.id, metric=name, split=split, value=value)
        )
    session.flush()
    if trained.job_id is not None:
        record_lineage(session, version.id, LineageRelation.PRODUCED_BY, job_id=trained.job_id)
    if trained.workflow_snapshot_id is not None:
        record_lineage(
            session,
            version.id,
            LineageRelation.PRODUCED_BY,
            workflow_snapshot_id=trained.workflow_snapshot_id,
        )
    for dataset_version_id in dataset_version_ids:
        record_lineage(
            session, version.id, LineageRelation.TRAINED_ON, dataset_version_id=dataset_version_id
        )
    if parent_version_id is not None:
        record_lineage(session, version.id, parent_relation, parent_version_id=parent_version_id)
    return version


def register_saved_model(
    session: Session,
    user_id: uuid.UUID,
    model_id: uuid.UUID,
    name: str,
    *,
    alias: str | None = None,
    metrics: Mapping[str, float] | Iterable[tuple[str, str, float]] | None = None,
    dataset_version_ids: Iterable[uuid.UUID] = (),
) -> ModelVersion:
    """What a save node with ``register`` asks (the worker, in the transaction that
    records the model): the next version of ``user_id``'s registered model ``name``
    (created, private, when the owner has none of that name; two jobs creating it
    at once both end up with the one model), with its lineage (the job and snapshot,
    the dataset versions), and ``alias`` pointing at it."""
    values = insert(RegisteredModel).values(user_id=user_id, name=name)
    session.execute(
        values.on_conflict_do_nothing(
            index_elements=[RegisteredModel.user_id, RegisteredModel.name]
        )
    )
    registered_model_id = session.scalar(
        select(RegisteredModel.id).where(
            RegisteredModel.user_id == user_id, RegisteredModel.name == name
        )
    )
    assert registered_model_id is not None
    version = register_version(
        session,
        registered_model_id,
        model_id,
        metrics=metrics,
        dataset_version_ids=dataset_version_ids,
    )
    if alias is not None:
        set_alias(session, registered_model_id, alias, version.version)
    return version


def get_version(session: Session, registered_model_id: uuid.UUID, version: int) -> ModelVersion:
    """Version ``version`` of the registered model, or ``ModelVersionNotFound``."""
    found = session.scalar(
        select(ModelVersion).where(
            ModelVersion.registered_model_id == registered_model_id,
            ModelVersion.version == version,
        )
    )
    if found is None:
        raise ModelVersionNotFound(
            f"registered model {registered_model_id} has no version {version}"
        )
    return found


# --- environment -------------------------------------------------------------------

#: The packages a version's ``environment`` names, and how many leading parts of the
#: version must agree to load it: a pickled scikit-learn estimator is only supported
#: by the scikit-learn minor version that wrote it, numpy and pandas keep their
#: pickles within a major version, Python's bytecode and pickles change by minor.
ENVIRONMENT_PACKAGES: dict[str, tuple[str, int]] = {
    "python": ("", 2),
    "sklearn": ("scikit-learn", 2),
    "numpy": ("numpy", 1),
    "pandas": ("pandas", 1),
}


def current_environment() -> dict[str, str]:
    """The versions of Python, scikit-learn, numpy and pandas here (a package not
    installed is left out), the shape ``model_versions.environment`` stores."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for key, (distribution, _) in ENVIRONMENT_PACKAGES.items():
        if not distribution:
            continue
        try:
            out[key] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return out


def _release(version: str, parts: int) -> tuple[str, ...]:
    return tuple(version.split("+")[0].split(".")[:parts])


def environment_problems(stored: Mapping[str, Any], current: Mapping[str, str]) -> list[str]:
    """Why a version saved in ``stored`` cannot be loaded in ``current``, one sentence
    per package (empty: compatible). A package the version did not record is not
    checked; one it needs that is missing here is a problem."""
    problems = []
    for key, (_, parts) in ENVIRONMENT_PACKAGES.items():
        wanted = stored.get(key)
        if not isinstance(wanted, str) or not wanted:
            continue
        have = current.get(key)
        if have is None:
            problems.append(f"{key} {wanted} is needed, and it is not installed")
        elif _release(wanted, parts) != _release(have, parts):
            same = ".".join(_release(wanted, parts))
            problems.append(
                f"{key} {wanted} saved this model, {have} is installed (needs {same}.x)"
            )
    return problems


# --- aliases ----------------------------------------------------------------------


def set_alias(
    session: Session, registered_model_id: uuid.UUID, alias: str, version: int
) -> ModelAlias:
    """Point ``alias`` at version ``version`` of the registered model: creates the
    alias or moves it, in one statement (the row of ``(model, alias)`` is inserted or
    updated; a concurrent reader sees the old version or the new one).

    ``ModelVersionNotFound`` when the model has no such version; ``InvalidAlias``
    for a name that is not a lowercase word (a number would read as a version).
    """
    version_id = (
        select(ModelVersion.id)
        .where(
            ModelVersion.registered_model_id == registered_model_id,
            ModelVersion.version == version,
        )
        .scalar_subquery()
    )
    values = insert(ModelAlias).values(
        registered_model_id=registered_model_id, alias=alias, model_version_id=version_id
    )
    upsert = values.on_conflict_do_update(
        index_elements=[ModelAlias.registered_model_id, ModelAlias.alias],
        set_={"model_version_id": values.excluded.model_version_id},
    )
    try:
        session.execute(upsert)
    except errors.MissingValue as exc:  # the subquery found no version
        raise ModelVersionNotFound(
            f"registered model {registered_model_id} has no version {version}"
        ) from exc
    found = session.get(ModelAlias, (registered_model_id, alias), populate_existing=True)
    assert found is not None
    return found


def delete_alias(session: Session, registered_model_id: uuid.UUID, alias: str) -> bool:
    """Remove the alias; False when there was none."""
    result = session.execute(
        delete(ModelAlias)
        .where(ModelAlias.registered_model_id == registered_model_id, ModelAlias.alias == alias)
        .returning(ModelAlias.alias)
    )
    return result.first() is not None


# --- lineage ----------------------------------------------------------------------

_PARENT_COLUMNS = {
    "parent_version_id": "model_version",
    "dataset_version_id": "dataset_version",
    "workflow_snapshot_id": "workflow_snapshot",
    "job_id": "job",
}


def record_lineage(
    session: Session,
    child_version_id: uuid.UUID,
    relation: LineageRelation,
    *,
    parent_version_id: uuid.UUID | None = None,
    dataset_version_id: uuid.UUID | None = None,
    workflow_snapshot_id: uuid.UUID | None = None,
    job_id: uuid.UUID | None = None,
) -> bool:
    """Record the edge ``child --relation--> parent`` (exactly one parent); False when
    it was recorded already. ``InvalidLineage`` when the relation does not fit the
    parent (``trained_on`` a dataset version, ``produced_by`` a job or a snapshot,
    ``retrained_from``/``tuned_from`` a version); ``LineageCycle`` (ML065) when the
    parent version descends from the child."""
    result = session.execute(
        insert(ModelLineage)
        .values(
            child_version_id=child_version_id,
            relation=relation,
            parent_version_id=parent_version_id,
            dataset_version_id=dataset_version_id,
            workflow_snapshot_id=workflow_snapshot_id,
            job_id=job_id,
        )
        .on_conflict_do_nothing(constraint="uq_model_lineage_edge")
        .returning(ModelLineage.id)
    )
    return result.first() is not None


_EDGE_COLUMNS = (
    "l.id, l.child_version_id, l.relation, l.parent_version_id, l.dataset_version_id,"
    " l.workflow_snapshot_id, l.job_id"
)


def _walk(session: Session, start: str, step: str, start_id: uuid.UUID, depth: int) -> list[Any]:
    if not 1 <= depth <= MAX_LINEAGE_DEPTH:
        raise errors.InvalidValue(f"depth must be between 1 and {MAX_LINEAGE_DEPTH}, not {depth}")
    # ``seen`` holds the versions walked through: an edge back to one of them is not
    # followed again (the triggers refuse version cycles; this keeps the walk finite
    # whatever the data).
    statement = text(
        f"WITH RECURSIVE walk AS ("
        f" SELECT {_EDGE_COLUMNS}, 1 AS depth, ARRAY[l.child_version_id] AS seen"
        f"   FROM model_lineage AS l WHERE {start}"
        f" UNION ALL"
        f" SELECT {_EDGE_COLUMNS}, w.depth + 1, w.seen || l.child_version_id"
        f"   FROM walk AS w JOIN model_lineage AS l ON {step}"
        f"  WHERE w.depth < :depth AND NOT l.child_version_id = ANY (w.seen)"
        f")"
        f" SELECT * FROM walk ORDER BY depth, relation, id"
    )
    rows = session.execute(statement, {"start": start_id, "depth": depth}).all()
    out = []
    for r in rows:
        kind, parent = next(
            (k, getattr(r, c)) for c, k in _PARENT_COLUMNS.items() if getattr(r, c) is not None
        )
        out.append(
            LineageEdge(
                id=r.id,
                depth=r.depth,
                child_version_id=r.child_version_id,
                relation=LineageRelation(r.relation),
                parent_kind=kind,
                parent_id=parent,
            )
        )
    return out


def lineage(
    session: Session, version_id: uuid.UUID, direction: Direction = "up", depth: int = 5
) -> list[LineageEdge]:
    """The lineage of a model version, ``depth`` edges deep at most (1..50).

    ``up``: what made it (its edges, then the edges of the versions it came from);
    ``down``: what was made from it (the versions retrained or tuned from it, then
    theirs). Each direction reads one index per step (``model_lineage``'s key on
    ``child_version_id`` up, ``ix_model_lineage_parent_version_id`` down).
    """
    if direction == "up":
        return _walk(
            session,
            "l.child_version_id = :start",
            "l.child_version_id = w.parent_version_id",
            version_id,
            depth,
        )
    if direction == "down":
        return _walk(
            session,
            "l.parent_version_id = :start",
            "l.parent_version_id = w.child_version_id",
            version_id,
            depth,
        )
    raise errors.InvalidValue(f"direction must be 'up' or 'down', not {direction!r}")


def made_from_dataset_version(
    session: Session, dataset_version_id: uuid.UUID, depth: int = 5
) -> list[LineageEdge]:
    """What was made from a dataset version: the versions trained or evaluated on it
    (depth 1), then the versions made from those."""
    return _walk(
        session,
        "l.dataset_version_id = :start",
        "l.parent_version_id = w.child_version_id",
        dataset_version_id,
        depth,
    )


# --- access -----------------------------------------------------------------------

#: The permissions in the order of inclusion (``model_permission``'s order): a
#: StrEnum compares as text, so Python compares positions in this tuple.
_PERMISSION_ORDER: tuple[ModelPermission, ...] = tuple(ModelPermission)


def _rank(permission: ModelPermission) -> int:
    return _PERMISSION_ORDER.index(ModelPermission(permission))


def readable(
    user_id: uuid.UUID | None,
    permission: ModelPermission = ModelPermission.READ,
    model: Any = RegisteredModel,
) -> ColumnElement[bool]:
    """The access rule as a SQL condition on ``model`` (``RegisteredModel`` or an alias
    of it): true for the registered models ``user_id`` (None: anonymous) may
    ``permission``. :func:`can` is this condition on one row; every list of the
    registry filters with it, so a list shows exactly what :func:`can` allows.

    The parameters are bound; the condition reads the owner's ``users`` row (by key)
    and, for a signed-in caller, the grant of ``(model, caller)`` (by key).
    """
    rank = _rank(permission)
    owner_alive = (
        select(User.id).where(User.id == model.user_id, User.is_deleted.is_(False)).exists()
    )
    allowed: list[ColumnElement[bool]] = []
    if user_id is not None:
        allowed.append(model.user_id == user_id)
    if rank <= _rank(ModelPermission.DOWNLOAD):
        allowed.append(model.visibility == ModelVisibility.PUBLIC)
    if user_id is not None:
        granted = (
            select(RegisteredModelPermission.user_id)
            .where(
                RegisteredModelPermission.registered_model_id == model.id,
                RegisteredModelPermission.user_id == user_id,
                RegisteredModelPermission.permission.in_(_PERMISSION_ORDER[rank:]),
            )
            .exists()
        )
        allowed.append(and_(model.visibility != ModelVisibility.PRIVATE, granted))
    if not allowed:
        return false()
    return and_(owner_alive, or_(*allowed))


def can(
    session: Session,
    user_id: uuid.UUID | None,
    registered_model_id: uuid.UUID,
    permission: ModelPermission,
) -> bool:
    """May ``user_id`` (None: anonymous) ``permission`` the registered model? Every
    access check of the registry is this one, or :func:`readable` in a list (see the
    module doc for the rules)."""
    return bool(
        session.scalar(
            select(
                select(RegisteredModel.id)
                .where(RegisteredModel.id == registered_model_id, readable(user_id, permission))
                .exists()
            )
        )
    )


def authorize(
    session: Session,
    user_id: uuid.UUID | None,
    registered_model_id: uuid.UUID,
    *,
    permission: ModelPermission = ModelPermission.READ,
    manage: bool = False,
    lock: bool = False,
) -> RegisteredModel:
    """The registered model, when ``user_id`` may ``permission`` it, and, with
    ``manage``, change it (its fields, versions, aliases, permissions: the owner's
    alone). ``RegisteredModelNotFound`` when the caller may not read it (the answer
    of a missing one); ``RegistryForbidden`` when the caller may read it but not do
    this (telling them so leaks nothing they cannot see). ``lock``: the row is
    locked ``FOR UPDATE`` (a change that must not race another)."""
    statement = select(RegisteredModel).where(
        RegisteredModel.id == registered_model_id, readable(user_id, ModelPermission.READ)
    )
    if lock:
        statement = statement.with_for_update(of=RegisteredModel)
    found = session.scalars(statement).one_or_none()
    if found is None:
        raise RegisteredModelNotFound(f"registered model {registered_model_id} not found")
    if manage and found.user_id != user_id:
        raise errors.RegistryForbidden(
            "only the owner of a registered model may change it, its versions, aliases"
            " or permissions"
        )
    if (
        not manage
        and _rank(permission) > _rank(ModelPermission.READ)
        and not can(session, user_id, registered_model_id, permission)
    ):
        raise errors.RegistryForbidden(
            f"no {ModelPermission(permission).value} permission on this registered model"
        )
    return found


def authorize_version(
    session: Session,
    user_id: uuid.UUID | None,
    version_id: uuid.UUID,
    *,
    manage: bool = False,
) -> tuple[ModelVersion, RegisteredModel]:
    """The version and its registered model, checked like :func:`authorize`
    (``ModelVersionNotFound`` when the caller may not read it)."""
    row = session.execute(
        select(ModelVersion, RegisteredModel)
        .join(RegisteredModel, RegisteredModel.id == ModelVersion.registered_model_id)
        .where(ModelVersion.id == version_id, readable(user_id))
    ).one_or_none()
    if row is None:
        raise ModelVersionNotFound(f"model version {version_id} not found")
    version, registered = row
    if manage and registered.user_id != user_id:
        raise errors.RegistryForbidden(
            "only the owner of a registered model may change its versions"
        )
    return version, registered


def find_grantee(
    session: Session, *, user_id: uuid.UUID | None = None, email: str | None = None
) -> uuid.UUID:
    """The id of the user a permission is for, named by id or by email (exactly one).
    ``GranteeNotFound`` naming what was given when there is no such user, or it is
    deleted. (Signing up already says whether an email is registered: naming it
    back here tells the owner nothing new.)"""
    if (user_id is None) == (email is None):
        raise errors.InvalidValue("name the user by user_id or by email (exactly one)")
    condition = User.id == user_id if user_id is not None else User.email == email
    found = session.scalar(select(User.id).where(condition, User.is_deleted.is_(False)))
    if found is None:
        who = str(user_id) if user_id is not None else str(email)
        raise errors.GranteeNotFound(f"no user {who}", who=who)
    return found


def grant_permission(
    session: Session,
    registered_model_id: uuid.UUID,
    user_id: uuid.UUID,
    permission: ModelPermission,
    *,
    granted_by: uuid.UUID | None = None,
) -> None:
    """Give ``user_id`` ``permission`` on the registered model (replacing a previous
    one). ``OwnerPermission`` (ML064) for the owner."""
    statement = insert(RegisteredModelPermission).values(
        registered_model_id=registered_model_id,
        user_id=user_id,
        permission=permission,
        granted_by=granted_by,
    )
    session.execute(
        statement.on_conflict_do_update(
            index_elements=[
                RegisteredModelPermission.registered_model_id,
                RegisteredModelPermission.user_id,
            ],
            set_={
                "permission": statement.excluded.permission,
                "granted_by": statement.excluded.granted_by,
            },
        )
    )


def revoke_permission(session: Session, registered_model_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    """Take ``user_id``'s permission away; False when there was none."""
    result = session.execute(
        delete(RegisteredModelPermission)
        .where(
            RegisteredModelPermission.registered_model_id == registered_model_id,
            RegisteredModelPermission.user_id == user_id,
        )
        .returning(RegisteredModelPermission.user_id)
    )
    return result.first() is not None


def readable_versions(
    session: Session, user_id: uuid.UUID | None, version_ids: Iterable[uuid.UUID]
) -> set[uuid.UUID]:
    """Which of these model versions ``user_id`` may read (:func:`readable`)."""
    ids = set(version_ids)
    if not ids:
        return set()
    return set(
        session.scalars(
            select(ModelVersion.id)
            .join(RegisteredModel, RegisteredModel.id == ModelVersion.registered_model_id)
            .where(ModelVersion.id.in_(ids), readable(user_id))
        )
    )


def visible_lineage(
    session: Session,
    user_id: uuid.UUID | None,
    version_id: uuid.UUID,
    direction: Direction = "up",
    depth: int = 5,
) -> list[LineageEdge]:
    """:func:`lineage` as ``user_id`` may see it: an edge whose child version, or whose
    parent version, is in a registered model the caller may not read is left out (a
    version retrained from a public one by another user does not show its private
    descendants). Jobs, snapshots and dataset versions are the version's owner's:
    their ids are shown to whoever may read the version."""
    edges = lineage(session, version_id, direction, depth)
    versions = {e.child_version_id for e in edges} | {
        e.parent_id for e in edges if e.parent_kind == "model_version"
    }
    seen = readable_versions(session, user_id, versions)
    return [
        e
        for e in edges
        if e.child_version_id in seen and (e.parent_kind != "model_version" or e.parent_id in seen)
    ]


# --- downloads --------------------------------------------------------------------


def record_download(
    session: Session,
    version_id: uuid.UUID,
    *,
    user_id: uuid.UUID | None,
    format: ModelFormat,
    ip: str | None = None,
    user_agent: str | None = None,
) -> ModelDownload:
    """Check that ``user_id`` may download the version (:func:`can`, ``download``)
    and record the attempt, granted or refused (with the reason). The caller serves
    the file only when ``.granted``; a refusal is answered like a missing version.
    ``ModelVersionNotFound`` when there is no such version (nothing is recorded);
    ``ValueError`` for an ``ip`` that is not an address.
    """
    registered_model_id = session.scalar(
        select(ModelVersion.registered_model_id).where(ModelVersion.id == version_id)
    )
    if registered_model_id is None:
        raise ModelVersionNotFound(f"model version {version_id} does not exist")
    granted = can(session, user_id, registered_model_id, ModelPermission.DOWNLOAD)
    row = ModelDownload(
        model_version_id=version_id,
        user_id=user_id,
        format=format,
        ip=ipaddress.ip_address(ip) if ip else None,
        user_agent=user_agent[:MAX_USER_AGENT] if user_agent else None,
        granted=granted,
        reason=None if granted else "no download permission"[:MAX_REASON],
    )
    session.add(row)
    session.flush()
    return row


# --- registering a trained model (the API's route) ----------------------------------

_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,99}$")
_SPLIT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


def register_trained_model(
    session: Session,
    registered_model_id: uuid.UUID,
    model_id: uuid.UUID,
    *,
    description: str | None = None,
    primary_metric: str | None = None,
    aliases: Iterable[str] = (),
) -> ModelVersion:
    """:func:`register_version` with what the database knows of a trained model: its
    holdout metrics (``models.metrics``: the finite numbers with a valid metric name,
    on the ``test`` split), the dataset versions its job's snapshot froze (those
    still there), the job and snapshot (by :func:`register_version`); then points
    each alias at the new version (:func:`set_alias`). The signature, input example
    and environment are captured by the worker when it saves a model; a model
    registered afterwards has none (the environment that trained it is not known).
    """
    facts = session.execute(
        text(
            "SELECT m.metrics, s.snapshot_data FROM models AS m"
            " LEFT JOIN jobs AS j ON j.id = m.job_id"
            " LEFT JOIN workflow_snapshots AS s ON s.id = j.workflow_snapshot_id"
            " WHERE m.id = :m"
        ),
        {"m": model_id},
    ).one_or_none()
    metrics: dict[str, float] = {}
    dataset_version_ids: list[uuid.UUID] = []
    if facts is not None:
        for name, value in (facts.metrics or {}).items():
            if (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and _METRIC_NAME.match(str(name))
            ):
                metrics[str(name)] = float(value)
        frozen = (facts.snapshot_data or {}).get("dataset_versions") or {}
        named = []
        for entry in frozen.values() if isinstance(frozen, dict) else ():
            try:
                named.append(uuid.UUID(str(entry.get("version_id"))))
            except (AttributeError, ValueError):
                continue
        if named:
            dataset_version_ids = list(
                session.scalars(
                    text(
                        "SELECT v.id FROM dataset_versions AS v JOIN models AS m"
                        " ON m.user_id = v.user_id WHERE m.id = :m AND v.id = ANY(:ids)"
                        " ORDER BY v.id"
                    ),
                    {"m": model_id, "ids": named},
                )
            )
    version = register_version(
        session,
        registered_model_id,
        model_id,
        metrics=metrics,
        primary_metric=primary_metric,
        description=description,
        dataset_version_ids=dataset_version_ids,
    )
    for alias in aliases:
        set_alias(session, registered_model_id, alias, version.version)
    return version


# --- search -----------------------------------------------------------------------
#
# The filter language is MLflow's search filter: clauses joined by AND, each
# ``<field> <operator> <value>``. A small tokenizer and a recursive-descent parser
# turn it into SQLAlchemy conditions whose values are bound parameters: no text of
# the filter is ever put into SQL. A filter that does not parse is ``InvalidFilter``
# naming the token and its offset.

#: At most this many characters and clauses: a filter is one query.
MAX_FILTER_LENGTH = 2000
MAX_FILTER_CLAUSES = 20

_TOKEN = re.compile(
    r"""
      (?P<ws>\s+)
    | (?P<string>'(?:[^'\x00]|'')*'|"(?:[^"\x00]|"")*")
    | (?P<number>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)(?![A-Za-z_`@.])
    | (?P<op><=|>=|!=|<>|==|=|<|>)
    | (?P<ident>(?:[A-Za-z_][A-Za-z0-9_-]*|`[^`\x00]+`)
                (?:\.(?:[A-Za-z0-9_][A-Za-z0-9_-]*|`[^`\x00]+`))*
                (?:@[A-Za-z0-9_]+)?)
    """,
    re.VERBOSE,
)
_KEYWORDS = frozenset({"and", "or", "not", "like", "ilike", "asc", "desc"})
_SEGMENT = re.compile(r"`([^`]+)`|([^.`@]+)")


@dataclass(frozen=True)
class _Token:
    kind: str  # string, number, op, ident, kw, end
    text: str
    position: int
    value: Any = None


def _refuse(message: str, token: _Token) -> errors.InvalidFilter:
    return errors.InvalidFilter(
        f"{message} (at position {token.position})", token=token.text, position=token.position
    )


def _tokens(source: str) -> list[_Token]:
    if len(source) > MAX_FILTER_LENGTH:
        raise errors.InvalidFilter(
            f"the filter is longer than {MAX_FILTER_LENGTH} characters",
            token=source[MAX_FILTER_LENGTH : MAX_FILTER_LENGTH + 20],
            position=MAX_FILTER_LENGTH,
        )
    out: list[_Token] = []
    at = 0
    while at < len(source):
        match = _TOKEN.match(source, at)
        if match is None:
            char = source[at]
            shown = repr(char) if char.isprintable() else f"U+{ord(char):04X}"
            what = _Token("error", source[at : at + 20], at)
            if char in "'\"":
                raise _refuse(f"unterminated string starting with {char}", what)
            if char == "\x00":
                raise _refuse("a NUL character is not allowed", _Token("error", "\\x00", at))
            raise _refuse(f"unexpected character {shown}", what)
        kind = match.lastgroup or ""
        text_ = match.group()
        if kind == "string":
            quote = text_[0]
            out.append(_Token("string", text_, at, text_[1:-1].replace(quote * 2, quote)))
        elif kind == "number":
            value = float(text_)
            if not math.isfinite(value):
                raise _refuse(f"the number {text_} is out of range", _Token("number", text_, at))
            out.append(_Token("number", text_, at, value))
        elif kind == "ident":
            kind = "kw" if text_.lower() in _KEYWORDS else "ident"
            out.append(_Token(kind, text_, at, text_.lower() if kind == "kw" else text_))
        elif kind == "op":
            out.append(_Token("op", text_, at, {"==": "=", "<>": "!="}.get(text_, text_)))
        at = match.end()
    out.append(_Token("end", "", len(source)))
    return out


@dataclass(frozen=True)
class _Field:
    kind: str  # name, version, status, created_at, alias, registered_model_id, metric, tag, param
    key: str | None = None
    split: str | None = None


_PLAIN_FIELDS = ("name", "version", "status", "created_at", "alias", "registered_model_id")
_FIELD_HELP = (
    "a field: name, version, status, created_at, alias, registered_model_id,"
    " metrics.<name>[@split], tags.<key> or params.<key>"
)


def _field(token: _Token, *, orderable: bool = False) -> _Field:
    source = token.text
    split = None
    # "@split" outside backticks ends the field.
    outside = re.sub(r"`[^`]*`", lambda m: "_" * len(m.group()), source)
    if "@" in outside:
        cut = outside.index("@")
        source, split = source[:cut], source[cut + 1 :]
    segments = [a or b for a, b in _SEGMENT.findall(source)]
    head = segments[0].lower() if segments else ""
    rest = ".".join(segments[1:])
    allowed = ("version", "created_at") if orderable else _PLAIN_FIELDS
    if head in allowed and len(segments) == 1 and split is None:
        return _Field(head)
    if head in ("metrics", "metric") and rest:
        split = split or DEFAULT_SPLIT
        if not _METRIC_NAME.match(rest):
            raise _refuse(f"{rest!r} is not a metric name", token)
        if not _SPLIT_NAME.match(split):
            raise _refuse(f"{split!r} is not a split name", token)
        return _Field("metric", rest, split)
    if not orderable and head in ("tags", "tag", "params", "param") and rest and split is None:
        if len(rest) > 200:
            raise _refuse("a tag or param key has at most 200 characters", token)
        return _Field("tag" if head.startswith("tag") else "param", rest)
    expected = "version, created_at or metrics.<name>[@split]" if orderable else _FIELD_HELP
    raise _refuse(f"unknown field {token.text!r}: expected {expected}", token)


@dataclass(frozen=True)
class _Clause:
    field: _Field
    op: str  # = != < <= > >= like ilike "not like" "not ilike"
    value: Any
    token: _Token


_NUMERIC_OPS = ("=", "!=", "<", "<=", ">", ">=")
_TEXT_OPS = ("=", "!=", "like", "ilike", "not like", "not ilike")
_OPS_OF = {
    "name": _TEXT_OPS,
    "tag": _TEXT_OPS,
    "param": _TEXT_OPS,
    "alias": ("=", "!="),
    "status": ("=", "!="),
    "registered_model_id": ("=", "!="),
    "version": _NUMERIC_OPS,
    "metric": _NUMERIC_OPS,
    "created_at": _NUMERIC_OPS,
}


def _value(field: _Field, op: str, token: _Token) -> Any:
    if token.kind not in ("string", "number"):
        raise _refuse(f"expected a value (a number or a quoted string), got {token.text!r}", token)
    kind = field.kind
    if kind == "metric":
        if token.kind != "number":
            raise _refuse("a metric is compared with a number", token)
        return token.value
    if kind == "version":
        if token.kind != "number" or not re.fullmatch(r"[-+]?\d+", token.text):
            raise _refuse("a version is compared with a whole number", token)
        number = int(token.text)
        if not -(2**31) <= number < 2**31:
            raise _refuse("the version is out of range", token)
        return number
    # The rest compare with text; a number given for a tag or param is its text.
    value = token.value if token.kind == "string" else token.text
    if kind in ("name", "tag", "param", "alias") and len(value) > 1000:
        raise _refuse("a value has at most 1000 characters", token)
    if kind == "status":
        try:
            return ModelVersionStatus(value)
        except ValueError:
            statuses = ", ".join(s.value for s in ModelVersionStatus)
            raise _refuse(f"a status is one of {statuses}", token) from None
    if kind == "registered_model_id":
        try:
            return uuid.UUID(value)
        except ValueError:
            raise _refuse("registered_model_id is compared with a UUID", token) from None
    if kind == "created_at":
        try:
            return check_datetime(dt.datetime.fromisoformat(value))
        except (ValueError, TypeError):
            raise _refuse(
                "created_at is compared with an ISO 8601 datetime with a time zone", token
            ) from None
    return value


def parse_filter(source: str) -> list[_Clause]:
    """The clauses of an MLflow-style filter (``metrics.accuracy > 0.9 and tags.team =
    'x' and name LIKE 'churn%' and version >= 2``); ``InvalidFilter`` naming the token
    refused and its position. An empty or blank filter has no clause."""
    tokens = _tokens(source)
    clauses: list[_Clause] = []
    at = 0
    if tokens[0].kind == "end":
        return clauses
    while True:
        token = tokens[at]
        if token.kind != "ident":
            raise _refuse(f"expected {_FIELD_HELP}; got {token.text or 'the end'!r}", token)
        field = _field(token)
        at += 1
        operator = tokens[at]
        if operator.kind == "op" or operator.kind == "kw" and operator.value in ("like", "ilike"):
            op = str(operator.value)
            at += 1
        elif (
            operator.kind == "kw"
            and operator.value == "not"
            and tokens[at + 1].kind == "kw"
            and tokens[at + 1].value in ("like", "ilike")
        ):
            op = f"not {tokens[at + 1].value}"
            at += 2
        else:
            raise _refuse(
                f"expected an operator (=, !=, <, <=, >, >=, LIKE, ILIKE) after {token.text!r},"
                f" got {operator.text or 'the end'!r}",
                operator,
            )
        if op not in _OPS_OF[field.kind]:
            allowed = ", ".join(o.upper() for o in _OPS_OF[field.kind])
            raise _refuse(f"{token.text} takes {allowed}, not {op.upper()}", operator)
        value_token = tokens[at]
        clauses.append(_Clause(field, op, _value(field, op, value_token), token))
        if len(clauses) > MAX_FILTER_CLAUSES:
            raise _refuse(f"a filter has at most {MAX_FILTER_CLAUSES} clauses", token)
        at += 1
        joiner = tokens[at]
        if joiner.kind == "end":
            return clauses
        if joiner.kind == "kw" and joiner.value == "or":
            raise _refuse("OR is not supported: clauses are joined by AND", joiner)
        if not (joiner.kind == "kw" and joiner.value == "and"):
            raise _refuse(f"expected AND or the end, got {joiner.text!r}", joiner)
        at += 1


def _compare(column: Any, op: str, value: Any) -> ColumnElement[bool]:
    if op == "=":
        return column == value
    if op == "!=":
        return column != value
    if op == "<":
        return column < value
    if op == "<=":
        return column <= value
    if op == ">":
        return column > value
    if op == ">=":
        return column >= value
    if op == "like":
        return column.like(value)
    if op == "ilike":
        return column.ilike(value)
    if op == "not like":
        return column.not_like(value)
    if op == "not ilike":
        return column.not_ilike(value)
    raise AssertionError(op)  # pragma: no cover - the parser gives only these


def _condition(clause: _Clause) -> ColumnElement[bool]:
    field, op, value = clause.field, clause.op, clause.value
    if field.kind == "name":
        return _compare(RegisteredModel.name, op, value)
    if field.kind == "version":
        return _compare(ModelVersion.version, op, value)
    if field.kind == "status":
        return _compare(ModelVersion.status, op, value)
    if field.kind == "created_at":
        return _compare(ModelVersion.created_at, op, value)
    if field.kind == "registered_model_id":
        return _compare(ModelVersion.registered_model_id, op, value)
    if field.kind == "alias":
        named = (
            select(ModelAlias.alias)
            .where(ModelAlias.model_version_id == ModelVersion.id, ModelAlias.alias == value)
            .exists()
        )
        return named if op == "=" else ~named
    if field.kind == "metric":
        # A semi-join on (metric, split, value): ix_model_version_metrics_metric_split_value.
        return ModelVersion.id.in_(
            select(ModelVersionMetric.model_version_id).where(
                ModelVersionMetric.metric == field.key,
                ModelVersionMetric.split == field.split,
                _compare(ModelVersionMetric.value, op, value),
            )
        )
    if field.kind == "tag":
        if op == "=":  # the GIN index on tags
            return RegisteredModel.tags.contains({field.key: value})
        return _compare(RegisteredModel.tags[field.key].astext, op, value)
    if field.kind == "param":
        return (
            select(Model.id)
            .where(
                Model.id == ModelVersion.model_id,
                _compare(Model.hyperparameters[field.key].astext, op, value),
            )
            .exists()
        )
    raise AssertionError(field.kind)  # pragma: no cover


@dataclass(frozen=True)
class VersionOrder:
    """How a version search is ordered: ``created_at``, ``version`` or a metric, up or
    down; versions without the metric come last either way (NULLS LAST), each order
    broken by the version's id in the same direction."""

    field: Literal["created_at", "version", "metric"] = "created_at"
    descending: bool = True
    metric: str | None = None
    split: str | None = None

    @property
    def key(self) -> str:
        """The order's canonical text (a cursor remembers it)."""
        name = f"metrics.{self.metric}@{self.split}" if self.field == "metric" else self.field
        return f"{name} {'DESC' if self.descending else 'ASC'}"


def parse_order(source: str | None) -> VersionOrder:
    """``created_at DESC`` (the default), ``version [ASC|DESC]`` or
    ``metrics.<name>[@split] [ASC|DESC]`` (ascending unless DESC, as in SQL and
    MLflow); ``InvalidFilter`` otherwise."""
    if source is None or not source.strip():
        return VersionOrder()
    tokens = _tokens(source)
    first = tokens[0]
    if first.kind != "ident":
        raise _refuse("expected version, created_at or metrics.<name>[@split]", first)
    field = _field(first, orderable=True)
    descending = False
    at = 1
    if tokens[at].kind == "kw" and tokens[at].value in ("asc", "desc"):
        descending = tokens[at].value == "desc"
        at += 1
    if tokens[at].kind != "end":
        raise _refuse(f"expected ASC, DESC or the end, got {tokens[at].text!r}", tokens[at])
    if field.kind == "metric":
        return VersionOrder("metric", descending, field.key, field.split)
    return VersionOrder(field.kind, descending)  # type: ignore[arg-type]


@dataclass(frozen=True)
class VersionHit:
    """A version found by :func:`search_versions`, its registered model and its sort
    value (the metric's value, None when it has none; its created_at or version)."""

    version: ModelVersion
    registered_model: RegisteredModel
    sort_value: Any


def _after(column: Any, ident: Any, descending: bool, value: Any, last_id: uuid.UUID) -> Any:
    # The bound on the key alone lets an index on it bound the scan; the row
    # comparison breaks ties by id.
    if descending:
        return and_(column <= value, tuple_(column, ident) < tuple_(value, last_id))
    return and_(column >= value, tuple_(column, ident) > tuple_(value, last_id))


def search_versions(
    session: Session,
    user_id: uuid.UUID | None,
    *,
    filter: str | None = None,
    order: VersionOrder | None = None,
    limit: int = 50,
    after: tuple[Any, uuid.UUID] | None = None,
) -> list[VersionHit]:
    """The versions ``user_id`` may read (:func:`readable`) that match ``filter``
    (:func:`parse_filter`), in ``order``, at most ``limit``, after the key ``after``
    (the previous page's last ``(sort_value, id)``): keyset pages, stable when values
    tie or are missing. Ask ``limit + 1`` to know whether a next page exists."""
    order = order or VersionOrder()
    conditions = [readable(user_id), *(_condition(c) for c in parse_filter(filter or ""))]
    base = select(ModelVersion, RegisteredModel).join(
        RegisteredModel, RegisteredModel.id == ModelVersion.registered_model_id
    )
    ident = ModelVersion.id
    direction = (lambda c: c.desc()) if order.descending else (lambda c: c.asc())
    if order.field in ("created_at", "version"):
        column = ModelVersion.created_at if order.field == "created_at" else ModelVersion.version
        statement = base.add_columns(column).where(*conditions)
        if after is not None:
            if after[0] is None:
                raise errors.InvalidValue("this order has no missing values")
            statement = statement.where(_after(column, ident, order.descending, *after))
        rows = session.execute(
            statement.order_by(direction(column), direction(ident)).limit(limit)
        ).all()
        return [VersionHit(v, r, value) for v, r, value in rows]

    # A metric: the versions that have it (joined on its row: the index serves the
    # order), then, when the page is not full, those without it (NULLS LAST).
    metric = aliased(ModelVersionMetric)
    has_metric = and_(
        metric.model_version_id == ModelVersion.id,
        metric.metric == order.metric,
        metric.split == order.split,
    )
    hits: list[VersionHit] = []
    if after is None or after[0] is not None:
        statement = base.join(metric, has_metric).add_columns(metric.value).where(*conditions)
        if after is not None:
            statement = statement.where(_after(metric.value, ident, order.descending, *after))
        rows = session.execute(
            statement.order_by(direction(metric.value), direction(ident)).limit(limit)
        ).all()
        hits = [VersionHit(v, r, value) for v, r, value in rows]
    if len(hits) < limit:
        missing = ~select(metric.model_version_id).where(has_metric).exists()
        statement = base.where(*conditions, missing)
        if after is not None and after[0] is None:
            statement = statement.where(ident < after[1] if order.descending else ident > after[1])
        rows = session.execute(statement.order_by(direction(ident)).limit(limit - len(hits))).all()
        hits += [VersionHit(v, r, None) for v, r in rows]
    return hits


def metrics_of(session: Session, version_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, list[Any]]:
    """The metric rows of these versions, by version (one query for a page)."""
    out: dict[uuid.UUID, list[Any]] = {}
    ids = list(version_ids)
    if not ids:
        return out
    rows = session.scalars(
        select(ModelVersionMetric)
        .where(ModelVersionMetric.model_version_id.in_(ids))
        .order_by(ModelVersionMetric.metric, ModelVersionMetric.split)
    )
    for row in rows:
        out.setdefault(row.model_version_id, []).append(row)
    return out


def aliases_of(session: Session, version_ids: Iterable[uuid.UUID]) -> dict[uuid.UUID, list[str]]:
    """The aliases pointing at these versions, by version."""
    out: dict[uuid.UUID, list[str]] = {}
    ids = list(version_ids)
    if not ids:
        return out
    rows = session.execute(
        select(ModelAlias.model_version_id, ModelAlias.alias)
        .where(ModelAlias.model_version_id.in_(ids))
        .order_by(ModelAlias.alias)
    )
    for version_id, alias in rows:
        out.setdefault(version_id, []).append(alias)
    return out


#: The text search configuration of the name index (no stemming: names are names).
NAME_SEARCH_CONFIG = "simple"


def name_matches(words: str) -> ColumnElement[bool]:
    """Registered models whose name has every word of ``words`` as a word or a word's
    beginning (``churn pred`` finds ``churn-predictor v2``), through the GIN index
    ``ix_registered_models_name_search``. ``InvalidValue`` when ``words`` has no
    letter or digit."""
    found = re.findall(r"[^\W_]+", words.lower())
    if not found:
        raise errors.InvalidValue("a name search needs at least one letter or digit")
    query = " & ".join(f"{w}:*" for w in found[:20])
    config: ColumnElement[Any] = literal_column(f"'{NAME_SEARCH_CONFIG}'::regconfig")
    return func.to_tsvector(config, RegisteredModel.name).op("@@")(func.to_tsquery(config, query))


def search_registered_models(
    user_id: uuid.UUID | None,
    *,
    name: str | None = None,
    tags: Iterable[str] = (),
    owner: str | None = None,
    visibility: ModelVisibility | None = None,
) -> Select[RegisteredModel]:
    """The registered models ``user_id`` may read (:func:`readable`), narrowed by a
    name search (:func:`name_matches`), tags (``key:value`` has the tag with that
    value, ``key`` has the tag), an owner (``me``, a user id or an email) and a
    visibility: a statement the caller pages."""
    statement = select(RegisteredModel).where(readable(user_id))
    if name is not None:
        statement = statement.where(name_matches(name))
    for tag in tags:
        key, sep, value = tag.partition(":")
        if not key:
            raise errors.InvalidValue(f"a tag is key or key:value, not {tag!r}")
        if sep:
            statement = statement.where(RegisteredModel.tags.contains({key: value}))
        else:
            statement = statement.where(RegisteredModel.tags.has_key(key))
    if owner is not None:
        if owner == "me":
            if user_id is None:
                raise errors.InvalidValue("owner=me needs a signed-in caller")
            statement = statement.where(RegisteredModel.user_id == user_id)
        else:
            try:
                statement = statement.where(RegisteredModel.user_id == uuid.UUID(owner))
            except ValueError:
                owner_id = select(User.id).where(User.email == owner.strip().lower())
                statement = statement.where(RegisteredModel.user_id.in_(owner_id))
    if visibility is not None:
        statement = statement.where(RegisteredModel.visibility == visibility)
    return statement


__all__ = [
    "DEFAULT_SPLIT",
    "MAX_FILTER_CLAUSES",
    "MAX_FILTER_LENGTH",
    "NAME_SEARCH_CONFIG",
    "VersionHit",
    "VersionOrder",
    "aliases_of",
    "authorize",
    "authorize_version",
    "find_grantee",
    "metrics_of",
    "name_matches",
    "parse_filter",
    "parse_order",
    "readable",
    "readable_versions",
    "register_trained_model",
    "search_registered_models",
    "search_versions",
    "visible_lineage",
    "ENVIRONMENT_PACKAGES",
    "MAX_LINEAGE_DEPTH",
    "LineageEdge",
    "ModelVersionNotFound",
    "RegisteredModelNotFound",
    "TrainedModelNotFound",
    "can",
    "create_registered_model",
    "current_environment",
    "environment_problems",
    "delete_alias",
    "get_version",
    "grant_permission",
    "lineage",
    "made_from_dataset_version",
    "record_download",
    "record_lineage",
    "register_saved_model",
    "register_version",
    "revoke_permission",
    "set_alias",
]
