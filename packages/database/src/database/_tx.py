"""The one-transaction rule of the package's operations (credits, lifecycle)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.orm import Session

#: In a connection's ``info``: the session transaction that has only run a lookup
#: (:func:`offer`); any later statement on the connection takes it away.
_OFFERED = "automl.offered_transaction"


def offer(session: Session) -> None:
    """Say that the session's current transaction has only looked something up (the
    API's authentication, which also names the audit actor in it): the next
    :func:`atomic` may take it as its own (and commit it) instead of nesting a
    savepoint, as it would have if the lookup had committed. Any statement run on the
    connection after this (a route's own write) withdraws the offer."""
    if session.in_transaction():
        session.connection().info[_OFFERED] = session.get_transaction()


@event.listens_for(Engine, "before_cursor_execute")
def _withdraw(conn: Connection, *_: Any) -> None:
    if _OFFERED in conn.info:
        del conn.info[_OFFERED]


def _offered(session: Session) -> bool:
    return session.connection().info.get(_OFFERED) is session.get_transaction()


@contextmanager
def atomic(session: Session) -> Iterator[bool]:
    """The session's own transaction, committed on exit; or a savepoint in the caller's.

    Yields True when it runs inside the caller's transaction (a SAVEPOINT: all or
    nothing, durable when the caller commits), False when it owns the transaction:
    a new one, or one that has only run the lookup :func:`offer` names.
    """
    if session.in_transaction():
        if _offered(session):
            try:
                yield False
            except BaseException:
                session.rollback()
                raise
            session.commit()
            return
        with session.begin_nested():
            yield True
    else:
        with session.begin():
            yield False
