"""How credits move: the four operations the API and the workers share.

    purchase(session, user, package, payment_ref)   credits a package bought through Stripe
    charge_job(session, job)                        debits the job's credit_cost
    refund_job(session, job, reason)                gives a charge back (all of it by default)
    adjust(session, user, amount, reason, actor)    an operator's correction

Each operation is **one transaction**. When the session has no transaction in
progress, the operation opens one and commits it before returning. When the caller
already has one (its unit of work: a request that did other work first), the
operation runs inside a SAVEPOINT: it is all or nothing, the caller's transaction
stays usable if it fails, and it becomes durable when the caller commits.

Each operation is **idempotent**: a retry with the same payment reference, the same
job, or the same idempotency key (adjustments) moves no credits and returns the
entry the first call wrote. The user's row is locked first, and the earlier entry is
looked up afterwards, so two concurrent calls for the same user serialize and the
second finds the first's entry. Should a unique index still refuse the insert (the
same payment reference arriving for another user at the same moment), the
operation's transaction or savepoint is rolled back and the winner's entry is
returned, or a conflict raised when it is not the same request.

**Locking**: the user's row lock waits at most ``lock_timeout_ms`` (default
``DB_LOCK_TIMEOUT_MS``), then raises :class:`database.errors.LockTimeout`, whose
``retryable`` is true. A transaction that moves credits of several users takes all
their locks up front with :func:`lock_users`, which locks in ascending id order,
the order the counter triggers use too, so such transactions cannot deadlock.

Refusals are the named exceptions of :mod:`database.errors`; the database enforces
the same rules for raw SQL (sql/triggers/credit_ledger.sql, credit_purchase.sql).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, DateTime, and_, func, literal, literal_column, select, text
from sqlalchemy.orm import QueryableAttribute, Session
from sqlalchemy.orm.util import identity_key

from database import errors, locks
from database._tx import atomic
from database.models import (
    CreditPackage,
    CreditTransaction,
    Job,
    TransactionType,
    UsageCharge,
    User,
)

T = TypeVar("T")

__all__ = [
    "adjust",
    "charge_job",
    "describe",
    "ledger_month",
    "lock_users",
    "purchase",
    "refund_job",
]


def _id(obj: object) -> uuid.UUID:
    """The id of a model instance, a UUID, or a UUID's string."""
    if isinstance(obj, uuid.UUID):
        return obj
    if isinstance(obj, str):
        return uuid.UUID(obj)
    ident = getattr(obj, "id", None)
    if isinstance(ident, uuid.UUID):
        return ident
    raise TypeError(f"expected a model instance or a UUID, got {type(obj).__name__}")


def _lock(session: Session, user_ids: Iterable[uuid.UUID], lock_timeout_ms: int | None) -> str:
    """Lock the users' rows in id order (:mod:`database.locks`); the previous
    ``lock_timeout``, restored by :func:`_transaction` inside a caller's transaction."""
    return locks.lock_users_returning_timeout(session, user_ids, lock_timeout_ms)


def lock_users(
    session: Session, user_ids: Iterable[uuid.UUID | User], *, lock_timeout_ms: int | None = None
) -> list[uuid.UUID]:
    """:func:`database.locks.lock_users`, accepting ``User`` objects too (kept here for
    the callers of the credit operations)."""
    return locks.lock_users(session, [_id(u) for u in user_ids], lock_timeout_ms=lock_timeout_ms)


@contextmanager
def _transaction(session: Session) -> Iterator[list[str]]:
    """One transaction of an operation (``database._tx.atomic``).

    Yields a list the operation puts the previous ``lock_timeout`` in; inside the
    caller's transaction it is restored on success (a released savepoint keeps
    its settings; a rolled-back one reverts them by itself).
    """
    previous: list[str] = []
    with atomic(session) as nested:
        yield previous
        if nested and previous:
            session.execute(text("SELECT set_config('lock_timeout', :v, true)"), {"v": previous[0]})


