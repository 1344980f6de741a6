"""The model registry over HTTP: registered models, versions, aliases, sharing, lineage,
search (issue 13; docs/api.md, "Model registry").

A thin caller of ``database.registry``, where every rule lives: each access check is
``registry.authorize`` / ``authorize_version`` (the rule of ``registry.can``) and each
list filters with ``registry.readable``, the same rule as a SQL condition. A model the
caller may not read answers 404 like a missing one; one the caller may read but not
change answers 403 ``forbidden`` (only the owner changes a model, its versions,
aliases and permissions). Reads answer anonymous callers too (no ``Authorization``):
they see the public models, as ``registry.can`` allows.

The download route (``GET /v1/model-versions/{id}/download``) is in
``api.routers.model_downloads``.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import json
import math
import re
import uuid
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from api.deps import MaybeReader, SessionDep, Writer
from api.errors import ApiError, error_responses
from api.pagination import (
    DEFAULT_LIMIT,
    CursorQuery,
    LimitQuery,
    Page,
    decode_cursor,
    paginate,
)
from api.schemas import (
    AliasIn,
    AliasOut,
    LineageEdgeOut,
    LineageOut,
    LineageSummary,
    MetricOut,
    ModelVersionDetail,
    ModelVersionOut,
    ModelVersionPatch,
    PermissionIn,
    PermissionOut,
    RegisteredModelDetail,
    RegisteredModelIn,
    RegisteredModelOut,
    RegisteredModelPatch,
    RegisterVersionIn,
)
from database import registry
from database.models import (
    ModelAlias,
    ModelPermission,
    ModelVersion,
    ModelVisibility,
    RegisteredModel,
    RegisteredModelPermission,
)
from database.models.model_alias import ALIAS_PATTERN
from database.types import check_datetime

router = APIRouter(tags=["registry"])

_ALIAS = re.compile(ALIAS_PATTERN)


def _user(principal: Any) -> uuid.UUID | None:
    return None if principal is None else principal.user_id


def _check_alias(alias: str) -> str:
    if len(alias) > 63 or not _ALIAS.match(alias):
        raise ApiError(
            422,
            "invalid_alias",
            "an alias is a lowercase word: a letter, then up to 62 letters, digits, '_' or '-'"
            " (a number would read as a version)",
            {"alias": alias[:100]},
        )
    return alias


def _access(session: Session, user_id: uuid.UUID | None, model: RegisteredModel) -> str:
    if model.user_id == user_id:
        return "owner"
    for permission in (ModelPermission.DEPLOY, ModelPermission.DOWNLOAD):
        if registry.can(session, user_id, model.id, permission):
            return permission.value
    return "read"


def _model_detail(
    session: Session, user_id: uuid.UUID | None, model: RegisteredModel
) -> RegisteredModelDetail:
    aliases = session.execute(
        select(ModelAlias.alias, ModelVersion.version)
        .join(ModelVersion, ModelVersion.id == ModelAlias.model_version_id)
        .where(ModelAlias.registered_model_id == model.id)
        .order_by(ModelAlias.alias)
    ).all()
    return RegisteredModelDetail(
        **RegisteredModelOut.model_validate(model).model_dump(),
        model_card=model.model_card,
        aliases={a: v for a, v in aliases},
        access=_access(session, user_id, model),  # type: ignore[arg-type]
    )


def _versions_out(
    session: Session, pairs: list[tuple[ModelVersion, RegisteredModel]]
) -> list[ModelVersionOut]:
    ids = [v.id for v, _ in pairs]
    metrics = registry.metrics_of(session, ids)
    aliases = registry.aliases_of(session, ids)
    return [
        ModelVersionOut(
            id=v.id,
            registered_model_id=v.registered_model_id,
            registered_model_name=r.name,
            version=v.version,
            model_id=v.model_id,
            status=v.status,
            description=v.description,
            primary_metric=v.primary_metric,
            download_count=v.download_count,
            metrics=[MetricOut.model_validate(m) for m in metrics.get(v.id, [])],
            aliases=aliases.get(v.id, []),
            created_at=v.created_at,
            updated_at=v.updated_at,
        )
        for v, r in pairs
    ]


def _edges(edges: list[registry.LineageEdge]) -> list[LineageEdgeOut]:
    return [
        LineageEdgeOut(
            depth=e.depth,
            child_version_id=e.child_version_id,
            relation=e.relation,
            parent_kind=e.parent_kind,  # type: ignore[arg-type]
            parent_id=e.parent_id,
        )
        for e in edges
    ]


def _version_detail(
    session: Session, user_id: uuid.UUID | None, version: ModelVersion, model: RegisteredModel
) -> ModelVersionDetail:
    [summary] = _versions_out(session, [(version, model)])
    parents = registry.visible_lineage(session, user_id, version.id, "up", 1)
    children = registry.visible_lineage(session, user_id, version.id, "down", 1)
    return ModelVersionDetail(
        **summary.model_dump(),
        signature=version.signature,
        input_example=version.input_example,
        environment=version.environment,
        lineage=LineageSummary(
            parents=_edges(parents),
            derived_versions=len({e.child_version_id for e in children}),
        ),
    )


# --- registered models ----------------------------------------------------------------------


@router.post(
    "/registered-models",
    status_code=201,
    response_model=RegisteredModelDetail,
    responses=error_responses(401, 403, 409, 422),
    summary="Create a registered model (a name that versions are registered under)",
)
def create_registered_model(
    principal: Writer, session: SessionDep, body: RegisteredModelIn
) -> RegisteredModelDetail:
    """409 ``name_taken`` when the caller has a registered model of this name."""
    model = registry.create_registered_model(
        session,
        principal.user_id,
        body.name,
        description=body.description,
        model_card=body.model_card,
        license=body.license,
        tags=body.tags,
        visibility=body.visibility,
    )
    session.commit()
    return _model_detail(session, principal.user_id, model)


@router.get(
    "/registered-models",
    response_model=Page[RegisteredModelOut],
    responses=error_responses(401, 403, 422),
    summary="Registered models the caller may read, newest first",
)
def list_registered_models(
    principal: MaybeReader,
    session: SessionDep,
    name: Annotated[
        str | None,
        Query(
            min_length=1,
            max_length=200,
            description="Words the name contains, each as a word or a word's beginning.",
        ),
    ] = None,
    tag: Annotated[
        list[str] | None,
        Query(
            max_length=10,
            description="`key:value` (the tag has this value) or `key` (has the tag); repeat"
            " to require several.",
        ),
    ] = None,
    owner: Annotated[
        str | None,
        Query(min_length=1, max_length=320, description="`me`, a user id or an email."),
    ] = None,
    visibility: Annotated[
        ModelVisibility | None, Query(description="Only models with this visibility.")
    ] = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[RegisteredModelOut]:
    """Registered models the caller may read (their own, those shared with them, public ones),
    newest first; filter by `visibility`. Anonymous callers see public models only."""
    for text_ in [name or "", owner or "", *(tag or [])]:
        if "\x00" in text_ or len(text_) > 400:
            raise ApiError(422, "invalid_value", "a search parameter has a NUL or is too long")
    statement = registry.search_registered_models(
        _user(principal), name=name, tags=tag or (), owner=owner, visibility=visibility
    )
    rows, next_cursor = paginate(
        session,
        statement,
        RegisteredModel.created_at,
        RegisteredModel.id,
        limit=limit,
        cursor=cursor,
    )
    return Page[RegisteredModelOut](
        items=[RegisteredModelOut.model_validate(m) for m in rows], next_cursor=next_cursor
    )


@router.get(
    "/registered-models/{registered_model_id}",
    response_model=RegisteredModelDetail,
    responses=error_responses(401, 403, 404, 422),
    summary="A registered model, with its model card and aliases",
)
def get_registered_model(
    principal: MaybeReader, session: SessionDep, registered_model_id: uuid.UUID
) -> RegisteredModelDetail:
    """A registered model the caller may read, with its model card, aliases (alias -> version) and
    the caller's access. 404 when the caller may not read it."""
    model = registry.authorize(session, _user(principal), registered_model_id)
    return _model_detail(session, _user(principal), model)


