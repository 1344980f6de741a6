"""The audit trail (``audit_events``): the actor, the API's own events, partitions,
redaction and listing. The rules themselves are in ``sql/triggers/audit.sql``.

- :func:`set_actor` names who acts, in ONE transaction-local setting,
  ``automl.actor`` (:data:`ACTOR_SETTING`): ``'<user> <api key> <session> <request id>
  <client ip> <user agent>'``, fields separated by one space, empty when unknown, the
  user agent last (it may hold spaces), trailing fields optional (raw SQL may set just
  ``'<user id>'``). The audit triggers read it (the columns of ``audit_events``
  default to its fields), so every change the transaction makes, through the ORM or
  raw SQL, is audited with that actor. The session remembers the actor and sets it
  again at the start of each of its later transactions (a route that commits twice
  stays attributed): one statement per transaction.
- :func:`select_as_actor` is the same in no statement of its own: an
  :class:`ActorLookup` (built once, at import) adds one ``set_config`` call to the
  select list of a lookup the caller makes anyway (the API's authentication: the
  key's or the session's row names the actor), so authenticating and naming the
  actor is one round trip, in the transaction the request goes on using.
- :func:`record` writes an event the triggers cannot see (a read that matters: an
  artifact download), through ``public.audit_record`` (the apps' role may not
  INSERT into ``audit_events``).
- :func:`ensure_partitions` makes the month partitions ahead (the workers call it
  periodically; the migration made the first ones); :func:`drop_partitions_before`
  is the retention of ``automl-db clean --what audit``; :func:`redact_user` is the
  purge's erasure of a purged user's IP addresses and user agents.
"""

from __future__ import annotations

import datetime as dt
import functools
import ipaddress
import re
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    ColumnExpressionArgument,
    Select,
    Text,
    and_,
    bindparam,
    cast,
    event,
    func,
    literal_column,
    or_,
    select,
    text,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session, SessionTransaction

from database import _tx
from database.models import AuditEvent, AuditOutcome
from database.models.audit_event import MAX_REQUEST_ID, MAX_USER_AGENT

__all__ = [
    "ACTOR_FIELDS",
    "ACTOR_SETTING",
    "ActorLookup",
    "actor_lookup",
    "make_actor",
    "parse_setting",
    "by_actor",
    "select_as_actor",
    "MONTHS_AHEAD",
    "Actor",
    "Partition",
    "clear_actor",
    "drop_partitions_before",
    "ensure_partitions",
    "list_partitions",
    "new_request_id",
    "record",
    "redact_user",
    "set_actor",
    "valid_request_id",
    "visible_to",
]

#: The one transaction-local setting the triggers read (its format: the module's doc).
ACTOR_SETTING = "automl.actor"
#: The fields of :data:`ACTOR_SETTING`, in order.
ACTOR_FIELDS = ("user_id", "api_key_id", "session_id", "request_id", "client_ip", "user_agent")
#: Month partitions kept ahead of the current one.
MONTHS_AHEAD = 3

_INFO_KEY = "automl.audit_actor"
#: In a session's ``info``: a weak reference to the transaction that has the actor
#: set. Weak: the transaction refers to its session, so a strong reference from the
#: session's own ``info`` would make every session a reference cycle, which Python's
#: reference counting cannot free. The session, its objects and its transaction
#: would then wait for the cyclic garbage collector, whose runs cost the API more
#: than the audit row itself (docs/performance.md, "What c17f00000001 changed").
_APPLIED_KEY = "automl.audit_actor_applied"
_REQUEST_ID = re.compile(rf"^[A-Za-z0-9._:/+=-]{{1,{MAX_REQUEST_ID}}}$")
_SET_ACTOR = text(f"SELECT set_config('{ACTOR_SETTING}', :a, true)")
#: The bind parameter of an :class:`ActorLookup`'s request fields.
_REST = "automl_actor_rest"