def _run(
    session: Session,
    operation: Callable[[list[str]], T],
    recover: Callable[[], T | None],
    races: tuple[type[errors.DatabaseError], ...],
) -> T:
    try:
        with _transaction(session) as previous:
            return operation(previous)
    except races:
        # A concurrent call won the race for the same unique key; its entry is
        # committed (the unique index waited for it). The operation's transaction
        # or savepoint is gone; look the winner up in a new one.
        with _transaction(session):
            found = recover()
        if found is None:
            raise
        return found


def _refresh_balance(session: Session, user_id: uuid.UUID) -> None:
    """Expire credit_balance of a User instance the session holds: the trigger moved it."""
    obj = session.identity_map.get(identity_key(User, user_id))
    if obj is not None:
        session.expire(obj, ["credit_balance"])


def _insert(session: Session, entry: CreditTransaction) -> CreditTransaction:
    session.add(entry)
    session.flush()  # INSERT ... RETURNING id, balance_after, created_at
    _refresh_balance(session, entry.user_id)
    return entry


def payment_key(
    payment: ColumnElement[str | None] | QueryableAttribute[str | None] | str,
) -> ColumnElement[int]:
    """The 64-bit key of a Stripe payment id, ``hashtextextended(id, 0)``: what
    ``uq_credit_transactions_stripe_payment_id`` indexes (c16f00000001, issue 16). The
    seed is a literal, as in the index's expression (a bound parameter would not
    match it)."""
    return func.hashtextextended(payment, literal_column("0"))


#: The calendar month (UTC) of a ledger date in raw SQL (``{}``: the date's expression),
#: as ``ix_credit_transactions_user_id_month`` has it: raw SQL names the month with
#: this, the ORM with :func:`ledger_month`.
LEDGER_MONTH_SQL = "date_trunc('month', {} AT TIME ZONE 'UTC')"


def ledger_month(
    at: ColumnElement[Any] | QueryableAttribute[Any] | dt.datetime,
) -> ColumnElement[dt.datetime]:
    """The calendar month (UTC) of a ledger date, ``date_trunc('month', at AT TIME ZONE
    'UTC')``: the second key of ``ix_credit_transactions_user_id_month`` (c16g00000001,
    issue 16). A query of a user's entries names it to use the index: ``=`` for one
    month, ``<=`` / ``>=`` for a range, and first in ORDER BY for newest-first pages.
    The field and the zone are literals, as in the index (bound parameters would not
    match it)."""
    value = at if not isinstance(at, dt.datetime) else literal(at, DateTime(timezone=True))
    return func.date_trunc(
        literal_column("'month'"),
        func.timezone(literal_column("'UTC'"), value),
        type_=DateTime(),
    )


def payment_is(payment_ref: str) -> ColumnElement[bool]:
    """The ledger's entries of ``payment_ref``: found through the unique index on the
    payment id's key, then the id itself compared (two ids may share a key)."""
    return and_(
        payment_key(CreditTransaction.stripe_payment_id) == payment_key(payment_ref),
        CreditTransaction.stripe_payment_id == payment_ref,
    )


def _first(session: Session, *where: ColumnElement[bool]) -> CreditTransaction | None:
    return session.scalars(select(CreditTransaction).where(*where).limit(1)).first()


def _require_text(name: str, value: str | None) -> str:
    if value is None or not str(value).strip():
        raise errors.InvalidValue(f"{name} is required")
    return str(value)


