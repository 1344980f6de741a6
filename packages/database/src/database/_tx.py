"""The one-transaction rule of the package's operations (credits, lifecycle)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session


@contextmanager
def atomic(session: Session) -> Iterator[bool]:
    """The session's own transaction, committed on exit; or a savepoint in the caller's.

    Yields True when it runs inside the caller's transaction (a SAVEPOINT: all or
    nothing, durable when the caller commits), False when it owns the transaction.
    """
    if session.in_transaction():
        with session.begin_nested():
            yield True
    else:
        with session.begin():
            yield False