@dataclass(frozen=True)
class Actor:
    user_id: uuid.UUID | None = None
    api_key_id: uuid.UUID | None = None
    session_id: uuid.UUID | None = None
    request_id: str | None = None
    client_ip: str | None = None
    user_agent: str | None = None

    def setting(self) -> str:
        """The value of :data:`ACTOR_SETTING` that names this actor."""
        return " ".join(("" if v is None else str(v)) for v in self._values())

    def _values(self) -> tuple[object, ...]:
        return (
            self.user_id,
            self.api_key_id,
            self.session_id,
            self.request_id,
            self.client_ip,
            self.user_agent,
        )


def parse_setting(value: str | None) -> dict[str, str | None]:
    """The fields of an ``automl.actor`` value (None for an empty one)."""
    parts = (value or "").split(" ", len(ACTOR_FIELDS) - 1)
    parts += [""] * (len(ACTOR_FIELDS) - len(parts))
    return {name: (part or None) for name, part in zip(ACTOR_FIELDS, parts, strict=True)}


def _uuid(value: uuid.UUID | str | None, name: str) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise ValueError(f"{name} must be a UUID") from None


def _ip(value: str | None) -> str | None:
    """The address, or None when there is none or it is not one (a proxy's junk)."""
    if not value:
        return None
    try:
        return str(ipaddress.ip_address(value.strip()))
    except ValueError:
        return None


def _user_agent(value: str | None) -> str | None:
    if not value:
        return None
    cleaned = "".join(ch for ch in value if ch.isprintable())[:MAX_USER_AGENT]
    return cleaned or None


@functools.lru_cache(maxsize=1024)
def _client_fields(client_ip: str | None, user_agent: str | None) -> str:
    """The setting's last two fields, cleaned (a client's address and agent repeat
    from request to request: cleaned once)."""
    return f"{_ip(client_ip) or ''} {_user_agent(user_agent) or ''}"


def valid_request_id(value: str | None) -> bool:
    return bool(value) and _REQUEST_ID.match(value or "") is not None


def new_request_id() -> str:
    return uuid.uuid4().hex


def _apply(conn: Connection, setting: str) -> None:
    conn.execute(_SET_ACTOR, {"a": setting})