# --- purchase ------------------------------------------------------------------------
def purchase(
    session: Session,
    user: uuid.UUID | User,
    package: uuid.UUID | CreditPackage,
    payment_ref: str,
    *,
    description: str | None = None,
    lock_timeout_ms: int | None = None,
) -> CreditTransaction:
    """Credit ``package.credits`` to ``user`` for the Stripe payment ``payment_ref``.

    The payment reference makes it idempotent: a second call with it returns the
    first entry (``PaymentReferenceConflict`` if that entry credited another user
    or package). Refusals: ``UserNotFound``, ``PackageNotFound``, ``UserDeleted``
    (a soft-deleted user cannot buy), ``PackageUnavailable`` (inactive package),
    ``PackageTierRestricted`` (the user's tier may not buy it), ``LockTimeout``.
    """
    user_id, package_id = _id(user), _id(package)
    ref = _require_text("payment_ref", payment_ref)

    def same_request(entry: CreditTransaction) -> CreditTransaction:
        if entry.user_id != user_id or entry.package_id != package_id:
            raise errors.PaymentReferenceConflict(
                f"payment {ref} already credited another user or package"
            )
        return entry

    def operation(previous: list[str]) -> CreditTransaction:
        previous.append(_lock(session, [user_id], lock_timeout_ms))
        existing = _first(session, payment_is(ref))
        if existing is not None:
            return same_request(existing)
        row = session.execute(
            select(CreditPackage.credits, CreditPackage.name).where(CreditPackage.id == package_id)
        ).one_or_none()
        if row is None:
            raise errors.PackageNotFound(f"credit package {package_id} does not exist")
        # Whether the package is on sale, and to this user's tier, the database decides
        # (credit_purchase_rules), in the same statement that moves the balance.
        return _insert(
            session,
            CreditTransaction(
                user_id=user_id,
                type=TransactionType.PURCHASE,
                amount=row.credits,
                package_id=package_id,
                stripe_payment_id=ref,
                # No description unless the caller gives one: "purchase of <package>"
                # is derived for display (describe), 25 bytes less an entry (issue 16).
                description=description,
            ),
        )

    def recover() -> CreditTransaction | None:
        existing = _first(session, payment_is(ref))
        return same_request(existing) if existing is not None else None

    return _run(session, operation, recover, (errors.DuplicatePayment,))


def describe(session: Session, entries: Iterable[CreditTransaction]) -> dict[uuid.UUID, str | None]:
    """What each entry was for, for display: its own description, else the one its
    type implies. Since c16d00000001 (issue 16, the ledger's weight) a purchase stores
    none unless its caller gave one (``purchase of <package>``, from the package) and a
    charge of usage never does (``<quantity> <sku> of deployment <id>, <start> to
    <end>``, from the ``usage_charges`` row naming the entry, as metering wrote it
    before); since c16e00000001 a refund whose reason is its job's end stores none
    (the job's error, else ``job <status>``, from the job). Three queries at most,
    whatever the number of entries."""
    entries = list(entries)
    out: dict[uuid.UUID, str | None] = {e.id: e.description for e in entries}
    packages = {e.package_id for e in entries if e.description is None and e.package_id}
    usage = [
        e.id
        for e in entries
        if e.description is None and e.type == TransactionType.CONSUMPTION and e.job_id is None
    ]
    refunded = {
        e.job_id
        for e in entries
        if e.description is None and e.type == TransactionType.REFUND and e.job_id
    }
    ends: dict[uuid.UUID, str] = {}
    if refunded:
        ends = {
            job_id: _end_text(error, status)
            for job_id, error, status in session.execute(
                select(Job.id, Job.error_message, Job.status).where(Job.id.in_(refunded))
            )
        }
    names: dict[uuid.UUID, str] = {}
    if packages:
        names = {
            package_id: name
            for package_id, name in session.execute(
                select(CreditPackage.id, CreditPackage.name).where(CreditPackage.id.in_(packages))
            )
        }
    charges: dict[uuid.UUID | None, UsageCharge] = {}
    if usage:
        charges = {
            c.ledger_entry_id: c
            for c in session.execute(
                select(UsageCharge).where(UsageCharge.ledger_entry_id.in_(usage))
            ).scalars()
        }
    for e in entries:
        if out[e.id] is not None:
            continue
        if e.package_id in names:
            out[e.id] = f"purchase of {names[e.package_id]}"
        elif e.type == TransactionType.REFUND and e.job_id in ends:
            out[e.id] = ends[e.job_id]
        elif (c := charges.get(e.id)) is not None:
            out[e.id] = (
                f"{c.quantity} {c.sku} of deployment {c.deployment_id or '-'},"
                f" {c.period_start.isoformat()} to {c.period_end.isoformat()}"
            )
    return out


