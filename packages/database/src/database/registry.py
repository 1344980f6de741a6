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
- **access**: :func:`can`, the one access check of the registry, and
  :func:`grant_permission` / :func:`revoke_permission`;
- **downloads**: :func:`record_download` (checks ``download`` with :func:`can` and
  records the attempt, granted or refused).

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

import ipaddress
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import delete, select, text
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from database import errors
from database.models.enums import (
    LineageRelation,
    ModelFormat,
    ModelPermission,
    ModelVisibility,
)
from database.models.model_alias import ModelAlias
from database.models.model_download import MAX_REASON, MAX_USER_AGENT, ModelDownload
from database.models.model_lineage import ModelLineage
from database.models.model_version import ModelVersion
from database.models.model_version_metric import ModelVersionMetric
from database.models.registered_model import RegisteredModel
from database.models.registered_model_permission import RegisteredModelPermission

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

_CAN = text(
    "SELECT EXISTS ("
    " SELECT 1 FROM registered_models AS r JOIN users AS o ON o.id = r.user_id"
    "  WHERE r.id = :rm AND NOT o.is_deleted AND ("
    "        r.user_id = :u"
    "     OR (r.visibility = 'public' AND CAST(:perm AS model_permission) <= 'download')"
    "     OR (r.visibility <> 'private' AND EXISTS ("
    "           SELECT 1 FROM registered_model_permissions AS p"
    "            WHERE p.registered_model_id = r.id AND p.user_id = :u"
    "              AND p.permission >= CAST(:perm AS model_permission)))))"
)


def can(
    session: Session,
    user_id: uuid.UUID | None,
    registered_model_id: uuid.UUID,
    permission: ModelPermission,
) -> bool:
    """May ``user_id`` (None: anonymous) ``permission`` the registered model? Every
    access check of the registry is this one (see the module doc for the rules)."""
    return bool(
        session.scalar(
            _CAN,
            {"rm": registered_model_id, "u": user_id, "perm": ModelPermission(permission).value},
        )
    )


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


__all__ = [
    "DEFAULT_SPLIT",
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
