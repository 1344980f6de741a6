"""One audit event (seed 000's ``OperationEvent``): who did what to which entity, and
how it ended. Append-only, partitioned by month.

Rows are written by the triggers of ``sql/triggers/audit.sql`` (changes of keys,
accounts, sharing, registered models) and by ``database.audit.record`` (reads that
matter, such as an artifact download). The actor columns default to the fields of
the transaction-local setting ``automl.actor`` that ``database.audit.set_actor``
sets (``audit_actor_uuid(n)``, ``audit_actor_field(n)``: SQL functions the planner
inlines), so a change made through raw SQL is audited with whatever actor its
transaction named (NULL when none).

Only the database's functions write it (the apps' role may not INSERT), and the
shape of a row is theirs to keep: ``audit_record`` refuses a malformed action,
entity type or detail (ML108, ``InvalidAuditEvent``).

UPDATE, DELETE and TRUNCATE are refused for every client (ML105,
``audit_events_immutable``); old months leave by dropping whole partitions
(``automl-db clean --what audit``). The only UPDATE allowed is the purge's
redaction of a purged user's IP and user agent (``audit_redact_user``).

The table is ``PARTITION BY RANGE (occurred_at)``, one partition a month (UTC
bounds, ``audit_events_pYYYYMM``) plus ``audit_events_default``, made ahead by
``audit_events_ensure_partitions``; the partitions are not models.
"""

from __future__ import annotations

import datetime as dt
import uuid
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from sqlalchemy import Index, PrimaryKeyConstraint, func, text
from sqlalchemy.dialects.postgresql import INET
from sqlalchemy.orm import Mapped, mapped_column

from database.base import Base
from database.models.enums import AuditOutcome, audit_outcome

MAX_USER_AGENT = 512
MAX_REQUEST_ID = 200
#: Bytes of ``detail`` (its JSON text) at most.
MAX_DETAIL_BYTES = 4096
MAX_ACTION = 100
MAX_ENTITY_TYPE = 50
#: The actor index's rows: an actor acting on what is not theirs (or on nothing's).
ACTOR_INDEX_WHERE = "actor_user_id IS NOT NULL AND actor_user_id IS DISTINCT FROM subject_user_id"


class AuditEvent(Base):
    __tablename__ = "audit_events"

    id: Mapped[uuid.UUID] = mapped_column(server_default=text("gen_random_uuid()"))
    #: When it happened (the clock, not the transaction's start: events of one
    #: transaction keep their order).
    occurred_at: Mapped[dt.datetime] = mapped_column(server_default=func.clock_timestamp())
    # Who: from the transaction-local setting (no foreign keys: the trail outlives
    # the users, keys and sessions it names).
    actor_user_id: Mapped[uuid.UUID | None] = mapped_column(
        server_default=text("audit_actor_uuid(1)")
    )
    actor_api_key_id: Mapped[uuid.UUID | None] = mapped_column(
        server_default=text("audit_actor_uuid(2)")
    )
    actor_session_id: Mapped[uuid.UUID | None] = mapped_column(
        server_default=text("audit_actor_uuid(3)")
    )
    request_id: Mapped[str | None] = mapped_column(
        server_default=text(f"left(audit_actor_field(4), {MAX_REQUEST_ID})")
    )
    client_ip: Mapped[IPv4Address | IPv6Address | None] = mapped_column(
        INET, server_default=text("audit_actor_inet(5)")
    )
    user_agent: Mapped[str | None] = mapped_column(
        server_default=text(f"left(audit_actor_field(6), {MAX_USER_AGENT})")
    )
    #: The database role that made the change (the apps' role, the owner, an operator).
    db_role: Mapped[str] = mapped_column(server_default=text("SESSION_USER"))
    #: e.g. ``api_key.created``, ``user.deleted``, ``permission.granted``.
    action: Mapped[str]
    entity_type: Mapped[str]
    entity_id: Mapped[uuid.UUID | None]
    #: The user whose entity it is (a key's owner, the account itself, a grantee):
    #: what ``GET /v1/audit-events`` shows a user besides their own actions.
    subject_user_id: Mapped[uuid.UUID | None]
    outcome: Mapped[AuditOutcome] = mapped_column(
        audit_outcome, server_default=AuditOutcome.SUCCESS.value
    )
    detail: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))

    __table_args__ = (
        # The partition key is part of every unique key of a partitioned table; time
        # first: an append is always at the index's right end (a random id first
        # spread inserts over the whole index), and the key is the admin's list in
        # time order and its keyset pagination (so no separate index on time; a BRIN
        # could not give the order).
        PrimaryKeyConstraint("occurred_at", "id"),
        # No CHECK constraints: each cost every audit row's INSERT its parse and set-up
        # (docs/performance.md, "Audit trail overhead"). Their rules hold where rows
        # are made: audit_record checks the API's events (ML108: MAX_ACTION,
        # MAX_ENTITY_TYPE, MAX_DETAIL_BYTES), the triggers' actions and entity types
        # are sql/triggers/audit.sql's constants (tests/test_audit.py checks them) and
        # they cap their details at 2000 bytes, and the actor's request id and user
        # agent are cut to MAX_REQUEST_ID and MAX_USER_AGENT where they are read.
        # A user's own trail (GET /v1/audit-events: actor or subject), an admin's
        # filter by actor, the purge's redaction. Most events are about the actor's
        # own things (a key they made: actor = subject), so the subject index holds
        # every event with a subject and the actor index only the events whose actor
        # is someone else (an admin, another user) : one index entry fewer per usual
        # event. Queries say "actor = u" as the two arms (database.audit.by_actor).
        Index(
            "ix_audit_events_subject_user_id_occurred_at",
            "subject_user_id",
            "occurred_at",
            postgresql_where=text("subject_user_id IS NOT NULL"),
        ),
        Index(
            "ix_audit_events_actor_user_id_occurred_at",
            "actor_user_id",
            "occurred_at",
            postgresql_where=text(ACTOR_INDEX_WHERE),
        ),
        {"postgresql_partition_by": "RANGE (occurred_at)"},
    )


__all__ = [
    "ACTOR_INDEX_WHERE",
    "MAX_ACTION",
    "MAX_DETAIL_BYTES",
    "MAX_ENTITY_TYPE",
    "MAX_REQUEST_ID",
    "MAX_USER_AGENT",
    "AuditEvent",
]