# --- charges and refunds ---------------------------------------------------------------
def _job_owner(session: Session, job_id: uuid.UUID, user: object | None) -> tuple[uuid.UUID, int]:
    row = session.execute(
        select(Job.user_id, Job.credit_cost).where(Job.id == job_id)
    ).one_or_none()
    if row is None:
        raise errors.JobNotFound(f"job {job_id} does not exist")
    if user is not None and row.user_id != _id(user):
        raise errors.JobNotOwned(f"job {job_id} belongs to another user")
    return row.user_id, row.credit_cost


def _end_text(error_message: str | None, status: str) -> str:
    """What a job's end says: its error, else ``job <status>`` (database.jobs refunds
    a failed or cancelled job with it)."""
    return error_message or f"job {status}"


def _job_end(session: Session, job_id: uuid.UUID) -> str | None:
    row = session.execute(
        select(Job.error_message, Job.status).where(Job.id == job_id)
    ).one_or_none()
    return None if row is None else _end_text(row.error_message, row.status)


def _charge_of(session: Session, job_id: uuid.UUID) -> CreditTransaction | None:
    return _first(
        session,
        CreditTransaction.job_id == job_id,
        CreditTransaction.type == TransactionType.CONSUMPTION,
    )


def _refund_of(session: Session, job_id: uuid.UUID) -> CreditTransaction | None:
    return _first(
        session,
        CreditTransaction.job_id == job_id,
        CreditTransaction.type == TransactionType.REFUND,
    )


def charge_job(
    session: Session,
    job: uuid.UUID | Job,
    *,
    user: uuid.UUID | User | None = None,
    description: str | None = None,
    lock_timeout_ms: int | None = None,
) -> CreditTransaction | None:
    """Debit the job's ``credit_cost`` from its owner; once per job.

    A second call for the job returns the first charge. A job whose credit_cost is
    0 is free: nothing is written and None is returned (the ledger holds no zero
    entries; a later refund of it raises ``JobNotCharged``). With ``user``, the job
    must be that user's (``JobNotOwned``). Refusals: ``JobNotFound``,
    ``InsufficientCredits`` (``.balance``, ``.amount``), ``LockTimeout``.
    """
    job_id = _id(job)

    def operation(previous: list[str]) -> CreditTransaction | None:
        owner, cost = _job_owner(session, job_id, user)
        previous.append(_lock(session, [owner], lock_timeout_ms))
        existing = _charge_of(session, job_id)
        if existing is not None or cost == 0:
            return existing
        return _insert(
            session,
            CreditTransaction(
                user_id=owner,
                type=TransactionType.CONSUMPTION,
                amount=-cost,
                job_id=job_id,
                description=description,
            ),
        )

    return _run(
        session,
        operation,
        lambda: _charge_of(session, job_id),
        (errors.JobAlreadyCharged,),
    )


def refund_job(
    session: Session,
    job: uuid.UUID | Job,
    reason: str,
    *,
    amount: int | None = None,
    user: uuid.UUID | User | None = None,
    lock_timeout_ms: int | None = None,
) -> CreditTransaction:
    """Give back the job's charge (or ``amount`` of it); once per job.

    A second call for the job returns the first refund, whatever its amount.
    Refusals: ``JobNotFound``, ``JobNotOwned``, ``JobNotCharged`` (never charged,
    or free), ``RefundExceedsCharge`` (``amount`` above the charge),
    ``InvalidCreditAmount`` (``amount`` not positive), ``LockTimeout``.
    """
    job_id = _id(job)
    why = _require_text("reason", reason)
    if amount is not None and (isinstance(amount, bool) or amount <= 0):
        raise errors.InvalidCreditAmount(f"a refund gives credits back: {amount} is not positive")

    def operation(previous: list[str]) -> CreditTransaction:
        owner, _ = _job_owner(session, job_id, user)
        previous.append(_lock(session, [owner], lock_timeout_ms))
        existing = _refund_of(session, job_id)
        if existing is not None:
            return existing
        charge = _charge_of(session, job_id)
        if charge is None:
            raise errors.JobNotCharged(f"job {job_id} was never charged, so it cannot be refunded")
        charged = -charge.amount
        if amount is not None and amount > charged:
            raise errors.RefundExceedsCharge(
                f"refund of {amount} credits exceeds the {charged} charged for job {job_id}"
            )
        return _insert(
            session,
            CreditTransaction(
                user_id=owner,
                type=TransactionType.REFUND,
                amount=charged if amount is None else amount,
                job_id=job_id,
                # The job's own end (its error, else "job <status>": what
                # database.jobs refunds with) is not stored twice: describe() derives
                # it from the job (issue 16, the ledger's weight, c16e00000001).
                description=None if why == _job_end(session, job_id) else why,
            ),
        )

    return _run(
        session,
        operation,
        lambda: _refund_of(session, job_id),
        (errors.JobAlreadyRefunded,),
    )