@router.patch(
    "/registered-models/{registered_model_id}",
    response_model=RegisteredModelDetail,
    responses=error_responses(401, 403, 404, 409, 422),
    summary="Change a registered model (the owner)",
)
def patch_registered_model(
    principal: Writer,
    session: SessionDep,
    registered_model_id: uuid.UUID,
    body: RegisteredModelPatch,
) -> RegisteredModelDetail:
    """Only the fields given change. A new name taken by another of the caller's models
    is 409 ``name_taken``. Making a model ``private`` suspends its grants (kept, for
    when it is shared again)."""
    model = registry.authorize(
        session, principal.user_id, registered_model_id, manage=True, lock=True
    )
    for field in sorted(body.model_fields_set):
        setattr(model, field, getattr(body, field))
    session.flush()
    session.commit()
    session.refresh(model)
    return _model_detail(session, principal.user_id, model)


@router.delete(
    "/registered-models/{registered_model_id}",
    status_code=204,
    response_class=Response,
    responses=error_responses(401, 403, 404, 409, 422),
    summary="Delete a registered model with its versions, aliases and grants (the owner)",
)
def delete_registered_model(
    principal: Writer, session: SessionDep, registered_model_id: uuid.UUID
) -> Response:
    """The trained models stay (GET /v1/models); their versions, aliases, lineage,
    download history and grants go."""
    registry.authorize(session, principal.user_id, registered_model_id, manage=True, lock=True)
    session.execute(delete(RegisteredModel).where(RegisteredModel.id == registered_model_id))
    session.commit()
    return Response(status_code=204)