def make_actor(
    *,
    user_id: uuid.UUID | str | None = None,
    api_key_id: uuid.UUID | str | None = None,
    session_id: uuid.UUID | str | None = None,
    request_id: str | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> Actor:
    """An actor, its values checked and cleaned as :func:`set_actor` says (none of its
    fields but the user agent, the last, can hold the setting's separator)."""
    if request_id is not None and not valid_request_id(request_id):
        raise ValueError("request_id must be 1-200 characters of [A-Za-z0-9._:/+=-]")
    return Actor(
        user_id=_uuid(user_id, "user_id"),
        api_key_id=_uuid(api_key_id, "api_key_id"),
        session_id=_uuid(session_id, "session_id"),
        request_id=request_id,
        client_ip=_ip(client_ip),
        user_agent=_user_agent(user_agent),
    )


def set_actor(
    session: Session | Connection,
    *,
    user_id: uuid.UUID | str | None = None,
    api_key_id: uuid.UUID | str | None = None,
    session_id: uuid.UUID | str | None = None,
    request_id: str | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> Actor:
    """Name the actor of what ``session`` does from now on (the one setting
    ``automl.actor``: the fields not given are empty).

    On a ``Session`` the actor holds for the current transaction and every later one
    of the session; on a ``Connection`` for its current transaction only. A client
    IP that is not an address is dropped, a user agent is cut to 512 printable
    characters, a request id that is not 1-200 of ``[A-Za-z0-9._:/+=-]`` is
    refused (``ValueError``; the API makes a new one instead).
    """
    actor = make_actor(
        user_id=user_id,
        api_key_id=api_key_id,
        session_id=session_id,
        request_id=request_id,
        client_ip=client_ip,
        user_agent=user_agent,
    )
    if isinstance(session, Connection):
        _apply(session, actor.setting())
        return actor
    # The session keeps the setting's text: what its later transactions set again.
    session.info[_INFO_KEY] = actor.setting()
    # Never begins a transaction itself (a caller's "own transaction or a savepoint in
    # mine" logic, database._tx.atomic, must see the session as it was): outside one,
    # _after_begin sets the actor when the next transaction starts.
    if session.in_transaction():
        conn = session.connection()
        current = session.get_transaction()
        if _applied(session) is not current:
            _apply(conn, session.info[_INFO_KEY])
            _mark_applied(session, current)
    return actor


@dataclass(frozen=True)
class ActorLookup:
    """A lookup of at most one row (the API's authentication), and the same lookup
    that also names the actor, built ONCE (at import: a statement built per request
    costs more in SQLAlchemy's construction and cache key than the database spends
    on it). ``stmt`` takes bind parameters; :func:`select_as_actor` runs
    ``with_actor``, whose last column is ``set_config('automl.actor', ...)`` with
    the ids read from the row and the request's fields as one parameter."""

    stmt: Select[*tuple[Any, ...]]
    with_actor: Select[*tuple[Any, ...]]


def actor_lookup(
    stmt: Select[*tuple[Any, ...]],
    *,
    user_id: ColumnExpressionArgument[Any],
    api_key_id: ColumnExpressionArgument[Any] | None = None,
    session_id: ColumnExpressionArgument[Any] | None = None,
) -> ActorLookup:
    """``stmt`` and ``stmt`` plus the ``set_config`` of the actor whose ids are the
    SQL expressions over the looked-up row (the key's ``user_id`` and ``id``)."""

    def value(expr: ColumnExpressionArgument[Any] | None) -> ColumnElement[Any]:
        return literal_column("''") if expr is None else cast(expr, Text)

    sep: ColumnElement[Any] = literal_column("' '")
    setting = func.concat(
        value(user_id),
        sep,
        value(api_key_id),
        sep,
        value(session_id),
        bindparam(_REST, type_=Text),
    )
    setter = func.set_config(
        literal_column(f"'{ACTOR_SETTING}'"), setting, literal_column("true")
    ).label("audit_actor")
    return ActorLookup(stmt=stmt, with_actor=stmt.add_columns(setter))


def select_as_actor(
    session: Session,
    lookup: ActorLookup,
    params: dict[str, Any],
    *,
    request_id: str | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> tuple[Any, ...] | None:
    """Run ``lookup`` (with its bind ``params``) and name the actor in the same
    statement: the row without the setting, or None (then nothing was set).

    ``request_id``, ``client_ip`` and ``user_agent`` are checked and cleaned as
    :func:`set_actor` says. When a row comes back the setting holds for the
    session's current transaction (the one the lookup ran in, which the caller goes
    on using) and, like :func:`set_actor`'s, for its later ones. One statement, one
    round trip.
    """
    if request_id is not None and not valid_request_id(request_id):
        raise ValueError("request_id must be 1-200 characters of [A-Za-z0-9._:/+=-]")
    rest = f" {request_id or ''} {_client_fields(client_ip, user_agent)}"
    row = session.execute(lookup.with_actor, {**params, _REST: rest}).one_or_none()
    if row is None:
        return None
    *found, applied = tuple(row)
    # The text the database set, kept as is for the session's later transactions
    # (parse_setting reads it back, when someone wants its fields).
    session.info[_INFO_KEY] = applied
    _mark_applied(session, session.get_transaction())
    # A lookup only: the package's operations may take this transaction as their own
    # (database._tx.atomic), as they took a new one when authentication committed.
    _tx.offer(session)
    return tuple(found)


def _mark_applied(session: Session, transaction: SessionTransaction | None) -> None:
    """Remember that ``transaction`` has the session's actor set (weakly: see
    ``_APPLIED_KEY``)."""
    session.info[_APPLIED_KEY] = None if transaction is None else weakref.ref(transaction)


def _applied(session: Session) -> SessionTransaction | None:
    """The transaction that has the session's actor set, if it is still alive."""
    ref = session.info.get(_APPLIED_KEY)
    return None if ref is None else ref()


def clear_actor(session: Session) -> None:
    """Forget the session's actor (the current transaction keeps it until it ends)."""
    session.info.pop(_INFO_KEY, None)
    session.info.pop(_APPLIED_KEY, None)


@event.listens_for(Session, "after_begin")
def _after_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    setting = session.info.get(_INFO_KEY)
    if setting is not None and transaction.parent is None:
        _apply(connection, setting)
        _mark_applied(session, transaction)


# --- the API's own events -------------------------------------------------------------
_RECORD = text(
    "SELECT public.audit_record(:action, :entity_type, :entity_id, :outcome,"
    " CAST(:detail AS jsonb), :subject)"
)


def record(
    session: Session | Connection,
    action: str,
    entity_type: str,
    entity_id: uuid.UUID | None,
    outcome: AuditOutcome | str = AuditOutcome.SUCCESS,
    detail: dict[str, Any] | None = None,
    *,
    subject_user_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """Write one event with the transaction's actor; its id. Part of the caller's
    transaction (commit it). A malformed action or entity type, or a detail over
    4 KiB, is refused by ``audit_record`` (ML108: ``InvalidAuditEvent``, an
    ``InvalidValue``)."""
    import json

    value = session.execute(
        _RECORD,
        {
            "action": action,
            "entity_type": entity_type,
            "entity_id": entity_id,
            "outcome": AuditOutcome(outcome).value,
            "detail": json.dumps(detail or {}, default=str),
            "subject": subject_user_id,
        },
    ).scalar_one()
    assert isinstance(value, uuid.UUID)
    return value


# --- listing --------------------------------------------------------------------------
def visible_to(
    user_id: uuid.UUID,
    *,
    action: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> Select[AuditEvent]:
    """A user's own trail: the events they made (actor) and the events about what is
    theirs (subject: their account, their keys, the models shared with them)."""
    stmt = select(AuditEvent).where(
        or_(
            AuditEvent.subject_user_id == user_id,
            and_(
                AuditEvent.actor_user_id == user_id,
                AuditEvent.actor_user_id.is_distinct_from(AuditEvent.subject_user_id),
            ),
        )
    )
    return filtered(stmt, action=action, since=since, until=until)


def by_actor(user_id: uuid.UUID) -> ColumnElement[bool]:
    """``actor_user_id = user_id``, written as the two arms the indexes serve: the
    subject index holds the events about the actor's own things (actor = subject, the
    usual event), the actor index only the events whose actor is not their subject
    (``models.audit_event.ACTOR_INDEX_WHERE``). ``audit_redact_user`` says it the
    same way."""
    return or_(
        and_(AuditEvent.subject_user_id == user_id, AuditEvent.actor_user_id == user_id),
        and_(
            AuditEvent.actor_user_id == user_id,
            AuditEvent.actor_user_id.is_distinct_from(AuditEvent.subject_user_id),
        ),
    )


def filtered(
    stmt: Select[AuditEvent],
    *,
    action: str | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
) -> Select[AuditEvent]:
    """``action`` is an exact action, or a prefix ending in a dot (``api_key.``)."""
    conditions = []
    if action:
        if action.endswith("."):
            conditions.append(AuditEvent.action.startswith(action, autoescape=True))
        else:
            conditions.append(AuditEvent.action == action)
    if since is not None:
        conditions.append(AuditEvent.occurred_at >= since)
    if until is not None:
        conditions.append(AuditEvent.occurred_at < until)
    return stmt.where(and_(*conditions)) if conditions else stmt


# --- partitions -----------------------------------------------------------------------
@dataclass(frozen=True)
class Partition:
    name: str
    #: Bounds (UTC); None for the DEFAULT partition.
    start: dt.datetime | None
    end: dt.datetime | None


_PARTITION_NAME = re.compile(r"^audit_events_p(\d{4})(\d{2})$")


def ensure_partitions(
    bind: Engine | Connection, *, months_ahead: int = MONTHS_AHEAD, at: dt.datetime | None = None
) -> int:
    """Make the partitions of the month of ``at`` (default now) and ``months_ahead``
    months after it, and the DEFAULT one; the number made. Cheap when they exist."""
    if at is not None and at.tzinfo is None:
        raise ValueError("naive datetime refused: give a timezone-aware datetime")
    statement = text("SELECT public.audit_events_ensure_partitions(coalesce(:at, now()), :n)")
    params = {"at": at, "n": months_ahead}
    if isinstance(bind, Connection):
        return int(bind.execute(statement, params).scalar_one())
    with bind.begin() as conn:
        return int(conn.execute(statement, params).scalar_one())


def list_partitions(conn: Connection) -> list[Partition]:
    """The partitions of ``audit_events``, the months in order, the DEFAULT last."""
    names = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits AS i JOIN pg_class AS c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'public.audit_events'::regclass"
        )
    ).scalars()
    months: list[Partition] = []
    default: list[Partition] = []
    for name in names:
        match = _PARTITION_NAME.match(name)
        if match is None:
            default.append(Partition(name, None, None))
            continue
        start = dt.datetime(int(match[1]), int(match[2]), 1, tzinfo=dt.UTC)
        end = (start + dt.timedelta(days=32)).replace(day=1)
        months.append(Partition(name, start, end))
    return sorted(months, key=lambda p: p.name) + default


def drop_partitions_before(
    engine: Engine,
    before: dt.datetime,
    *,
    dry_run: bool = False,
    archive: Callable[[Connection, Partition], None] | None = None,
    lock_timeout_ms: int = 5000,
) -> list[tuple[str, int]]:
    """Drop every month partition that ends on or before ``before`` (whole months
    only: a month ``before`` cuts stays); (name, rows) of each. ``archive`` is called
    with the partition, in the transaction that drops it, before the DROP (a failure
    keeps the partition). DDL: the owner's (the apps' role owns nothing)."""
    if before.tzinfo is None:
        raise ValueError("naive datetime refused: give a timezone-aware datetime")
    done: list[tuple[str, int]] = []
    with engine.connect() as conn:
        with conn.begin():
            partitions = list_partitions(conn)
        for part in partitions:
            if part.end is None or part.end > before:
                continue
            with conn.begin():
                conn.execute(
                    text("SELECT set_config('lock_timeout', :v, true)"),
                    {"v": f"{lock_timeout_ms}ms"},
                )
                rows = int(
                    conn.execute(text(f'SELECT count(*) FROM public."{part.name}"')).scalar_one()
                )
                if not dry_run:
                    if archive is not None and rows:
                        archive(conn, part)
                    conn.execute(text(f'DROP TABLE public."{part.name}"'))
            done.append((part.name, rows))
    return done


# --- purge ----------------------------------------------------------------------------
def redact_user(bind: Connection | Session, user_id: uuid.UUID) -> int:
    """Clear the IP addresses and user agents of the events a purged user made (the
    rest of the trail stays); the rows changed. ``AuditRedactionRefused`` (ML107) for
    a user who is not purged."""
    value = bind.execute(text("SELECT public.audit_redact_user(:u)"), {"u": user_id}).scalar_one()
    return int(value)


def actor_settings(bind: Connection | Session) -> dict[str, str | None]:
    """The actor's fields as the database sees them now (tests, debugging)."""
    value = bind.execute(
        text(f"SELECT current_setting('{ACTOR_SETTING}', true)")
    ).scalar_one_or_none()
    return parse_setting(value)