# --- adjustments -----------------------------------------------------------------------
def adjust(
    session: Session,
    user: uuid.UUID | User,
    amount: int,
    reason: str,
    actor: str | uuid.UUID,
    *,
    idempotency_key: str | None = None,
    lock_timeout_ms: int | None = None,
    as_admin: bool = False,
) -> CreditTransaction:
    """Add (or, negative, remove) ``amount`` credits, with who did it and why.

    ``as_admin``: an admin's adjustment through the API (``database.identity.admin_adjust``),
    by ``public.admin_credit_adjust``, which the apps' role may call: the
    transaction's actor (the user field of ``automl.actor``) must be an active admin other than
    the user, and is the entry's actor (``actor`` is then not used).

    An operator's act: it calls ``public.credit_adjust``, whose EXECUTE only the
    schema owner and operator roles hold (``automl-db grant --operator``); the
    applications' role gets ``PermissionDenied``.

    Pass ``idempotency_key`` (the request's id) to make a retry safe: a second call
    with it returns the first entry (``DuplicateAdjustment`` if that entry was for
    another user or amount). Without a key, every call is a new adjustment.
    Refusals: ``InvalidCreditAmount`` (zero), ``InvalidValue`` (no reason or actor),
    ``UserNotFound``, ``InsufficientCredits``, ``LockTimeout``.
    """
    user_id = _id(user)
    if isinstance(amount, bool) or not isinstance(amount, int) or amount == 0:
        raise errors.InvalidCreditAmount(f"an adjustment moves credits: {amount!r} is not")
    why = _require_text("reason", reason)
    who = _require_text("actor", None if actor is None else str(actor))
    key = None if idempotency_key is None else _require_text("idempotency_key", idempotency_key)

    def same_request(entry: CreditTransaction) -> CreditTransaction:
        if entry.user_id != user_id or entry.amount != amount:
            raise errors.DuplicateAdjustment(
                f"idempotency key {key} was used for another adjustment"
            )
        return entry

    def operation(previous: list[str]) -> CreditTransaction:
        previous.append(_lock(session, [user_id], lock_timeout_ms))
        if key is not None:
            existing = _first(session, CreditTransaction.idempotency_key == key)
            if existing is not None:
                return same_request(existing)
        # Through the operators' function (sql/triggers/credit_adjustment.sql): it
        # runs as the ledger's owner, so it works for an operator role, which may not
        # insert an adjustment itself (ML021), and is refused to the apps' role.
        call = (
            "SELECT * FROM public.admin_credit_adjust(:user_id, :amount, :reason, :key)"
            if as_admin
            else "SELECT * FROM public.credit_adjust(:user_id, :amount, :reason, :actor, :key)"
        )
        params = dict(user_id=user_id, amount=amount, reason=why, key=key)
        if not as_admin:
            params["actor"] = who
        entry = session.scalars(
            select(CreditTransaction)
            .from_statement(text(call))
            .params(**params)
            .execution_options(populate_existing=True)
        ).one()
        _refresh_balance(session, user_id)
        return entry

    def recover() -> CreditTransaction | None:
        if key is None:
            return None
        existing = _first(session, CreditTransaction.idempotency_key == key)
        return same_request(existing) if existing is not None else None

    return _run(session, operation, recover, (errors.DuplicateAdjustment,))
