"""The audit trail: a user's own events, and every event for an administrator.

Thin: what a user sees is ``database.audit.visible_to`` (the events they made, and
the events about what is theirs: their account, their keys, models shared with
them); the admin's list is ``database.audit.filtered`` on everything.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import ConfigDict
from sqlalchemy import select

from api.deps import AdminDep, Reader, SessionDep
from api.errors import ApiError, error_responses
from api.pagination import DEFAULT_LIMIT, CursorQuery, LimitQuery, Page, paginate
from api.schemas import Schema, UtcDatetime
from database import audit
from database.models import AuditEvent, AuditOutcome

router = APIRouter(tags=["audit"])

ActionQuery = Annotated[
    str | None,
    Query(
        max_length=100,
        pattern=r"^[a-z][a-z_]*(\.[a-z][a-z_]*)*\.?$",
        description="An action (`api_key.created`) or a prefix ending in a dot (`api_key.`).",
    ),
]
FromQuery = Annotated[
    UtcDatetime | None,
    Query(alias="from", description="Events at or after this time (with a time zone)."),
]
ToQuery = Annotated[
    UtcDatetime | None, Query(description="Events before this time (with a time zone).")
]


class AuditEventOut(Schema):
    """One event of the audit trail: who did what to which entity, and how it ended."""

    model_config = ConfigDict(from_attributes=True)

    id: uuid.UUID
    """The event's id."""
    occurred_at: dt.datetime
    """When it happened (UTC)."""
    actor_user_id: uuid.UUID | None
    """The user who acted (null: the system)."""
    actor_api_key_id: uuid.UUID | None
    """The API key they used."""
    actor_session_id: uuid.UUID | None
    """The session they used."""
    request_id: str | None
    """The request's X-Request-ID."""
    client_ip: str | None
    """The caller's address."""
    user_agent: str | None
    """The caller's User-Agent."""
    action: str
    """What was done, e.g. api_key.created or model.downloaded."""
    entity_type: str
    """The kind of entity acted on."""
    entity_id: uuid.UUID | None
    """The entity acted on."""
    subject_user_id: uuid.UUID | None
    """The user the entity belongs to."""
    outcome: AuditOutcome
    """success, failed or denied."""
    detail: dict[str, Any]
    """What changed (old and new values, without secrets)."""

    @classmethod
    def from_event(cls, event: AuditEvent) -> AuditEventOut:
        ip = event.client_ip
        return cls(
            id=event.id,
            occurred_at=event.occurred_at,
            actor_user_id=event.actor_user_id,
            actor_api_key_id=event.actor_api_key_id,
            actor_session_id=event.actor_session_id,
            request_id=event.request_id,
            client_ip=str(ipaddress.ip_address(ip)) if ip is not None else None,
            user_agent=event.user_agent,
            action=event.action,
            entity_type=event.entity_type,
            entity_id=event.entity_id,
            subject_user_id=event.subject_user_id,
            outcome=event.outcome,
            detail=event.detail,
        )


def _range(since: dt.datetime | None, until: dt.datetime | None) -> None:
    if since is not None and until is not None and since >= until:
        raise ApiError(422, "invalid_range", "'from' must be before 'to'")


@router.get(
    "/audit-events",
    response_model=Page[AuditEventOut],
    responses=error_responses(401, 403, 422),
    summary="The caller's audit trail, newest first",
)
def list_audit_events(
    principal: Reader,
    session: SessionDep,
    action: ActionQuery = None,
    since: FromQuery = None,
    to: ToQuery = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[AuditEventOut]:
    """What the caller did (as actor, with any of their keys) and what was done to
    what is theirs (their account, their keys, a model shared with them), by
    anyone: an administrator, a raw SQL change, the purge."""
    _range(since, to)
    rows, next_cursor = paginate(
        session,
        audit.visible_to(principal.user_id, action=action, since=since, until=to),
        AuditEvent.occurred_at,
        AuditEvent.id,
        limit=limit,
        cursor=cursor,
    )
    return Page[AuditEventOut](
        items=[AuditEventOut.from_event(e) for e in rows], next_cursor=next_cursor
    )


@router.get(
    "/admin/audit-events",
    response_model=Page[AuditEventOut],
    responses=error_responses(401, 403, 422),
    summary="Every audit event, newest first (administrators)",
)
def list_all_audit_events(
    principal: AdminDep,
    session: SessionDep,
    action: ActionQuery = None,
    since: FromQuery = None,
    to: ToQuery = None,
    actor_user_id: Annotated[uuid.UUID | None, Query(description="Only this actor's.")] = None,
    entity_id: Annotated[uuid.UUID | None, Query(description="Only about this entity.")] = None,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> Page[AuditEventOut]:
    """Every audit event, newest first, filtered by `action` (exact, or a prefix ending in `.`),
    `from`/`to`, `actor_user_id` and `entity_id`. Administrators only (403 `admin_required`)."""
    _range(since, to)
    stmt = audit.filtered(select(AuditEvent), action=action, since=since, until=to)
    if actor_user_id is not None:
        stmt = stmt.where(audit.by_actor(actor_user_id))
    if entity_id is not None:
        stmt = stmt.where(AuditEvent.entity_id == entity_id)
    rows, next_cursor = paginate(
        session, stmt, AuditEvent.occurred_at, AuditEvent.id, limit=limit, cursor=cursor
    )
    return Page[AuditEventOut](
        items=[AuditEventOut.from_event(e) for e in rows], next_cursor=next_cursor
    )
