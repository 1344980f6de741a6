"""Who is acting: the transaction-local actor settings (issue 17).

MINIMAL VERSION written in the identity branch: the audit branch owns this module
(the names and the helper); the integrator keeps audit's version, with the one
behaviour identity relies on: the settings hold in every transaction the session
begins after :func:`set_actor` (an ``after_begin`` hook), not only the current one,
since a request commits more than once (authentication records ``last_used_at``).

    set_actor(session, user_id=..., api_key_id=..., session_id=..., request_id=...,
              client_ip=..., user_agent=...)

Each value is set with ``set_config(name, value, true)``; ``sql/triggers/identity.sql``
reads ``automl.actor_user_id``.
"""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, SessionTransaction

SETTINGS = {
    "user_id": "automl.actor_user_id",
    "api_key_id": "automl.actor_api_key_id",
    "session_id": "automl.actor_session_id",
    "request_id": "automl.request_id",
    "client_ip": "automl.client_ip",
    "user_agent": "automl.user_agent",
}
_INFO_KEY = "automl.actor"


def _apply(conn: Connection, values: dict[str, str]) -> None:
    if values:
        names = list(values)
        conn.execute(
            text(
                "SELECT " + ", ".join(f"set_config(:n{i}, :v{i}, true)" for i in range(len(names)))
            ),
            {
                **{f"n{i}": SETTINGS[k] for i, k in enumerate(names)},
                **{f"v{i}": values[k] for i, k in enumerate(names)},
            },
        )


def set_actor(
    session: Session,
    *,
    user_id: uuid.UUID | str | None = None,
    api_key_id: uuid.UUID | str | None = None,
    session_id: uuid.UUID | str | None = None,
    request_id: str | None = None,
    client_ip: str | None = None,
    user_agent: str | None = None,
) -> None:
    """Name the actor of this session's transactions, the current one and the next."""
    given: dict[str, Any] = {
        "user_id": user_id,
        "api_key_id": api_key_id,
        "session_id": session_id,
        "request_id": request_id,
        "client_ip": client_ip,
        "user_agent": user_agent,
    }
    # Every name is set (an empty string for none), so nothing of an earlier actor stays.
    values = {k: "" if v is None else str(v).replace("\x00", "")[:500] for k, v in given.items()}
    session.info[_INFO_KEY] = values
    if session.in_transaction():
        _apply(session.connection(), values)


@event.listens_for(Session, "after_begin")
def _after_begin(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    values = session.info.get(_INFO_KEY)
    if values:
        _apply(connection, values)