# --- versions -------------------------------------------------------------------------------


@router.post(
    "/registered-models/{registered_model_id}/versions",
    status_code=201,
    response_model=ModelVersionDetail,
    responses=error_responses(401, 403, 404, 409, 422),
    summary="Register one of the caller's trained models as the next version",
)
def register_version(
    principal: Writer,
    session: SessionDep,
    registered_model_id: uuid.UUID,
    body: RegisterVersionIn,
) -> ModelVersionDetail:
    """The database numbers the version. Its metrics are the trained model's holdout
    metrics (split ``test``); its lineage names the job, the workflow snapshot and the
    dataset versions it was trained on. 404 when the trained model is not the
    caller's; 409 ``model_already_registered`` when it is a version already."""
    model = registry.authorize(session, principal.user_id, registered_model_id, manage=True)
    version = registry.register_trained_model(
        session,
        model.id,
        body.model_id,
        description=body.description,
        primary_metric=body.primary_metric,
        aliases=body.aliases,
    )
    session.commit()
    session.refresh(model)
    return _version_detail(session, principal.user_id, version, model)


@router.get(
    "/registered-models/{registered_model_id}/versions",
    response_model=Page[ModelVersionOut],
    responses=error_responses(401, 403, 404, 422),
    summary="A registered model's versions, newest (highest number) first",
)
def list_versions(
    principal: MaybeReader,
    session: SessionDep,
    registered_model_id: uuid.UUID,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[ModelVersionOut]:
    """The versions of a registered model the caller may read, highest number first, with their
    metrics and aliases (keyset pagination)."""
    if cursor:
        decode_cursor(cursor, int)  # a bad cursor is 422 before the model is looked up
    model = registry.authorize(session, _user(principal), registered_model_id)
    rows, next_cursor = paginate(
        session,
        select(ModelVersion).where(ModelVersion.registered_model_id == model.id),
        ModelVersion.version,
        ModelVersion.id,
        limit=limit,
        cursor=cursor,
        kind=int,
    )
    return Page[ModelVersionOut](
        items=_versions_out(session, [(v, model) for v in rows]), next_cursor=next_cursor
    )


# --- search cursor --------------------------------------------------------------------------


def _encode_search_cursor(order: registry.VersionOrder, hit: registry.VersionHit) -> str:
    value = hit.sort_value
    if isinstance(value, dt.datetime):
        value = value.isoformat()
    raw = json.dumps([order.key, value, str(hit.version.id)], separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def _decode_search_cursor(cursor: str, order: registry.VersionOrder) -> tuple[Any, uuid.UUID]:
    invalid = ApiError(
        422, "invalid_cursor", "the cursor is not one this API returned for this order_by"
    )
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key, value, ident = json.loads(raw)
        parsed_id = uuid.UUID(str(ident))
        if key != order.key:
            raise ValueError("another order")
        parsed: Any
        if order.field == "created_at":
            parsed = check_datetime(dt.datetime.fromisoformat(value))
        elif order.field == "version":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError("not an int")
            if not -(2**31) <= value < 2**31:
                raise ValueError("out of range")
            parsed = value
        elif value is None:
            parsed = None
        else:
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError("not a number")
            parsed = float(value)
            if not math.isfinite(parsed):
                raise ValueError("not finite")
    except (ValueError, TypeError, binascii.Error, UnicodeDecodeError):
        raise invalid from None
    return parsed, parsed_id


@router.get(
    "/model-versions",
    response_model=Page[ModelVersionOut],
    responses=error_responses(401, 403, 422),
    summary="Search the model versions the caller may read",
)
def search_versions(
    principal: MaybeReader,
    session: SessionDep,
    filter: Annotated[
        str | None,
        Query(
            max_length=registry.MAX_FILTER_LENGTH,
            description="MLflow-style: `metrics.accuracy > 0.9 and tags.team = 'x' and name LIKE"
            " 'churn%' and version >= 2` (docs/api.md lists the fields and operators).",
        ),
    ] = None,
    order_by: Annotated[
        str | None,
        Query(
            max_length=300,
            description="`created_at DESC` (default), `version [ASC|DESC]` or"
            " `metrics.<name>[@split] [ASC|DESC]`; missing values last.",
        ),
    ] = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[ModelVersionOut]:
    """A malformed filter or order is 422 ``invalid_filter`` naming the token and its
    position (from 0)."""
    order = registry.parse_order(order_by)
    after = _decode_search_cursor(cursor, order) if cursor else None
    hits = registry.search_versions(
        session, _user(principal), filter=filter, order=order, limit=limit + 1, after=after
    )
    next_cursor = None
    if len(hits) > limit:
        hits = hits[:limit]
        next_cursor = _encode_search_cursor(order, hits[-1])
    return Page[ModelVersionOut](
        items=_versions_out(session, [(h.version, h.registered_model) for h in hits]),
        next_cursor=next_cursor,
    )


@router.get(
    "/model-versions/{version_id}",
    response_model=ModelVersionDetail,
    responses=error_responses(401, 403, 404, 422),
    summary="A model version: signature, environment, metrics, aliases, lineage summary",
)
def get_version(
    principal: MaybeReader, session: SessionDep, version_id: uuid.UUID
) -> ModelVersionDetail:
    """One model version: its input signature and example, the environment it was trained in, its
    metrics, aliases and a summary of its lineage."""
    version, model = registry.authorize_version(session, _user(principal), version_id)
    return _version_detail(session, _user(principal), version, model)


@router.patch(
    "/model-versions/{version_id}",
    response_model=ModelVersionDetail,
    responses=error_responses(401, 403, 404, 409, 422),
    summary="Change a version's description, primary metric or status (the owner)",
)
def patch_version(
    principal: Writer, session: SessionDep, version_id: uuid.UUID, body: ModelVersionPatch
) -> ModelVersionDetail:
    """Changes a version's description, primary metric or status (`ready` or `archived`,
    either way back). Only the owner: 403 `forbidden` for a caller who may only read it."""
    version, model = registry.authorize_version(session, principal.user_id, version_id, manage=True)
    for field in sorted(body.model_fields_set):
        setattr(version, field, getattr(body, field))
    session.flush()
    session.commit()
    session.refresh(version)
    return _version_detail(session, principal.user_id, version, model)


@router.get(
    "/model-versions/{version_id}/lineage",
    response_model=LineageOut,
    responses=error_responses(401, 403, 404, 422),
    summary="What made a version (up) or what was made from it (down)",
)
def get_lineage(
    principal: MaybeReader,
    session: SessionDep,
    version_id: uuid.UUID,
    direction: Annotated[
        Literal["up", "down"],
        Query(description="up: what made the version; down: what was made from it."),
    ] = "up",
    depth: Annotated[
        int,
        Query(ge=1, le=registry.MAX_LINEAGE_DEPTH, description="How many steps to follow."),
    ] = 5,
) -> LineageOut:
    """Edges to or from versions the caller may not read are left out."""
    version, _ = registry.authorize_version(session, _user(principal), version_id)
    edges = registry.visible_lineage(session, _user(principal), version.id, direction, depth)
    return LineageOut(version_id=version.id, direction=direction, depth=depth, edges=_edges(edges))


# --- aliases --------------------------------------------------------------------------------


@router.put(
    "/registered-models/{registered_model_id}/aliases/{alias}",
    response_model=AliasOut,
    responses=error_responses(401, 403, 404, 422),
    summary="Point an alias at a version (creates or moves it, atomically)",
)
def set_alias(
    principal: Writer,
    session: SessionDep,
    registered_model_id: uuid.UUID,
    alias: str,
    body: AliasIn,
) -> AliasOut:
    """422 ``invalid_alias`` for a name that is not a lowercase word; 404 when the model
    has no such version."""
    _check_alias(alias)
    registry.authorize(session, principal.user_id, registered_model_id, manage=True)
    row = registry.set_alias(session, registered_model_id, alias, body.version)
    session.commit()
    return AliasOut(
        alias=row.alias,
        version=body.version,
        model_version_id=row.model_version_id,
        updated_at=row.updated_at,
    )


@router.delete(
    "/registered-models/{registered_model_id}/aliases/{alias}",
    status_code=204,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422),
    summary="Remove an alias",
)
def delete_alias(
    principal: Writer, session: SessionDep, registered_model_id: uuid.UUID, alias: str
) -> Response:
    """Removes the alias from the registered model; the version it pointed at stays. 404
    `alias_not_found` when there is no such alias. Only the owner."""
    _check_alias(alias)
    registry.authorize(session, principal.user_id, registered_model_id, manage=True)
    if not registry.delete_alias(session, registered_model_id, alias):
        raise ApiError(404, "alias_not_found", f"the registered model has no alias {alias!r}")
    session.commit()
    return Response(status_code=204)


# --- permissions ----------------------------------------------------------------------------


@router.get(
    "/registered-models/{registered_model_id}/permissions",
    response_model=list[PermissionOut],
    responses=error_responses(401, 403, 404, 422),
    summary="Who the registered model is shared with (the owner)",
)
def list_permissions(
    principal: MaybeReader, session: SessionDep, registered_model_id: uuid.UUID
) -> list[PermissionOut]:
    """Grants of a ``private`` model are listed, though suspended until it is shared."""
    registry.authorize(session, _user(principal), registered_model_id, manage=True)
    rows = session.scalars(
        select(RegisteredModelPermission)
        .where(RegisteredModelPermission.registered_model_id == registered_model_id)
        .order_by(RegisteredModelPermission.created_at, RegisteredModelPermission.user_id)
    ).all()
    return [PermissionOut.model_validate(p) for p in rows]


@router.post(
    "/registered-models/{registered_model_id}/permissions",
    response_model=PermissionOut,
    status_code=201,
    responses={
        200: {"description": "An existing grant was replaced", "model": PermissionOut},
        **error_responses(401, 403, 404, 409, 422),
    },
    summary="Grant a user read, download or deploy (the owner)",
)
def grant_permission(
    principal: Writer,
    session: SessionDep,
    registered_model_id: uuid.UUID,
    body: PermissionIn,
    response: Response,
) -> PermissionOut:
    """The user by ``user_id`` or ``email``: an unknown (or deleted) one is 404
    ``user_not_found`` naming what was given (signing up already tells whether an email
    is registered). Granting the owner (yourself) is 409 ``owner_permission``. A grant
    on a ``private`` model is kept but takes effect once it is ``shared`` or ``public``.
    Granting again replaces the permission (200)."""
    registry.authorize(session, principal.user_id, registered_model_id, manage=True, lock=True)
    grantee = registry.find_grantee(session, user_id=body.user_id, email=body.email)
    existed = session.get(RegisteredModelPermission, (registered_model_id, grantee))
    registry.grant_permission(
        session, registered_model_id, grantee, body.permission, granted_by=principal.user_id
    )
    session.commit()
    row = session.get(
        RegisteredModelPermission, (registered_model_id, grantee), populate_existing=True
    )
    assert row is not None
    if existed is not None:
        response.status_code = 200
    return PermissionOut.model_validate(row)


@router.delete(
    "/registered-models/{registered_model_id}/permissions",
    status_code=204,
    response_class=Response,
    responses=error_responses(401, 403, 404, 422),
    summary="Revoke a user's permission (the owner)",
)
def revoke_permission(
    principal: Writer,
    session: SessionDep,
    registered_model_id: uuid.UUID,
    user_id: Annotated[
        uuid.UUID | None, Query(description="The grantee, by id (or email).")
    ] = None,
    email: Annotated[
        str | None,
        Query(min_length=3, max_length=320, description="The grantee, by email (or user_id)."),
    ] = None,
) -> Response:
    """The user by ``user_id`` or ``email`` (query parameters, exactly one); 404
    ``permission_not_found`` when they hold none."""
    registry.authorize(session, principal.user_id, registered_model_id, manage=True, lock=True)
    if email is not None and "\x00" in email:
        raise ApiError(422, "invalid_value", "the email has a NUL character")
    grantee = registry.find_grantee(
        session, user_id=user_id, email=email.strip().lower() if email else None
    )
    if not registry.revoke_permission(session, registered_model_id, grantee):
        raise ApiError(404, "permission_not_found", "this user holds no permission on the model")
    session.commit()
    return Response(status_code=204)
