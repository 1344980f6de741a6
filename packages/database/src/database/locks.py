"""The user's row lock: the one lock order every writer of a user's data follows.

A transaction that moves a user's credits, counters or work (an upload, a run, a
cancel, a job's end, a recovery) locks the user's row first (``FOR NO KEY UPDATE``:
foreign-key checks of other rows pointing at the user are not blocked), then the
rows it changes. Several users are locked in ascending id order, the order the
counter triggers use too: no two such transactions wait for each other in a cycle.

The wait is bounded by ``lock_timeout`` (``DB_LOCK_TIMEOUT_MS`` unless given), set
for the rest of the transaction: a lock not granted in time raises
:class:`database.errors.LockTimeout` (retryable).

:func:`locked_user_id` is the same lock as a piece of a statement, for work that is
one statement (the completion of a job): no round trips of its own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from database import errors
from database.config import get_settings
from database.models import User

__all__ = [
    "lock_timeout_value",
    "lock_user",
    "lock_users",
    "lock_users_returning_timeout",
    "locked_user_id",
]


def _timeout_ms(lock_timeout_ms: int | None) -> int:
    return get_settings().lock_timeout_ms if lock_timeout_ms is None else lock_timeout_ms


def lock_users_returning_timeout(
    session: Session, user_ids: Iterable[uuid.UUID], lock_timeout_ms: int | None = None
) -> str:
    """Lock the users' rows in id order; returns the previous ``lock_timeout`` (for a
    caller that restores it, as :mod:`database.credits` does inside a savepoint).

    Raises ``UserNotFound`` for an unknown id, ``LockTimeout`` when not granted in time.
    """
    ids = sorted(set(user_ids))
    previous = session.execute(
        text(
            "SELECT current_setting('lock_timeout') AS previous,"
            " set_config('lock_timeout', :timeout, true)"
        ),
        {"timeout": f"{_timeout_ms(lock_timeout_ms)}ms"},
    ).scalar_one()
    # uuid sorts by its bytes in PostgreSQL as in Python: ``ids`` is the lock order.
    locked = set(
        session.scalars(
            select(User.id)
            .where(User.id.in_(ids))
            .order_by(User.id)
            .with_for_update(key_share=True)
        )
    )
    missing = [i for i in ids if i not in locked]
    if missing:
        raise errors.UserNotFound(f"user {missing[0]} does not exist")
    return str(previous)


def lock_users(
    session: Session, user_ids: Iterable[uuid.UUID], *, lock_timeout_ms: int | None = None
) -> list[uuid.UUID]:
    """Lock the rows of ``user_ids`` in ascending id order, in the current transaction;
    returns the sorted ids. Raises ``UserNotFound`` and ``LockTimeout``."""
    ids = sorted(set(user_ids))
    lock_users_returning_timeout(session, ids, lock_timeout_ms)
    return ids


def lock_user(
    session: Session, user_id: uuid.UUID, *, lock_timeout_ms: int | None = None
) -> User | None:
    """The user's row, locked and re-read (the ORM object refreshed); None when no
    such user exists. Deleted users are returned: the caller decides."""
    session.execute(
        text("SELECT set_config('lock_timeout', :timeout, true)"),
        {"timeout": f"{_timeout_ms(lock_timeout_ms)}ms"},
    )
    return session.scalars(
        select(User)
        .where(User.id == user_id)
        .with_for_update(key_share=True)
        .execution_options(populate_existing=True)
    ).one_or_none()


def lock_timeout_value(lock_timeout_ms: int | None = None) -> str:
    """The ``lock_timeout`` these locks set (``DB_LOCK_TIMEOUT_MS`` unless given)."""
    return f"{_timeout_ms(lock_timeout_ms)}ms"


def locked_user_id(user_id: Any, *, lock_timeout: Any) -> Any:
    """A scalar subquery that sets ``lock_timeout`` (a value such as
    :func:`lock_timeout_value` gives, or a bound parameter) for the rest of the
    transaction, then locks the user's row (``FOR NO KEY UPDATE``, as
    :func:`lock_users`) and gives its id; NULL when no such user exists. ``user_id``
    is an id or a bound parameter.

    PostgreSQL runs an uncorrelated subquery once, as an initplan, when the outer
    statement first needs its value: in ``UPDATE jobs ... WHERE id = :job AND
    user_id = (this)``, after the job's row is found and before the UPDATE locks it.
    So a one-statement change of a user's work keeps the lock order (user, then
    work) without a round trip of its own."""
    return (
        select(User.id)
        .where(
            User.id == user_id,
            func.set_config("lock_timeout", lock_timeout, True).is_not(None),
        )
        .with_for_update(key_share=True)
        .scalar_subquery()
    )
